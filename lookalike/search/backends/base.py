"""The vector-index contract: ``open(snapshot, metric=)`` and ``search(queries, k, *, filter=) -> (scores, rows)``.

Every back end scores by inner product between a query and the stored rows (for
``euclidean`` it reports minus the distance), so higher always means more alike. Missing
results are ``row == -1`` and ``-inf`` scores.

A back end opens over one generation of an index (``cls.open(snapshot, metric=)``), where
rows are the generation's live rows in segment order: removed rows never show. A search's
constraints travel as one :class:`Filter`: a back end that searches in this process asks it
for a row mask (:meth:`Filter.mask`); one that searches elsewhere translates its ``where`` and
``exclude_ids`` (Milvus: an expression, ``lookalike.search.backends.milvus.expression``), the way
qdrant-client's local mode evaluates the very filter its server receives.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from lookalike.search.conditions import Condition

__all__ = ["VectorIndex", "Backend", "Filter", "mask_of", "topk_sorted"]


class Filter:
    """Which rows one search may return: rows whose ``where`` columns hold one of the values
    (columns combine with AND), that meet every other ``conditions`` (``!=``, numeric
    comparisons and ranges, :class:`~lookalike.search.conditions.Condition`) and that are none
    of the ``exclude_ids`` products; the same
    constraints as a boolean row mask over the generation's rows, ``(n,)`` for every query or
    ``(b, n)`` one per query, computed when a back end first asks (a remote back end never does).

    ``expressible`` is False when ``where``/``exclude_ids`` can't say all the mask says (one
    exclusion per query, as ``export`` asks): a remote back end then searches exactly, here.
    Build one with :meth:`RowFilters.filter <lookalike.search.filters.RowFilters.filter>`, or
    :meth:`of_mask` for a mask alone.
    """

    __slots__ = ("where", "exclude_ids", "conditions", "expressible", "_mask", "_make")

    def __init__(self, where: Mapping[str, Sequence[str]] | None = None, exclude_ids: Sequence[str] = (), *,
                 mask: np.ndarray | Callable[[], np.ndarray | None] | None = None, expressible: bool = True,
                 conditions: Sequence[Condition] = ()) -> None:
        self.where: Mapping[str, Sequence[str]] = dict(where or {})
        self.exclude_ids: Sequence[str] = tuple(exclude_ids)
        self.conditions: tuple[Condition, ...] = tuple(conditions)
        self.expressible = expressible
        self._make = mask if callable(mask) else None
        self._mask = None if callable(mask) else mask

    @classmethod
    def of_mask(cls, mask: np.ndarray | None) -> "Filter | None":
        """A filter that only a mask says (``None`` for no mask: every row)."""
        return None if mask is None else cls(mask=mask, expressible=False)

    def mask(self) -> np.ndarray | None:
        """The rows allowed, ``(n,)`` or ``(b, n)``; ``None``: every row."""
        if self._make is not None:
            self._mask, self._make = self._make(), None
        return self._mask

    def take(self, queries: Sequence[int]) -> "Filter":
        """The filter of a subset of the queries (a per-query mask keeps their lines)."""
        mask = self.mask()
        if mask is None or mask.ndim == 1:
            return self
        return Filter(self.where, self.exclude_ids, mask=mask[list(queries)], expressible=self.expressible,
                      conditions=self.conditions)

    def __repr__(self) -> str:
        conditions = f", conditions={[str(c) for c in self.conditions]!r}" if self.conditions else ""
        return f"Filter(where={dict(self.where)!r}, exclude_ids={list(self.exclude_ids)!r}{conditions})"


def mask_of(filter: Filter | None) -> np.ndarray | None:
    """The row mask of an optional filter."""
    return None if filter is None else filter.mask()


@runtime_checkable
class VectorIndex(Protocol):
    """An index over one generation's rows: what a :class:`Backend` opens."""

    metric: str

    @property
    def name(self) -> str:
        """The back end's name (``exact``, ``hnsw``, ``milvus``…)."""
        ...

    def search(
        self, queries: np.ndarray, k: int, *, filter: Filter | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def __len__(self) -> int: ...

    def serialize(self) -> dict[str, bytes]:
        """Files the back end needs beyond ``vectors.npy``, stored in the segment (may be none)."""
        ...


class Backend(Protocol):
    """A back end, as the name -> class table (``lookalike.search.backends.BACKENDS``) holds it: its name,
    and how it opens over one generation (:class:`lookalike.folder.store.Snapshot`)."""

    name: ClassVar[str]

    @classmethod
    def open(cls, snapshot: Any, *, metric: str) -> VectorIndex: ...


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
