"""Vector indexes: the exact oracle against plain NumPy, and HNSW against the oracle."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layout import base

from lookalike import IndexFormatError, InvalidQueryError, Recommender
from lookalike.search.backends import BACKENDS, ExactIndex, Filter, VectorIndex, make_index, topk_sorted
from lookalike.search.backends.hnsw import HNSWIndex

#: the HNSW tests need faiss (the `faiss` extra); the exact oracle's tests run without it
needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="the faiss extra is not installed")


@pytest.fixture(scope="module")
def fashion_index(fashion_hnsw_index) -> Path:
    return fashion_hnsw_index


@pytest.fixture(scope="module")
def real(fashion_index):
    """Real shape vectors (unit length), genders, and 300 query rows spread over the set."""
    vectors = np.load(base(fashion_index) / "vectors.npy")
    meta = pd.read_parquet(base(fashion_index) / "metadata.parquet")
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(len(vectors), 300, replace=False))
    return vectors, meta["Gender"].to_numpy(), queries


def recall_at_k(
    data: np.ndarray, queries: np.ndarray, exact_scores: np.ndarray, rows: np.ndarray, metric: str = "cosine"
) -> float:
    """Share of returned rows that belong in the exact top k (ties at the k-th score count).

    The set has byte-identical photos, hence equal vectors: comparing id sets would punish
    an index for choosing another row of a tie.
    """
    hits = 0
    for q, kth, got in zip(queries, exact_scores[:, -1], rows, strict=True):
        assert (got >= 0).all()
        true = data[got] @ q if metric == "cosine" else -np.linalg.norm(data[got] - q, axis=1)
        hits += int(np.sum(true >= kth - 1e-4))
    return hits / rows.size


# -- the exact oracle vs plain NumPy ------------------------------------------------------
def _reference(data, queries, k, metric, allowed=None):
    """Argsort reference: score descending, then row ascending; -1/-inf padding."""
    if metric == "cosine":
        s = queries @ data.T
    else:
        s = -np.sqrt(((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1))
    if allowed is not None:
        s = np.where(np.broadcast_to(allowed, s.shape), s, -np.inf)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for j in range(len(queries)):
        order = np.lexsort((np.arange(len(data)), -s[j]))
        order = [r for r in order if np.isfinite(s[j, r])][:k]
        rows[j, : len(order)] = order
        scores[j, : len(order)] = s[j, order]
    return scores, rows


@pytest.fixture(scope="module")
def random_data():
    rng = np.random.default_rng(42)
    data = rng.standard_normal((500, 24)).astype(np.float32)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    queries = rng.standard_normal((17, 24)).astype(np.float32)
    return data, unit, queries, rng


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("block_rows", [65536, 64, 7])
def test_exact_matches_argsort(random_data, metric, block_rows):
    data, unit, queries, _ = random_data
    stored = unit if metric == "cosine" else data
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True) if metric == "cosine" else queries
    index = ExactIndex(stored, metric=metric, block_rows=block_rows)
    assert isinstance(index, VectorIndex) and len(index) == 500
    scores, rows = index.search(q, 10)
    ref_s, ref_r = _reference(stored, q, 10, metric)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    assert np.array_equal(rows, ref_r)
    assert np.allclose(scores, ref_s, atol=1e-4)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_masks_1d_and_2d(random_data, metric):
    data, unit, queries, rng = random_data
    stored = unit if metric == "cosine" else data
    index = ExactIndex(stored, metric=metric, block_rows=50)
    one = rng.random(500) < 0.3
    scores, rows = index.search(queries, 8, filter=Filter.of_mask(one))
    ref_s, ref_r = _reference(stored, queries, 8, metric, one[None, :])
    assert np.array_equal(rows, ref_r) and one[rows].all()
    assert np.allclose(scores, ref_s, atol=1e-4)

    per_query = rng.random((len(queries), 500)) < 0.1
    scores, rows = index.search(queries, 8, filter=Filter.of_mask(per_query))
    ref_s, ref_r = _reference(stored, queries, 8, metric, per_query)
    assert np.array_equal(rows, ref_r)
    assert np.take_along_axis(per_query, rows, 1).all()
    assert np.allclose(scores, ref_s, atol=1e-4)


def test_exact_k_larger_than_allowed_pads(random_data):
    data, unit, queries, _ = random_data
    index = ExactIndex(unit, metric="cosine", block_rows=100)
    allowed = np.zeros(500, dtype=bool)
    allowed[[3, 250, 499]] = True
    scores, rows = index.search(queries[:4], 6, filter=Filter.of_mask(allowed))
    assert rows.shape == scores.shape == (4, 6)
    assert (rows[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert all(set(r[:3]) == {3, 250, 499} for r in rows)
    # a query with nothing allowed gets only padding
    mask = np.ones((2, 500), dtype=bool)
    mask[1] = False
    scores, rows = index.search(queries[:2], 4, filter=Filter.of_mask(mask))
    assert (rows[1] == -1).all() and np.isneginf(scores[1]).all() and (rows[0] >= 0).all()
    # k larger than the whole index is clipped to it
    scores, rows = index.search(queries[:1], 900)
    assert rows.shape == (1, 500) and sorted(rows[0]) == list(range(500))


def test_exact_ties_break_by_row(random_data):
    data, unit, queries, _ = random_data
    stored = np.vstack([unit[:5], unit[:5], unit[:5]])  # every vector three times
    index = ExactIndex(stored, metric="cosine", block_rows=4)
    _, rows = index.search(unit[2:3], 3)
    assert rows.tolist() == [[2, 7, 12]]


def test_topk_sorted_pads_short_input():
    s, r = topk_sorted(np.array([[0.5, 0.9]], np.float32), np.array([[4, 1]], np.int64), 4)
    assert r.tolist() == [[1, 4, -1, -1]] and np.isneginf(s[0, 2:]).all()


def test_unknown_backend():
    with pytest.raises(InvalidQueryError, match="exact, hnsw"):
        make_index("annoy", np.zeros((3, 2), np.float32), metric="cosine")
    assert BACKENDS == ("exact", "hnsw", "milvus")


# -- HNSW vs the oracle on real vectors ---------------------------------------------------
@needs_faiss
def test_hnsw_recall_unfiltered(real):
    vectors, _, qrows = real
    q = vectors[qrows]
    hnsw = make_index("hnsw", vectors, metric="cosine")
    assert isinstance(hnsw, VectorIndex)
    exact_s, _ = ExactIndex(vectors).search(q, 10)
    _, rows = hnsw.search(q, 10)
    assert recall_at_k(vectors, q, exact_s, rows) >= 0.95


@needs_faiss
def test_hnsw_recall_with_gender_masks(real):
    vectors, gender, qrows = real
    q = vectors[qrows]
    exact = ExactIndex(vectors)
    # force the filtered graph walk: the default takes exact brute force below 4,096 rows
    hnsw = make_index("hnsw", vectors, metric="cosine", brute_force_below=0)
    own = gender[None, :] == gender[qrows][:, None]  # 2-D: each query's own gender
    exact_s, _ = exact.search(q, 10, filter=Filter.of_mask(own))
    _, rows = hnsw.search(q, 10, filter=Filter.of_mask(own))
    assert np.take_along_axis(own, rows, 1).all()
    assert recall_at_k(vectors, q, exact_s, rows) >= 0.95

    men = gender == "Men"  # 1-D: one gender for all, queried by its own products
    qm = vectors[np.flatnonzero(men)[::4]]
    exact_s, _ = exact.search(qm, 10, filter=Filter.of_mask(men))
    _, rows = hnsw.search(qm, 10, filter=Filter.of_mask(men))
    assert men[rows].all()
    assert recall_at_k(vectors, qm, exact_s, rows) >= 0.95


@needs_faiss
def test_hnsw_recall_with_one_gender_for_all_queries(real):
    vectors, gender, qrows = real
    q = vectors[qrows]  # queries of every gender, results restricted to one (a `where` filter)
    men = gender == "Men"
    hnsw = make_index("hnsw", vectors, metric="cosine", brute_force_below=0)
    exact_s, _ = ExactIndex(vectors).search(q, 10, filter=Filter.of_mask(men))
    _, rows = hnsw.search(q, 10, filter=Filter.of_mask(men))
    assert men[rows].all()
    assert recall_at_k(vectors, q, exact_s, rows) >= 0.95


@needs_faiss
def test_hnsw_small_filter_is_exact(real):
    vectors, gender, qrows = real
    q = vectors[qrows[:50]]
    girls = gender == "Girls"
    hnsw = make_index("hnsw", vectors, metric="cosine")  # default: brute force under 4,096 rows
    s1, r1 = hnsw.search(q, 10, filter=Filter.of_mask(girls))
    s2, r2 = ExactIndex(vectors).search(q, 10, filter=Filter.of_mask(girls))
    # the same rows up to float rounding among (near-)tied scores
    assert np.allclose(s1, s2, atol=1e-6) and girls[r1].all()
    assert recall_at_k(vectors, q, s2, r1) == 1.0
    assert (r1 == r2).mean() > 0.95
    tiny = np.zeros(len(vectors), bool)
    tiny[:3] = True
    s, r = hnsw.search(q[:2], 5, filter=Filter.of_mask(tiny))
    assert (r[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()


@needs_faiss
def test_hnsw_euclidean(real):
    vectors, _, qrows = real
    raw = vectors * np.linspace(0.5, 2.0, len(vectors), dtype=np.float32)[:, None]  # not unit length
    q = raw[qrows]
    exact_s, _ = ExactIndex(raw, metric="euclidean").search(q, 10)
    scores, rows = make_index("hnsw", raw, metric="euclidean").search(q, 10)
    assert recall_at_k(raw, q, exact_s, rows, metric="euclidean") >= 0.95
    assert (scores <= 1e-6).all() and np.all(np.diff(scores, axis=1) <= 1e-6)  # minus distances


@needs_faiss
def test_hnsw_serialize_and_load(real, tmp_path):
    vectors, _, qrows = real
    hnsw = make_index("hnsw", vectors, metric="cosine")
    data = hnsw.serialize()["index.faiss"]
    again = HNSWIndex.from_bytes(data, vectors, metric="cosine")
    q = vectors[qrows[:20]]
    assert np.array_equal(again.search(q, 10)[1], hnsw.search(q, 10)[1])
    with pytest.raises(IndexFormatError, match="holds"):
        HNSWIndex.from_bytes(data, vectors[:-1], metric="cosine")
    with pytest.raises(IndexFormatError, match="damaged"):
        HNSWIndex.from_bytes(b"garbage", vectors, metric="cosine")


@needs_faiss
def test_built_hnsw_index_is_loaded_with_its_backend(fashion_index):
    rec = Recommender.load(fashion_index)
    assert rec.manifest["index"]["backend"] == "hnsw" and rec.index.name == "hnsw"
    assert (base(fashion_index) / "index.faiss").is_file()
    assert Recommender.load(fashion_index, backend="exact").index.name == "exact"


@needs_faiss
def test_built_hnsw_index_recall(fashion_index, real):
    """The graph `build(backend='hnsw')` writes (shape and colour side by side), searched the way
    the recommender does with colour weight 0 (zeros in the colour part)."""
    _, _, qrows = real
    rec = Recommender.load(fashion_index)
    searchable = np.hstack([rec.vectors, rec.colour])
    q = np.hstack([rec.vectors[qrows], np.zeros((len(qrows), rec.colour.shape[1]), np.float32)])
    exact_s, _ = ExactIndex(searchable).search(q, 10)
    _, rows = rec.index.search(q, 10)
    assert recall_at_k(searchable, q, exact_s, rows) >= 0.95


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_run_over_segments_equals_exact_search_over_live_rows(metric):
    """ExactRun (a changed generation: several blocks, dead rows masked) answers as ExactIndex
    over the live rows alone, with and without per-query filters, batched or not."""
    from lookalike.search.backends.segmented import ExactRun

    rng = np.random.default_rng(3)
    blocks = [rng.normal(size=(n, 16)).astype(np.float32) for n in (50, 7, 3)]
    live = rng.random(60) < 0.8
    run = ExactRun(blocks, live, metric=metric, name="exact")
    rows = np.concatenate(blocks)[live]
    oracle = ExactIndex(rows, metric=metric)
    queries = rng.normal(size=(6, 16)).astype(np.float32)
    allowed = rng.random((6, len(rows))) < 0.6
    assert len(run) == len(rows)
    for mask in (None, allowed):
        s, r = run.search(queries, 5, filter=Filter.of_mask(mask))
        want_s, want_r = oracle.search(queries, 5, filter=Filter.of_mask(mask))
        np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-5)
        assert (r == want_r).all()
