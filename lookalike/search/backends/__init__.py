"""Vector-index back ends behind one small interface (:mod:`lookalike.search.backends.base`); ``exact``
is the oracle every other one is checked against (tests/test_backends.py).

Back ends are found by name in one table and imported only when chosen: ``hnsw`` needs the
``faiss`` extra, ``milvus`` the ``milvus`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from lookalike.errors import InvalidQueryError
from lookalike.search.backends.base import Backend, Filter, VectorIndex, topk_sorted
from lookalike.search.backends.exact import ExactIndex

__all__ = ["VectorIndex", "Backend", "Filter", "ExactIndex", "BACKENDS", "DEFAULT_BACKEND", "REMOTE_BACKENDS",
           "backend_class", "make_index", "open_index", "topk_sorted"]

#: back end name -> (module, class), imported when chosen
_TABLE: dict[str, tuple[str, str]] = {
    "exact": (".exact", "ExactIndex"),
    "hnsw": (".hnsw", "HNSWIndex"),
    "milvus": (".milvus", "MilvusIndex"),
}
BACKENDS = tuple(_TABLE)
#: back ends whose vectors live outside the index folder's process (searched remotely)
REMOTE_BACKENDS = ("milvus",)
DEFAULT_BACKEND = "exact"


def backend_class(name: str) -> Any:
    """The class of a back end by name (its optional dependency imported now)."""
    try:
        module, cls = _TABLE[name]
    except KeyError:
        raise InvalidQueryError(f"unknown index back end {name!r}; choose one of {', '.join(BACKENDS)}") from None
    return getattr(importlib.import_module(module, __name__), cls)


def make_index(name: str, vectors: np.ndarray, *, metric: str, **options: Any) -> VectorIndex:
    """Build a back end over ``vectors`` (rows already normalised for cosine)."""
    return backend_class(name)(vectors, metric=metric, **options)


def open_index(backend: str | Any, snapshot: Any, *, metric: str) -> VectorIndex:
    """The back end (a name, or a class with ``open``) over one generation
    (:class:`lookalike.folder.store.Snapshot`): its live rows, in segment order."""
    cls = backend_class(backend) if isinstance(backend, str) else backend
    return cls.open(snapshot, metric=metric)
