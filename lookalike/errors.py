"""The one exception tree of lookalike.

::

    LookalikeError
     ├── CatalogError            the catalogue table can't be read or lacks a column
     ├── ImageError              a query photo can't be read (catalogue photos are per-row data)
     ├── ModelError              unknown model, missing or mismatched weights
     ├── IndexFormatError        not an index, corrupt, or built with another format/model
     ├── UnknownProductError     an id that is not in the index (also a KeyError)
     ├── InvalidQueryError       bad k, unknown column, bad filter (also a ValueError)
     └── MissingDependencyError  an optional extra is not installed (also an ImportError)

Per-row problems while building (a missing photo, a duplicate id) are *data*, not
exceptions: they land in the build report with a reason each.
"""

from __future__ import annotations

__all__ = [
    "LookalikeError",
    "CatalogError",
    "ImageError",
    "ModelError",
    "IndexFormatError",
    "UnknownProductError",
    "InvalidQueryError",
    "MissingDependencyError",
]


class LookalikeError(Exception):
    """Base class of every error lookalike raises on purpose."""


class CatalogError(LookalikeError):
    """The catalogue file can't be read, or a required column is missing."""


class ImageError(LookalikeError):
    """A query image can't be opened or decoded."""


class ModelError(LookalikeError):
    """Unknown model name, bad pooling, or weights that can't be found or loaded."""


class IndexFormatError(LookalikeError):
    """The folder is not a lookalike index, is damaged, or is of another format version."""


class UnknownProductError(LookalikeError, KeyError):
    """A product id that the index does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class InvalidQueryError(LookalikeError, ValueError):
    """A query argument is out of range or names an unknown column."""


class MissingDependencyError(LookalikeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, extra: str):  # type: ignore[no-untyped-def]
    """Import an optional module or fail with the exact install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is needed for this feature: pip install 'lookalike[{extra}]'"
        ) from exc
