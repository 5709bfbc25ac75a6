"""Milvus Lite (a local .db file) against the exact oracle, and filters that no value can bend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lookalike.errors import IndexFormatError, InvalidQueryError, LookalikeError, MissingDependencyError
from lookalike.search.backends import ExactIndex, Filter

pytest.importorskip("pymilvus", reason="pymilvus is not installed: pip install 'lookalike[milvus]'")

from lookalike.search.backends.milvus import (  # noqa: E402
    IndexSpec,
    MilvusStore,
    encode_text,
    field_name,
    filter_expression,
)

K = 10


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def singleton_groups(groups: np.ndarray) -> np.ndarray:
    """Every product its own group number where it has none (as the Recommender does)."""
    g = groups.astype(np.int64).copy()
    alone = g < 0
    g[alone] = g.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    return g


def load_demo(folder: Path) -> dict[str, Any]:
    """An index folder as the exact back end searches it: hstack([shape, colour]) per product."""
    from lookalike.folder.store import Store

    snap = Store(folder).snapshot()
    vectors, colour, meta = snap.dense()
    ids = meta[snap.id_column].astype(str).tolist()
    columns = [c for c in meta.columns if not c.startswith("_")]
    return {
        "ids": ids,
        "row": {pid: i for i, pid in enumerate(ids)},
        "shape": vectors,
        "colour": colour,
        "data": np.hstack([vectors, colour]).astype(np.float32),
        "meta": meta,
        "columns": columns,
        "exact_groups": singleton_groups(meta["_dup_exact"].to_numpy()),
        "near_groups": singleton_groups(meta["_dup_near"].to_numpy()),
    }


@pytest.fixture(scope="module")
def demo(demo_index):
    return load_demo(demo_index)


def upsert_demo(store: MilvusStore, demo) -> None:
    store.upsert(
        demo["ids"],
        demo["data"],
        {c: demo["meta"][c].astype(str).tolist() for c in demo["columns"]},
        dup_exact=demo["exact_groups"],
        dup_near=demo["near_groups"],
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory, demo):
    s = MilvusStore(tmp_path_factory.mktemp("milvus") / "demo.db", batch_rows=32)  # 4 upsert batches
    s.create("demo", demo["data"].shape[1], demo["columns"])
    upsert_demo(s, demo)
    yield s
    s.close()


def queries(demo, rows, w: float) -> np.ndarray:
    """Blended query vectors, built as the Recommender builds them."""
    return np.hstack([(1 - w) * unit(demo["shape"][rows]), w * unit(demo["colour"][rows])]).astype(np.float32)


def assert_like_exact(demo, got, q, scores, rows) -> None:
    """Same scores (1e-5) and the same ids, except that rows whose exact scores tie (byte-
    identical photos) may come in another order."""
    for found, qv, s_row, r_row in zip(got, q, scores, rows, strict=True):
        want = [(demo["ids"][r], s) for r, s in zip(r_row, s_row) if r >= 0]
        assert len(found) == len(want)
        assert len({pid for pid, _ in found}) == len(found)
        np.testing.assert_allclose([s for _, s in found], [s for _, s in want], atol=1e-5)
        for (pid, _), (wid, ws) in zip(found, want):
            if pid != wid:
                assert abs(float(demo["data"][demo["row"][pid]] @ qv) - ws) <= 1e-5, (pid, wid)


# -- the store against the exact oracle ---------------------------------------------------------
def test_collection_holds_the_demo(store, demo):
    assert store.count() == len(demo["ids"]) == 99
    assert store.index == IndexSpec("FLAT", {})
    assert store.fields["Gender"] == "c_Gender"
    assert store.columns == demo["columns"]


@pytest.mark.parametrize("w", [0.0, 0.15, 0.5, 1.0])
def test_flat_equals_exact_for_any_colour_weight(store, demo, w):
    rows = np.arange(len(demo["ids"]))
    q = queries(demo, rows, w)
    scores, exact_rows = ExactIndex(demo["data"]).search(q, K)
    got = store.search(q, K)  # all 99 queries in one call
    assert len(got) == len(rows)
    assert_like_exact(demo, got, q, scores, exact_rows)


@pytest.mark.parametrize("genders", [["Women"], ["Men", "Boys"], "Girls"])
def test_where_is_pushed_into_the_search(store, demo, genders):
    rows = np.arange(0, 99, 3)
    q = queries(demo, rows, 0.15)
    wanted = [genders] if isinstance(genders, str) else genders
    allowed = demo["meta"]["Gender"].isin(wanted).to_numpy()
    assert 0 < allowed.sum() < 99
    scores, exact_rows = ExactIndex(demo["data"]).search(q, K, filter=Filter.of_mask(allowed))
    expr = filter_expression({"Gender": genders}, fields=store.fields)
    got = store.search(q, K, expr=expr)
    assert_like_exact(demo, got, q, scores, exact_rows)
    assert all(demo["meta"]["Gender"].iat[demo["row"][pid]] in wanted for found in got for pid, _ in found)


def test_exclusion_of_the_query_duplicate_group_with_a_where(store, demo):
    """The Recommender's query exclusion: no row of the query's byte-identical group."""
    groups = demo["exact_groups"]
    shared = [r for r in range(99) if (groups == groups[r]).sum() > 1]
    rows = np.array(shared + [0, 1, 2, 50])
    q = queries(demo, rows, 0.15)
    women = demo["meta"]["Gender"].eq("Women").to_numpy()
    for where, base in ((None, np.ones(99, bool)), ({"Gender": ["Women"]}, women)):
        allowed = (groups[None, :] != groups[rows][:, None]) & base[None, :]
        scores, exact_rows = ExactIndex(demo["data"]).search(q, K, filter=Filter.of_mask(allowed))
        got = [
            store.search(q[j : j + 1], K, expr=filter_expression(where, exclude={"dup_exact": [groups[r]]},
                                                                 fields=store.fields))[0]
            for j, r in enumerate(rows)
        ]
        assert_like_exact(demo, got, q, scores, exact_rows)
        for r, found in zip(rows, got):
            assert demo["ids"][r] not in {pid for pid, _ in found}


def test_collapse_by_over_fetching(store, demo):
    """One row per near-duplicate group, as the Recommender collapses: fetch more, keep firsts."""
    near = demo["near_groups"]
    assert len(np.unique(near)) < 99, "the demo has near-duplicate photos"
    q = queries(demo, np.arange(99), 0.15)
    for found in store.search(q, 3 * K):
        kept = {}
        for pid, s in found:
            kept.setdefault(int(near[demo["row"][pid]]), (pid, s))
        assert len(kept) >= K


def test_upsert_and_delete_are_visible_to_the_next_search(tmp_path, demo):
    with MilvusStore(tmp_path / "live.db") as s:
        s.create("live", demo["data"].shape[1], demo["columns"])
        upsert_demo(s, demo)
        s.flush()  # Lite: seals; searches see the rows before and after
        q = queries(demo, [5], 0.15)
        first = s.search(q, 3)[0]
        assert first[0][0] == demo["ids"][5]

        # a changed photo and a changed column, written under the same id
        pid = demo["ids"][40]
        cells = {c: [str(demo["meta"][c].iat[5])] for c in demo["columns"]}
        cells["Gender"] = ["Unisex"]
        s.upsert([pid], demo["data"][5:6], cells, dup_exact=[10_000], dup_near=[10_000])
        assert s.count() == 99
        top = s.search(q, 2)[0]
        assert {p for p, _ in top} == {pid, demo["ids"][5]}
        assert top[0][1] == pytest.approx(top[1][1], abs=1e-5) == pytest.approx(first[0][1], abs=1e-5)
        unisex = filter_expression({"Gender": ["Unisex"]}, fields=s.fields)
        assert [p for p, _ in s.search(q, 5, expr=unisex)[0]] == [pid]

        s.delete([pid, demo["ids"][5], "not-there"])
        assert s.count() == 97
        after = {p for p, _ in s.search(q, 99)[0]}
        assert pid not in after and demo["ids"][5] not in after and len(after) == 97

        # reopening the collection finds its columns and index again
        s.open("live")
        assert s.columns == demo["columns"] and s.dim == demo["data"].shape[1] and s.count() == 97
        s.drop()
        with pytest.raises(IndexFormatError, match="no collection 'live'"):
            s.open("live")


# -- filters no value can bend ------------------------------------------------------------------
NASTY = ['" or 1==1 or "', "' or pk != '", '\\" or \\"', '") or (pk != "', "%22", "a%", '"]', "\\", "\n", ""]
COLUMN = 'Base "Colour"\\\n ü'  # a column name no field name could hold


@pytest.fixture(scope="module")
def escaping(tmp_path_factory):
    s = MilvusStore(tmp_path_factory.mktemp("milvus") / "escaping.db")
    s.create("escaping", 4, [COLUMN, "Gender"])
    yield s, {}
    s.close()


text = st.text(alphabet=st.sampled_from(list("\"'\\\n\r\t %_[](),=!aZ0ü😀\x00")), max_size=10)


@settings(max_examples=40, deadline=None, database=None)
@given(values=st.lists(text | st.sampled_from(NASTY) | st.text(max_size=6), min_size=1, max_size=8, unique=True))
def test_no_value_changes_an_expression(escaping, values):
    """Rows keyed by (and holding) random nasty strings: each filter returns exactly the rows
    holding its value, across every example so far; deleting by such ids deletes only them."""
    store, held = escaping
    keys = [f"id {v}" for v in values]  # product ids are nasty too
    rng = np.random.default_rng(len(held))
    store.upsert(keys, rng.standard_normal((len(keys), 4)), {COLUMN: values, "Gender": values})
    held.update(zip(keys, values))
    assert store.count() == len(held)
    q = np.ones((1, 4), np.float32)
    for v in values:
        for column in (COLUMN, "Gender"):
            expr = filter_expression({column: [v]}, fields=store.fields)
            got = {pid for pid, _ in store.search(q, len(held), expr=expr)[0]}
            assert got == {k for k, h in held.items() if h == v}, expr
    pair = values[:2]
    expr = filter_expression({COLUMN: pair}, fields=store.fields)
    assert {p for p, _ in store.search(q, len(held), expr=expr)[0]} == {k for k, h in held.items() if h in pair}
    gone = keys[: len(keys) // 2]
    store.delete(gone)
    for k in gone:
        del held[k]
    assert store.count() == len(held)
    assert {p for p, _ in store.search(q, max(1, len(held)), expr="")[0]} == set(held)


def test_filter_expression_text():
    fields = {"Gender": "c_Gender", COLUMN: field_name(COLUMN)}
    assert filter_expression(None, fields=fields) == ""
    assert filter_expression({"Gender": "Men"}, fields=fields) == '(c_Gender in ["Men"])'
    assert filter_expression({"Gender": ["Men", 'a"b\\', "Men"]}, exclude={"dup_exact": [3, np.int64(1)]},
                             fields=fields) == '(c_Gender in ["Men", "a%22b%5C"]) and (dup_exact not in [1, 3])'
    assert filter_expression({"Gender": []}, fields=fields) == '(c_Gender == "" and c_Gender != "")'
    assert filter_expression(None, exclude={"dup_near": []}, fields=fields) == ""
    name = field_name(COLUMN)
    assert name.startswith("c_Base__Colour____") and name.isascii() and len(name) < 100
    assert encode_text("Casual Shoes") == "Casual Shoes"
    with pytest.raises(InvalidQueryError, match="unknown column 'Colour'"):
        filter_expression({"Colour": ["Red"]}, fields=fields)
    with pytest.raises(InvalidQueryError, match="choose one of dup_exact, dup_near"):
        filter_expression(None, exclude={"pk": [1]}, fields=fields)
    with pytest.raises(InvalidQueryError, match="whole numbers"):
        filter_expression(None, exclude={"dup_exact": ["1 or 1==1"]}, fields=fields)
    with pytest.raises(InvalidQueryError, match="not a Milvus field name"):
        filter_expression({"Gender": ["x"]}, fields={"Gender": "pk != '' or c"})


def test_a_value_nobody_holds_matches_nothing(store):
    q = np.zeros((1, store.dim), np.float32)
    for where in ({"Gender": []}, {"Gender": ["Martian"]}, {"Gender": ['Men" or 1==1 or "']}):
        assert store.search(q, 5, expr=filter_expression(where, fields=store.fields)) == [[]]


# -- errors: one line each, from lookalike's tree ------------------------------------------------------
def test_errors(tmp_path, store, monkeypatch):
    with MilvusStore(tmp_path / "e.db") as s:
        with pytest.raises(IndexFormatError, match="has no collection 'nope'"):
            s.open("nope")
        with pytest.raises(InvalidQueryError, match="no HNSW index; choose one of FLAT, IVF_FLAT, AUTOINDEX"):
            s.create("x", 4, [], index=IndexSpec("HNSW", {"M": 16, "efConstruction": 64}))
        with pytest.raises(InvalidQueryError, match="no collection chosen"):
            s.count()
        s.create("x", 4, ["Gender"])
        with pytest.raises(IndexFormatError, match="drop=True"):
            s.create("x", 8, ["Gender"])
        with pytest.raises(InvalidQueryError, match="missing \\['Gender'\\]"):
            s.upsert(["a"], np.zeros((1, 4)))
        with pytest.raises(InvalidQueryError, match="distinct"):
            s.upsert(["a", "a"], np.zeros((2, 4)), {"Gender": ["x", "y"]})
        with pytest.raises(InvalidQueryError, match="k must be"):
            s.search(np.zeros(4), 0)
        s.create("x", 8, ["Gender"], drop=True)
        assert s.dim == 8
        with MilvusStore(tmp_path / "e.db") as other:  # drops the collection under s
            other.open("x")
            other.drop()
        with pytest.raises(IndexFormatError, match="has no collection 'x'"):
            s.search(np.zeros(8), 1)
    with pytest.raises(InvalidQueryError, match="must end in .db"):
        MilvusStore(tmp_path / "lite.sqlite")
    with pytest.raises(LookalikeError, match="can't reach Milvus at http://127.0.0.1:1"):
        MilvusStore("http://127.0.0.1:1", timeout=5)  # loopback port 1: refused at once
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[milvus\]'"):
        MilvusStore(tmp_path / "x.db")


def test_close_stops_the_lite_server(tmp_path):
    path = tmp_path / "closing.db"

    def lite_processes() -> list[str]:
        ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        return [line for line in ps.splitlines() if "milvus_lite" in line and str(path) in line]

    a, b = MilvusStore(path), MilvusStore(path)  # two stores share one Lite server
    a.create("c", 2, [])
    assert len(lite_processes()) == 1
    a.close()
    b.open("c")
    assert b.count() == 0 and len(lite_processes()) == 1
    b.close()
    assert lite_processes() == []
