"""One conformance suite for every back end: each answers as the exact oracle does.

Every check runs on every back end that is installed (``exact``, ``hnsw``, ``milvus`` in Milvus
Lite), on the bundled demo as built and again after live changes (adds, a byte-identical
twin, a metadata change, removals); a back end whose extra is missing is skipped with the
reason, the others still run. The oracle is the same generation searched by ``ExactIndex``
(``Recommender.load(path, backend="exact")``). The real Milvus standalone
(tests/test_milvus_server.py) runs the same checks through :func:`run_checks`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from lookalike import Index, Recommender, build, demo_catalog
from lookalike.search.backends import BACKENDS

DEMO = demo_catalog()
IMAGES = DEMO.parent / "images"
TABLE = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
#: what each back end needs beyond the core, to skip it (and only it) with the reason
NEEDS = {"hnsw": ("faiss",), "milvus": ("pymilvus", "milvus_lite")}
CHECKS: list[Callable[[Recommender, Recommender], None]] = []


def check(fn: Callable[[Recommender, Recommender], None]) -> Callable[[Recommender, Recommender], None]:
    CHECKS.append(fn)
    return fn


def same_answer(got, want) -> None:
    """The same products in the same order, with the oracle's scores."""
    assert got.ids == want.ids, (got.ids, want.ids)
    assert np.allclose([i.score for i in got], [i.score for i in want], atol=1e-5)


def queries(rec: Recommender, n: int = 12) -> list[str]:
    return rec.ids[:: max(1, len(rec) // n)][:n]


# -- the checks ------------------------------------------------------------------------
@check
def unfiltered_by_id(rec, oracle):
    for pid in queries(rec):
        same_answer(rec.similar(pid, k=10), oracle.similar(pid, k=10))


@check
def where_one_and_several_values(rec, oracle):
    colours = TABLE["Colour"].value_counts().index[:2].tolist()
    for pid in queries(rec, 6):
        for where in ({"Gender": "Women"}, {"Colour": colours}, {"Gender": ["Men", "Boys"], "Colour": colours[0]}):
            got = rec.similar(pid, k=8, where=where)
            same_answer(got, oracle.similar(pid, k=8, where=where))
            for item in got:
                for col, vals in where.items():
                    assert item.metadata[col] in ([vals] if isinstance(vals, str) else vals)


@check
def same_columns(rec, oracle):
    for pid in queries(rec, 8):
        got = rec.similar(pid, k=8, same="Gender")
        same_answer(got, oracle.similar(pid, k=8, same="Gender"))
        assert {i.metadata["Gender"] for i in got} <= {rec.product(pid)["Gender"]}


@check
def several_ids(rec, oracle):
    ids = queries(rec, 3)
    same_answer(rec.similar(ids, k=10), oracle.similar(ids, k=10))
    same_answer(rec.similar(ids, k=10, same="Gender"), oracle.similar(ids, k=10, same="Gender"))


@check
def the_query_products_and_their_twins_are_excluded(rec, oracle):
    for pid in queries(rec):
        got = rec.similar(pid, k=len(rec))
        twins = next((g for g in rec.duplicates(near=False) if pid in g), [pid])
        assert not set(got.ids) & set(twins)
        assert len(got) == len(oracle.similar(pid, k=len(rec))) and got.ids == oracle.similar(pid, k=len(rec)).ids


@check
def k_larger_than_the_matches(rec, oracle):
    colour = TABLE["Colour"].value_counts().index[-1]  # the rarest colour
    pid = queries(rec, 1)[0]
    got = rec.similar(pid, k=50, where={"Colour": colour}, collapse_duplicates=False)
    want = oracle.similar(pid, k=50, where={"Colour": colour}, collapse_duplicates=False)
    same_answer(got, want)
    holders = [p for p in rec.ids if rec.product(p)["Colour"] == colour and p != pid]
    assert len(got) == len(holders) < 50


@check
def a_value_nobody_holds_matches_nothing(rec, oracle):
    pid = queries(rec, 1)[0]
    assert len(rec.similar(pid, k=5, where={"Colour": "no such colour"})) == 0
    assert len(oracle.similar(pid, k=5, where={"Colour": "no such colour"})) == 0


@check
def photo_queries_with_and_without_where(rec, oracle):
    for photo in TABLE["Image"].iloc[[5, 50, 90]]:
        same_answer(rec.similar(image=IMAGES / photo, k=6), oracle.similar(image=IMAGES / photo, k=6))
        same_answer(rec.similar(image=IMAGES / photo, k=6, where={"Gender": "Men"}),
                    oracle.similar(image=IMAGES / photo, k=6, where={"Gender": "Men"}))


@check
def export_equals_the_oracle(rec, oracle):
    ids = queries(rec, 10)
    got = rec.export(k=5, same="Gender", ids=ids, show_progress_bar=False)
    want = oracle.export(k=5, same="Gender", ids=ids, show_progress_bar=False)
    assert got[["query_id", "rank", "id"]].equals(want[["query_id", "rank", "id"]])
    assert np.allclose(got["score"], want["score"], atol=1e-5)


#: the demo's one numeric column: its ids (the live changes add ids that are not numbers,
#: which no numeric condition matches)
NUMBER = "ProductId"


def _number(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return float("nan")


def _everything(rec, pid, **kw):
    """Every result a query may return (no collapsing), as the back end answers it."""
    return rec.similar(pid, k=len(rec), collapse_duplicates=False, **kw)


def _allowed(rec, pid, meets) -> set[str]:
    """The products whose cells ``meets`` accepts, but the query and its byte-identical twins."""
    twins = next((g for g in rec.duplicates(near=False) if pid in g), [pid])
    return {p for p in rec.ids if p not in twins and meets(rec.product(p))}


@check
def numeric_comparisons_and_ranges(rec, oracle):
    from lookalike import Condition

    numbers = TABLE[NUMBER].astype(float)
    lo, mid, hi = (float(x) for x in numbers.quantile([0.25, 0.5, 0.75]))
    cases = {
        f"{NUMBER}<{mid}": lambda x: x < mid, f"{NUMBER}<={mid}": lambda x: x <= mid,
        f"{NUMBER}>{mid}": lambda x: x > mid, f"{NUMBER}>={hi}": lambda x: x >= hi,
        f"{NUMBER}={lo}..{hi}": lambda x: lo <= x <= hi, f"{NUMBER}={hi}..": lambda x: x >= hi,
        f"{NUMBER}=..{lo}": lambda x: x <= lo,
    }
    for pid in queries(rec, 3):
        for text, meets in cases.items():
            same_answer(rec.similar(pid, k=8, where=[text]), oracle.similar(pid, k=8, where=[text]))
            got = _everything(rec, pid, where=text)
            same_answer(got, _everything(oracle, pid, where=text))
            # a row without a number (the live changes' ids) never meets one
            assert set(got.ids) == _allowed(rec, pid, lambda m, meets=meets: meets(_number(m[NUMBER]))), text
    exact_range = [Condition(NUMBER, "..", low=lo, high=hi)]
    pid = queries(rec, 1)[0]
    assert rec.similar(pid, k=8, where=exact_range).ids == rec.similar(pid, k=8, where=f"{NUMBER}={lo}..{hi}").ids


@check
def not_equal_on_text_and_numbers(rec, oracle):
    colour = TABLE["Colour"].value_counts().index[0]
    one_id = TABLE[NUMBER].iat[20]
    for pid in queries(rec, 4):
        for where in ([f"Colour!={colour}"], ["Gender!=Men,Women", f"Colour!={colour}"], [f"{NUMBER}!={one_id}"]):
            got = _everything(rec, pid, where=where)
            same_answer(got, _everything(oracle, pid, where=where))
            same_answer(rec.similar(pid, k=6, where=where), oracle.similar(pid, k=6, where=where))
        # != keeps rows without a number: it is a text condition
        got = _everything(rec, pid, where=f"{NUMBER}!={one_id}")
        assert set(got.ids) == _allowed(rec, pid, lambda m: m[NUMBER] != one_id)
        assert set(_everything(rec, pid, where=f"Colour!={colour}").ids) == _allowed(
            rec, pid, lambda m: m["Colour"] != colour)


@check
def numeric_conditions_with_same_values_and_photos(rec, oracle):
    mid = float(TABLE[NUMBER].astype(float).median())
    where = [f"{NUMBER}>={mid}", "Gender=Men,Women,Unisex", "Colour!=Black"]
    for pid in queries(rec, 4):
        got = rec.similar(pid, k=8, same="Gender", where=where)
        same_answer(got, oracle.similar(pid, k=8, same="Gender", where=where))
        assert all(_number(i.metadata[NUMBER]) >= mid and i.metadata["Colour"] != "Black" for i in got)
        assert {i.metadata["Gender"] for i in got} <= {rec.product(pid)["Gender"]}
    ids = queries(rec, 3)
    same_answer(rec.similar(ids, k=8, where=where), oracle.similar(ids, k=8, where=where))
    for photo in TABLE["Image"].iloc[[5, 50]]:
        same_answer(rec.similar(image=IMAGES / photo, k=6, where=f"{NUMBER}<{mid}"),
                    oracle.similar(image=IMAGES / photo, k=6, where=f"{NUMBER}<{mid}"))
    got = rec.export(k=4, ids=ids, where=[f"{NUMBER}<{mid}", "Colour!=Black"], show_progress_bar=False)
    want = oracle.export(k=4, ids=ids, where=[f"{NUMBER}<{mid}", "Colour!=Black"], show_progress_bar=False)
    assert got[["query_id", "rank", "id"]].equals(want[["query_id", "rank", "id"]]) and len(got) == 12


@check
def a_range_nobody_is_in_matches_nothing(rec, oracle):
    pid = queries(rec, 1)[0]
    top = TABLE[NUMBER].astype(float).max()
    assert len(rec.similar(pid, k=5, where=f"{NUMBER}>{top}")) == 0
    assert len(oracle.similar(pid, k=5, where=f"{NUMBER}={top + 1}..{top + 2}")) == 0


@check
def steered_queries(rec, oracle):
    """Boosts, caps, diversity, negatives and explanations are applied on the query side to
    what the back end found: every back end gives the oracle's lists and scores."""
    mid = float(TABLE[NUMBER].astype(float).median())
    colour = TABLE["Colour"].value_counts().index[0]
    steers = [{"boost": [f"Colour={colour}:+0.05", f"{NUMBER}>={mid}:*1.1"]}, {"max_per": "Colour=2"},
              {"max_per": {"Gender": 3}, "diversity": 0.5}, {"diversity": 0.3, "where": f"{NUMBER}<{mid}"},
              {"boost": f"Colour={colour}:+0.1", "max_per": "Colour=1", "same": "Gender"}]
    pids = queries(rec, 4)
    for pid in pids:
        for kw in steers:
            got = rec.similar(pid, k=8, **kw)
            same_answer(got, oracle.similar(pid, k=8, **kw))
            caps = kw.get("max_per") or {}
            caps = dict([caps.split("=")]) if isinstance(caps, str) else caps
            for col, n in caps.items():
                assert max(pd.Series([i.metadata[col] for i in got]).value_counts(), default=0) <= int(n)
        neg = rec.similar(pid, k=3).ids[0]
        got = rec.similar(pid, k=8, negative_ids=[neg])
        same_answer(got, oracle.similar(pid, k=8, negative_ids=[neg]))
        assert neg not in got.ids
    explained = rec.similar(pids[0], k=5, explain=True, boost=f"Colour={colour}:+0.05")
    same_answer(explained, oracle.similar(pids[0], k=5, explain=True, boost=f"Colour={colour}:+0.05"))
    for item in explained:
        assert item.explain is not None and abs(sum(item.explain.values()) - item.score) < 1e-5
    photo = IMAGES / TABLE["Image"].iat[50]
    same_answer(rec.similar(image=photo, k=6, box="0.1,0.1,0.8,0.8", max_per="Colour=2"),
                oracle.similar(image=photo, k=6, box="0.1,0.1,0.8,0.8", max_per="Colour=2"))
    got = rec.export(k=4, ids=pids, max_per="Colour=1", boost=f"Colour={colour}:+0.05", show_progress_bar=False)
    want = oracle.export(k=4, ids=pids, max_per="Colour=1", boost=f"Colour={colour}:+0.05", show_progress_bar=False)
    assert got[["query_id", "rank", "id"]].equals(want[["query_id", "rank", "id"]])


def run_checks(path: Path) -> None:
    """Every check on the index at ``path``, against the exact oracle over the same generation."""
    rec, oracle = Recommender.load(path), Recommender.load(path, backend="exact")
    assert len(rec) == len(oracle) and rec.ids == oracle.ids
    for fn in CHECKS:
        fn(rec, oracle)


# -- the back ends -------------------------------------------------------------------
@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    for module in NEEDS.get(request.param, ()):
        pytest.importorskip(module, reason=f"the {request.param} back end needs {module} (its extra is not installed)")
    return request.param


def _build(backend: str, folder: Path, encoder) -> Path:
    extra = {"milvus_uri": folder / "milvus.db"} if backend == "milvus" else {}
    build(DEMO, folder / "index", encoder=encoder, backend=backend, show_progress_bar=False, **extra)
    return folder / "index"


@pytest.fixture(scope="module")
def built(backend, tmp_path_factory, encoder) -> Path:
    return _build(backend, tmp_path_factory.mktemp(f"conformance-{backend}"), encoder)


#: the live changes: a byte-identical twin pair of one product, a new product, a metadata
#: change and three removals
TWIN_OF = 7
REMOVED = [3, 40, 77]


def apply_live_changes(path: Path, encoder) -> None:
    """The live changes the checks run after (the Milvus standalone module applies them too)."""
    ix = Index.open(path, encoder=encoder)
    source = TABLE.iloc[TWIN_OF]
    twins = pd.DataFrame([{**source.to_dict(), "ProductId": pid} for pid in ("zz-twin-b", "zz-twin-a")])
    new = TABLE.iloc[[60]].assign(ProductId="new-1", ProductTitle="added live")
    report = ix.upsert(pd.concat([twins, new]), images=IMAGES)
    assert report.counts()["added"] == 3, report.summary()
    ix.upsert({"ProductId": TABLE["ProductId"].iat[12], "Gender": "Unisex"})
    ix.remove(TABLE["ProductId"].iloc[REMOVED])


@pytest.fixture(scope="module")
def changed(backend, tmp_path_factory, encoder) -> Path:
    path = _build(backend, tmp_path_factory.mktemp(f"conformance-live-{backend}"), encoder)
    apply_live_changes(path, encoder)
    return path


@pytest.mark.parametrize("fn", CHECKS, ids=[fn.__name__ for fn in CHECKS])
def test_as_built(built, fn):
    fn(Recommender.load(built), Recommender.load(built, backend="exact"))


@pytest.mark.parametrize("fn", CHECKS, ids=[fn.__name__ for fn in CHECKS])
def test_after_live_changes(changed, fn):
    fn(Recommender.load(changed), Recommender.load(changed, backend="exact"))


def test_live_changes_are_seen(changed):
    rec = Recommender.load(changed)
    gone = set(TABLE["ProductId"].iloc[REMOVED])
    for pid in queries(rec):
        assert not gone & set(rec.similar(pid, k=len(rec), collapse_duplicates=False).ids)
    assert rec.similar(image=IMAGES / TABLE["Image"].iat[60], k=1).ids in (["new-1"], [TABLE["ProductId"].iat[60]])
    unisex = rec.similar(queries(rec, 1)[0], k=5, where={"Gender": "Unisex"})
    assert TABLE["ProductId"].iat[12] in unisex.ids


def test_ties_rank_by_id_and_collapse_keeps_the_first(changed):
    """The twins and their source have equal vectors: from any other product they rank by id,
    and collapsing duplicates keeps the first of them."""
    rec = Recommender.load(changed)
    group = sorted([TABLE["ProductId"].iat[TWIN_OF], "zz-twin-a", "zz-twin-b"])
    query = next(p for p in queries(rec) if p not in group)
    every = rec.similar(query, k=len(rec), collapse_duplicates=False).ids
    at = [every.index(p) for p in group]
    assert at == sorted(at) and at[-1] - at[0] == 2  # side by side, by id
    collapsed = rec.similar(query, k=len(rec)).ids
    assert [p for p in collapsed if p in group] == [group[0]]


def test_approximate_search_keeps_its_recall_bound(built, backend):
    """The graph walk itself (not the brute force a small set gets), with and without a
    filter (values, a numeric condition): recall@10 against the oracle stays >= 0.95."""
    from lookalike.folder.store import Store

    snap = Store(built).snapshot()
    if backend == "hnsw":
        from lookalike.search.backends.hnsw import HNSWIndex
        from lookalike.search.backends.segmented import physical_rows

        walk = HNSWIndex(physical_rows(snap.segments[0], "cosine"), metric="cosine", brute_force_below=0)
        rec = Recommender.from_snapshot(snap, index=walk)
    else:
        rec = Recommender.from_snapshot(snap)
    oracle = Recommender.load(built, backend="exact")
    hits = total = 0
    for pid in rec.ids[::3]:
        for kw in ({}, {"same": "Gender"}, {"where": {"Gender": ["Women", "Girls"]}},
                   {"where": f"{NUMBER}>={TABLE[NUMBER].astype(float).quantile(0.4)}"}):  # a walk: 60 rows > 4 k
            want = set(oracle.similar(pid, k=10, collapse_duplicates=False, **kw).ids)
            hits += len(want & set(rec.similar(pid, k=10, collapse_duplicates=False, **kw).ids))
            total += len(want)
    assert hits / total >= 0.95


def test_a_back_end_instance_must_hold_the_generation_s_rows(built):
    from lookalike import IndexFormatError
    from lookalike.search.backends import ExactIndex

    with pytest.raises(IndexFormatError, match="holds 2 rows"):
        Recommender.load(built, index=ExactIndex(np.zeros((2, 4), np.float32)))


def test_the_suite_runs_on_a_copy_as_a_user_would(built, tmp_path, backend):
    """`run_checks` (what the Milvus standalone module calls) passes on a folder as it is."""
    if backend == "milvus":  # the collection lives in the .db the manifest names: no copy
        run_checks(built)
        return
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    run_checks(copy)


def test_rules_and_query_defaults_on_every_back_end(backend, tmp_path, encoder):
    """Pinned and blocked pairs and the index's query defaults, stored in a generation, act the
    same on every back end as on the oracle (its own build: rules change what later checks see)."""
    from lookalike import IndexWriter, QueryDefaults, Rule

    path = _build(backend, tmp_path, encoder)
    rec = Recommender.load(path)
    a, b = queries(rec, 2)
    plain = rec.similar(a, k=6)
    far = rec.similar(a, k=len(rec) - 1).ids[-1]
    w = IndexWriter.open(path)
    w.change_rules(add=[Rule("pin", far, a, 2), Rule("block", plain.ids[0], a), Rule("block", plain.ids[1])])
    colour = TABLE["Colour"].value_counts().index[0]
    w.set_defaults(QueryDefaults(where=("Gender!=Girls",), boost=(f"Colour={colour}:+0.05",), max_per=("Colour=3",)))
    rec, oracle = Recommender.load(path), Recommender.load(path, backend="exact")
    got = rec.similar(a, k=6)
    same_answer(got, oracle.similar(a, k=6))
    assert got.ids[1] == far and plain.ids[0] not in got.ids and plain.ids[1] not in got.ids
    assert all(i.metadata["Gender"] != "Girls" for i in got)
    for pid in (b, *queries(rec, 5)):
        same_answer(rec.similar(pid, k=8), oracle.similar(pid, k=8))
        assert plain.ids[1] not in rec.similar(pid, k=8).ids
        same_answer(rec.similar(pid, k=8, defaults=False, rules=False), oracle.similar(pid, k=8, defaults=False, rules=False))
    ex, want = rec.export(k=5, ids=[a, b], show_progress_bar=False), oracle.export(k=5, ids=[a, b], show_progress_bar=False)
    assert ex[["query_id", "rank", "id"]].equals(want[["query_id", "rank", "id"]])
