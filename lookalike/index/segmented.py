"""Search over the segments of one generation as if they were one index (Lucene's way).

A segment written with a graph (the base of an ``hnsw`` index) keeps it, and rows removed
since are masked out of its walk (tombstones); segments without one (rows added by live
changes) are searched exactly. Rows are the generation's live rows in segment order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from .base import VectorIndex, topk_sorted
from .exact import ExactIndex

__all__ = ["SegmentedIndex", "open_segments"]


@dataclass
class _Part:
    index: Any  # searches the segment's rows (all of them when ``physical`` is set, else its live rows)
    start: int  # first dense row of the segment
    count: int  # live rows
    physical: np.ndarray | None = None  # live rows of the segment, when the index spans dead rows too
    dense_of: np.ndarray | None = None  # physical row -> dense row within the segment


class SegmentedIndex:
    name: ClassVar[str] = "segmented"

    def __init__(self, parts: list[_Part], n: int, *, metric: str, name: str) -> None:
        self.parts = parts
        self.n = n
        self.metric = metric
        self.name = name  # type: ignore[misc]

    def __len__(self) -> int:
        return self.n

    def search(self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        b = len(queries)
        k = max(0, min(k, self.n))
        all_s, all_r = [np.zeros((b, 0), np.float32)], [np.zeros((b, 0), np.int64)]
        for p in self.parts:
            if p.count == 0 or k == 0:
                continue
            sub = None if allowed is None else allowed[..., p.start : p.start + p.count]
            if p.physical is not None:
                mask = np.zeros((*(sub.shape[:-1] if sub is not None else ()), len(p.index)), dtype=bool)
                mask[..., p.physical] = True if sub is None else sub
                s, r = p.index.search(queries, k, allowed=mask)
                r = np.where(r >= 0, p.dense_of[np.maximum(r, 0)] + p.start, -1)  # type: ignore[index]
            else:
                s, r = p.index.search(queries, k, allowed=sub)
                r = np.where(r >= 0, r + p.start, -1)
            all_s.append(s.astype(np.float32, copy=False))
            all_r.append(r.astype(np.int64, copy=False))
        return topk_sorted(np.concatenate(all_s, 1), np.concatenate(all_r, 1), k)

    def serialize(self) -> dict[str, bytes]:
        return {}


def _physical(seg: Any, metric: str) -> np.ndarray:
    """All rows of a segment as a back end searches them (dead ones included)."""
    return np.hstack([seg.vectors, seg.colour]) if metric == "cosine" else np.asarray(seg.vectors)


def open_segments(
    snapshot: Any, searchable: np.ndarray, *, metric: str, graph: Callable[[Any, Callable[[], np.ndarray]], Any], name: str
) -> VectorIndex:
    """One generation's index: ``graph(segment, rows)`` opens a segment's own index over all its
    rows (``rows()`` gives them), or returns None: exact search over its live rows."""
    parts: list[_Part] = []
    start = 0
    phys_start = 0
    for seg in snapshot.segments:
        live = snapshot.live[phys_start : phys_start + len(seg)]
        phys_start += len(seg)
        count = int(live.sum())
        index = graph(seg, lambda seg=seg: _physical(seg, metric)) if count else None
        if index is None:
            parts.append(_Part(ExactIndex(searchable[start : start + count], metric=metric), start, count))
        elif live.all():
            parts.append(_Part(index, start, count))
        else:
            parts.append(_Part(index, start, count, np.flatnonzero(live), np.cumsum(live) - 1))
        start += count
    if len(parts) == 1 and parts[0].physical is None:
        return parts[0].index  # type: ignore[no-any-return]
    return SegmentedIndex(parts, start, metric=metric, name=name)
