"""Vector-index back ends behind one small interface; ``exact`` is the oracle."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidQueryError
from .base import VectorIndex, topk_sorted
from .exact import ExactIndex

__all__ = ["VectorIndex", "ExactIndex", "BACKENDS", "DEFAULT_BACKEND", "make_index", "open_index", "topk_sorted"]

BACKENDS = ("exact", "hnsw")
DEFAULT_BACKEND = "exact"


def _cls(name: str) -> Any:
    if name == "exact":
        return ExactIndex
    if name == "hnsw":
        from .hnsw import HNSWIndex

        return HNSWIndex
    raise InvalidQueryError(f"unknown index back end {name!r}; choose one of {', '.join(BACKENDS)}")


def make_index(name: str, vectors: np.ndarray, *, metric: str, **options: Any) -> VectorIndex:
    """Build a back end over ``vectors`` (rows already normalised for cosine)."""
    return _cls(name)(vectors, metric=metric, **options)  # type: ignore[no-any-return]


def open_index(name: str, snapshot: Any, *, metric: str) -> VectorIndex:
    """The back end over one generation (:class:`lookalike.store.Snapshot`): its live rows, in
    segment order."""
    return _cls(name).open(snapshot, metric=metric)  # type: ignore[no-any-return]
