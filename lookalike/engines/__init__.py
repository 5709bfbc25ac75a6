"""Build engines: where the photo stage of a build runs (read, decode, describe, embed).

An engine is one method with one signature::

    engine.encode(cat, positions, enc, *, batch_size, workers, bar) -> Encoded

``positions`` are catalogue rows (0-based); the result holds the rows that succeeded with
their pooled model output, colour descriptor, dHash and SHA-1, and every other requested
row as a :class:`~lookalike.catalog.RowProblem` with its reason. ``bar`` (a tqdm bar or
``None``) advances by one per row. Engines:

``local``  (default) a thread pool decodes, this process embeds; the exact reference.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..catalog import Catalog
from ..encoders import Encoder
from ..errors import InvalidQueryError
from .local import Encoded, LocalEngine, encode_rows

__all__ = ["Engine", "ENGINES", "DEFAULT_ENGINE", "get_engine", "LocalEngine", "Encoded", "encode_rows"]

ENGINES = ("local",)
DEFAULT_ENGINE = "local"


class Engine(Protocol):
    """Runs the photo stage of a build for some catalogue rows."""

    name: str

    def encode(
        self,
        cat: Catalog,
        positions: list[int],
        enc: Encoder,
        *,
        batch_size: int,
        workers: int,
        bar: Any = None,
    ) -> Encoded: ...


def get_engine(name: str = DEFAULT_ENGINE) -> Engine:
    """The engine called ``name``."""
    if name not in ENGINES:
        raise InvalidQueryError(f"unknown build engine {name!r}; choose one of {', '.join(ENGINES)}")
    return LocalEngine()
