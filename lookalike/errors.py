"""The one exception tree of lookalike.

::

    LookalikeError
     ├── CatalogError            the catalogue table can't be read or lacks a column
     ├── ImageError              a query photo can't be read: corrupt, truncated, empty (catalogue
     │    │                      photos are per-row data)
     │    ├── NotAnImageError    not one of the photo formats read (JPEG, PNG, WebP, GIF, BMP, TIFF)
     │    ├── ImageTooLargeError more pixels than the limit: refused from its header, never decoded
     │    └── ImageNotFoundError no file at the photo's path
     ├── ModelError              unknown model, missing or mismatched weights
     ├── IndexFormatError        not an index, corrupt, or built with another format/model
     ├── StorageError            the index folder can't be written now (disk full, read-only, I/O error)
     │    └── IndexLockedError   another process holds the writer lock past the wait
     ├── UnknownProductError     an id that is not in the index (also a KeyError)
     ├── InvalidQueryError       bad k, unknown column, bad filter (also a ValueError)
     │    └── NoTextTowerError   a text query on an index whose model reads no words (also a ModelError)
     └── MissingDependencyError  an optional extra is not installed (also an ImportError)

Per-row problems while building (a missing photo, a duplicate id) are *data*, not
exceptions: they land in the build report with a reason each.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "LookalikeError",
    "CatalogError",
    "ImageError",
    "NotAnImageError",
    "ImageTooLargeError",
    "ImageNotFoundError",
    "ModelError",
    "IndexFormatError",
    "StorageError",
    "IndexLockedError",
    "UnknownProductError",
    "InvalidQueryError",
    "NoTextTowerError",
    "MissingDependencyError",
]


class LookalikeError(Exception):
    """Base class of every error lookalike raises on purpose."""


class CatalogError(LookalikeError):
    """The catalogue file can't be read, or a required column is missing."""


class ImageError(LookalikeError):
    """A query image can't be opened or decoded (corrupt, truncated, empty, an unusable mode)."""


class NotAnImageError(ImageError):
    """The bytes are not one of the photo formats lookalike decodes (HTTP 415)."""


class ImageTooLargeError(ImageError):
    """The photo has more pixels than the limit (ours or Pillow's), seen from its header (HTTP 413)."""


class ImageNotFoundError(ImageError):
    """There is no file at the photo's path."""


class ModelError(LookalikeError):
    """Unknown model name, bad pooling, or weights that can't be found or loaded."""


class IndexFormatError(LookalikeError):
    """The folder is not a lookalike index, is damaged, or is of another format version."""


class StorageError(LookalikeError):
    """A write could not be made for a reason of the machine, not of the request: the disk is
    full, the folder is read-only, an I/O error. Nothing was committed; the same write can
    succeed later. ``public`` says it without a local path (what the HTTP service answers)."""

    def __init__(self, message: str, public: str = "the index can't be written now") -> None:
        super().__init__(message, public)  # both in args: the error crosses processes by pickle

    def __str__(self) -> str:
        return str(self.args[0])

    @property
    def public(self) -> str:
        return str(self.args[1])

    @classmethod
    def from_os_error(cls, exc: OSError, doing: str) -> "StorageError":
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        return cls(f"can't {doing}: {reason}{where}", f"the index can't be written now: {reason}")


class IndexLockedError(StorageError):
    """Another process held the index's writer lock for longer than the wait allows."""


class UnknownProductError(LookalikeError, KeyError):
    """A product id that the index does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class InvalidQueryError(LookalikeError, ValueError):
    """A query argument is out of range or names an unknown column."""


class NoTextTowerError(InvalidQueryError, ModelError):
    """A text query on an index whose model reads no words (no text tower, or no tokenizer): a
    query this index can't answer (HTTP 422), not a model that failed to load."""


class MissingDependencyError(LookalikeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, extra: str) -> Any:
    """Import an optional module or fail with the exact install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is needed for this feature: pip install 'lookalike[{extra}]'"
        ) from exc
