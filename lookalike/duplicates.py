"""Duplicate listings: byte-identical photos, and near-identical ones (re-encoded, resized).

Near-identical means a difference hash within ``NEAR_HAMMING`` bits, embeddings with cosine
at least ``NEAR_COSINE`` *and*, when colour descriptors are given, colour cosine at least
``NEAR_COLOUR``: the same garment photographed in red and in magenta shares its outline, its
hash and most of its embedding, but is another product a shopper should see. On the 2,906-
product set re-encodings of one photo have colour cosine >= 0.998; colour variants 0.79 (red /
magenta), 0.946 (copper / purple) and 0.982 (brown / maroon) (benchmarks/duplicate_study.py).
Candidates come from hash bands (two hashes within 3 bits
share one of four 16-bit bands), so the work grows with the catalogue, not its square.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

__all__ = ["find_duplicate_groups", "candidate_pairs", "NEAR_HAMMING", "NEAR_COSINE", "NEAR_COLOUR"]

NEAR_HAMMING = 3
NEAR_COSINE = 0.98
NEAR_COLOUR = 0.99
_MAX_BUCKET = 256


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _groups(uf: _UnionFind, n: int) -> np.ndarray:
    """Group number per row (numbered by first row), -1 for rows alone in their group."""
    roots = np.array([uf.find(i) for i in range(n)], dtype=np.int64)
    counts = np.bincount(roots, minlength=n) if n else np.zeros(0, np.int64)
    out = np.full(n, -1, dtype=np.int64)
    numbers: dict[int, int] = {}
    for i in range(n):
        r = int(roots[i])
        if counts[r] > 1:
            out[i] = numbers.setdefault(r, len(numbers))
    return out


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.unpackbits(x.astype(np.uint64).view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def candidate_pairs(
    dhashes: np.ndarray,
    unit_vectors: np.ndarray,
    *,
    near_hamming: int = NEAR_HAMMING,
    near_cosine: float = NEAR_COSINE,
) -> set[tuple[int, int]]:
    """Row pairs ``(i, j)``, ``i < j``, that pass the hash and embedding tests (not colour)."""
    h = np.asarray(dhashes, dtype=np.uint64)
    pairs: set[tuple[int, int]] = set()
    for band in range(4):
        keys = (h >> np.uint64(16 * band)) & np.uint64(0xFFFF)
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys.tolist()):
            buckets[key].append(i)
        for members in buckets.values():
            if len(members) < 2 or len(members) > _MAX_BUCKET:
                continue
            m = np.asarray(members)
            ham = _popcount((h[m][:, None] ^ h[m][None, :]).ravel()).reshape(len(m), len(m))
            cos = unit_vectors[m] @ unit_vectors[m].T
            a, b = np.nonzero(np.triu((ham <= near_hamming) & (cos >= near_cosine), 1))
            pairs.update((int(m[x]), int(m[y])) for x, y in zip(a.tolist(), b.tolist()))
    return pairs


def find_duplicate_groups(
    sha1s: list[str],
    dhashes: np.ndarray,
    unit_vectors: np.ndarray,
    colour: np.ndarray | None = None,
    *,
    near_hamming: int = NEAR_HAMMING,
    near_cosine: float = NEAR_COSINE,
    near_colour: float = NEAR_COLOUR,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (identical-photo group, near-identical group) per row; -1 where a row is alone.

    ``colour`` holds L2-normalised colour descriptors; without it colour is not compared.
    Near-identical groups contain the identical ones.
    """
    n = len(sha1s)
    exact = _UnionFind(n)
    first: dict[str, int] = {}
    for i, s in enumerate(sha1s):
        if s:
            if s in first:
                exact.union(first[s], i)
            else:
                first[s] = i
    near = _UnionFind(n)
    for i in range(n):
        near.union(i, exact.find(i))
    for i, j in candidate_pairs(dhashes, unit_vectors, near_hamming=near_hamming, near_cosine=near_cosine):
        if colour is None or float(colour[i] @ colour[j]) >= near_colour:
            near.union(i, j)
    return _groups(exact, n), _groups(near, n)
