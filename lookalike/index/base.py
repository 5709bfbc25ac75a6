"""The vector-index contract: ``search(queries, k, allowed=) -> (scores, rows)``.

Every back end scores by inner product between a query and the stored rows (for
``euclidean`` it reports minus the distance), so higher always means more alike. ``allowed``
is a boolean mask over rows, one for all queries ``(n,)`` or one per query ``(b, n)``;
rows outside it are never returned. Missing results are ``row == -1`` and ``-inf`` scores.

A back end opens over one generation of an index (``cls.open(snapshot, metric=)``),
where rows are the generation's live rows in segment order: removed rows never show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["VectorIndex", "Filter", "topk_sorted"]


@dataclass(frozen=True)
class Filter:
    """A search's constraints as data, for back ends that can't take a row mask (Milvus):
    rows whose ``where`` columns hold one of the values (columns combine with AND), and none of
    the ``exclude_ids`` products. Local back ends get the same constraints as a mask."""

    where: Mapping[str, Sequence[str]] = field(default_factory=dict)
    exclude_ids: Sequence[str] = ()

    def expression(self, fields: Mapping[str, str]) -> str:
        from .milvus import exclusion_expression, filter_expression

        parts = [p for p in (filter_expression(self.where, fields=fields),
                             exclusion_expression(self.exclude_ids)) if p]
        return " and ".join(parts)


@runtime_checkable
class VectorIndex(Protocol):
    name: ClassVar[str]
    metric: str

    def search(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...

    def serialize(self) -> dict[str, bytes]:
        """Files the back end needs beyond ``vectors.npy``, stored in the segment (may be none)."""
        ...


def topk_sorted(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per line, by score descending then row ascending (deterministic ties)."""
    b, m = scores.shape
    if m > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, 1)
        rows = np.take_along_axis(rows, part, 1)
    order = np.lexsort((rows, -scores), axis=1) if scores.size else np.zeros_like(rows)
    scores = np.take_along_axis(scores, order, 1)
    rows = np.take_along_axis(rows, order, 1)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    rows = np.where(np.isfinite(scores), rows, -1)
    return scores, rows
