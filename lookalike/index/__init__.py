"""Vector-index back ends behind one small interface; ``exact`` is the oracle."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidQueryError
from .base import Filter, VectorIndex, topk_sorted
from .exact import ExactIndex

__all__ = ["VectorIndex", "Filter", "ExactIndex", "BACKENDS", "DEFAULT_BACKEND", "make_index", "open_index", "topk_sorted"]

BACKENDS = ("exact", "hnsw", "milvus")
#: back ends whose vectors live outside the index folder's process (searched remotely)
REMOTE_BACKENDS = ("milvus",)
DEFAULT_BACKEND = "exact"


def _cls(name: str) -> Any:
    if name == "exact":
        return ExactIndex
    if name == "hnsw":
        from .hnsw import HNSWIndex

        return HNSWIndex
    if name == "milvus":
        from .milvus import MilvusIndex

        return MilvusIndex
    raise InvalidQueryError(f"unknown index back end {name!r}; choose one of {', '.join(BACKENDS)}")


def make_index(name: str, vectors: np.ndarray, *, metric: str, **options: Any) -> VectorIndex:
    """Build a back end over ``vectors`` (rows already normalised for cosine)."""
    return _cls(name)(vectors, metric=metric, **options)  # type: ignore[no-any-return]


def open_index(name: str, snapshot: Any, *, metric: str) -> VectorIndex:
    """The back end over one generation (:class:`lookalike.store.Snapshot`): its live rows, in
    segment order."""
    return _cls(name).open(snapshot, metric=metric)  # type: ignore[no-any-return]
