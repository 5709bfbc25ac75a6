"""Exact search by blocked matrix products: the oracle every fast back end is checked against."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from lookalike.search.backends.base import Filter, mask_of, topk_sorted

__all__ = ["ExactIndex", "euclidean_scores"]


def euclidean_scores(dots: np.ndarray, qsq: np.ndarray, sq: np.ndarray) -> np.ndarray:
    """Scores for metric euclidean (higher is nearer: minus the distance) from the dot products
    of queries and rows, the queries' squared norms ``(b, 1)`` and the rows' ``(n,)``."""
    return -np.sqrt(np.maximum(qsq + sq[None, :] - 2.0 * dots, 0.0))


class ExactIndex:
    """Brute force over all rows, ``block_rows`` at a time (memory stays bounded)."""

    name: ClassVar[str] = "exact"

    def __init__(self, vectors: np.ndarray, *, metric: str = "cosine", block_rows: int = 65536) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.metric = metric
        self.block_rows = block_rows
        self._sq = (self.vectors**2).sum(axis=1) if metric == "euclidean" else None

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        allowed = mask_of(filter)
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        b, n = len(queries), len(self.vectors)
        k = max(0, min(k, n))
        best_s = np.full((b, 0), -np.inf, dtype=np.float32)
        best_r = np.full((b, 0), -1, dtype=np.int64)
        qsq = (queries**2).sum(axis=1, keepdims=True) if self._sq is not None else None
        for start in range(0, n, self.block_rows):
            stop = min(n, start + self.block_rows)
            s = queries @ self.vectors[start:stop].T
            if self._sq is not None and qsq is not None:
                s = euclidean_scores(s, qsq, self._sq[start:stop])
            if allowed is not None:
                mask = allowed[..., start:stop]
                s = np.where(mask if mask.ndim == 2 else mask[None, :], s, -np.inf)
            rows = np.broadcast_to(np.arange(start, stop, dtype=np.int64), s.shape)
            best_s, best_r = topk_sorted(
                np.concatenate([best_s, s.astype(np.float32, copy=False)], 1),
                np.concatenate([best_r, rows], 1),
                k,
            )
        if k == 0:
            return np.zeros((b, 0), np.float32), np.zeros((b, 0), np.int64)
        return best_s, best_r

    def serialize(self) -> dict[str, bytes]:  # everything is in vectors.npy
        return {}

    @classmethod
    def open(cls, snapshot: Any, *, metric: str) -> Any:
        """Over a generation: one exact index per segment, removed rows masked out."""
        from lookalike.search.backends.segmented import cached, open_segments, physical_rows

        return open_segments(snapshot, metric=metric, name=cls.name, part=lambda seg: cached(
            seg, ("exact", metric), lambda: cls(physical_rows(seg, metric), metric=metric)))
