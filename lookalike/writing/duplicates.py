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

__all__ = ["find_duplicate_groups", "candidate_pairs", "regroup", "NEAR_HAMMING", "NEAR_COSINE", "NEAR_COLOUR"]

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


def regroup(
    exact: np.ndarray,
    near: np.ndarray,
    live: np.ndarray,
    sha1s: np.ndarray,
    dhashes: np.ndarray,
    unit_vectors: np.ndarray,
    colour: np.ndarray,
    touched: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate groups after a change, without regrouping the whole catalogue.

    ``touched`` holds the live rows the change added, and the live rows of groups that lost a
    member. Their groups are found again among every live row they could join: rows with the
    same photo bytes, rows that pass the hash and embedding tests with one of them, and the
    whole current groups of all those. Groups are connected components, so no other row's
    group can change: the result equals regrouping every live row (as a fresh build does).
    """
    exact, near = exact.astype(np.int64).copy(), near.astype(np.int64).copy()
    exact[~live] = -1
    near[~live] = -1
    live_rows = np.flatnonzero(live)
    touched = np.asarray(touched, dtype=np.int64)
    if len(touched) == 0:
        return exact, near
    h = np.asarray(dhashes, dtype=np.uint64)
    sha1s = np.asarray(sha1s, dtype=object)
    wanted = [s for s in set(sha1s[touched].tolist()) if s]
    members = set(touched.tolist())
    if wanted:
        members.update(live_rows[np.isin(sha1s[live_rows], wanted)].tolist())
    hl, ul = h[live_rows], unit_vectors[live_rows]
    for r in touched:
        close = np.bitwise_count(hl ^ h[r]) <= NEAR_HAMMING
        if close.any():
            cand = live_rows[close]
            members.update(cand[ul[close] @ unit_vectors[r] >= NEAR_COSINE].tolist())
    groups = {int(g) for g in near[list(members)] if g >= 0}
    if groups:
        members.update(live_rows[np.isin(near[live_rows], list(groups))].tolist())
    sub = np.array(sorted(members), dtype=np.int64)
    e, n = find_duplicate_groups(sha1s[sub].tolist(), h[sub], unit_vectors[sub], colour[sub])
    start = int(max(exact.max(initial=-1), near.max(initial=-1))) + 1
    exact[sub] = np.where(e >= 0, e + start, -1)
    near[sub] = np.where(n >= 0, n + start, -1)
    return exact, near
