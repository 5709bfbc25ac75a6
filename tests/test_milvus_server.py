"""A real Milvus standalone server (PyPI ``milvus`` 2.3.5) with an HNSW index, against the exact oracle.

Deselected by default. The server listens on all interfaces, so this module runs only in a
private network namespace (skipped elsewhere)::

    scripts/run-in-netns.sh .venv/bin/python -m pytest -m milvus_server tests/test_milvus_server.py
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.milvus_server

pytest.importorskip("pymilvus", reason="pymilvus is not installed: pip install 'lookalike[milvus]'")
pytest.importorskip("milvus", reason="the Milvus standalone is not installed: pip install 'lookalike[milvus-server]'")

from milvus_server import in_private_netns, rss_mib, running_server  # noqa: E402
from test_milvus import NASTY, load_demo, queries, upsert_demo  # noqa: E402

from lookalike.search.backends import ExactIndex, Filter  # noqa: E402
from lookalike.search.backends.milvus import IndexSpec, MilvusStore, filter_expression  # noqa: E402

K = 10
HNSW = IndexSpec("HNSW", {"M": 16, "efConstruction": 200})


@pytest.fixture(scope="module")
def demo(demo_index):
    return load_demo(demo_index)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not in_private_netns():
        pytest.skip("Milvus standalone listens on all interfaces: run this module in a private network "
                    "namespace, scripts/run-in-netns.sh .venv/bin/python -m pytest -m milvus_server ...")
    with running_server(tmp_path_factory.mktemp("milvus-server")) as started:
        yield started  # stopping checks that the process is gone and its port closed


@pytest.fixture(scope="module")
def store(server, demo):
    with MilvusStore(server.uri) as s:
        s.create("demo", demo["data"].shape[1], demo["columns"], index=HNSW, drop=True)
        upsert_demo(s, demo)
        yield s


def recall(demo, got, q, allowed, *, data=None, row=None) -> float:
    """Share of returned ids that belong in the exact top k (ties at the k-th score count)."""
    data = demo["data"] if data is None else data
    row = demo["row"] if row is None else row
    scores, _ = ExactIndex(data).search(q, K, filter=Filter.of_mask(allowed))
    hits = total = 0
    for found, qv, s_row in zip(got, q, scores, strict=True):
        want = s_row[np.isfinite(s_row)]
        assert len(found) == len(want)
        for pid, s in found:
            true = float(data[row[pid]] @ qv)
            assert abs(true - s) <= 1e-5
            hits += true >= want[-1] - 1e-5
        total += len(want)
    return hits / total


def test_server_is_up(server, store):
    assert server.uri.startswith("http://127.0.0.1:")
    assert rss_mib(server.pid) < 1024
    assert store.count() == 99
    reopened = MilvusStore(server.uri)
    reopened.open("demo")
    assert reopened.index == IndexSpec("HNSW", {"M": "16", "efConstruction": "200"})  # as Milvus reports them
    assert reopened.columns == store.columns
    reopened.close()


def test_hnsw_recall_is_exact_with_and_without_filters(store, demo):
    q = queries(demo, np.arange(99), 0.15)
    groups = demo["exact_groups"]
    assert recall(demo, store.search(q, K), q, None) == 1.0
    for gender in ("Women", "Boys"):
        allowed = demo["meta"]["Gender"].eq(gender).to_numpy()
        got = store.search(q, K, expr=filter_expression({"Gender": [gender]}, fields=store.fields))
        assert recall(demo, got, q, allowed) == 1.0
    # the query's own duplicate group excluded, inside one gender
    allowed = (groups[None, :] != groups[:, None]) & demo["meta"]["Gender"].eq("Men").to_numpy()[None, :]
    rows = np.arange(0, 99, 5)  # one search call each: ~200 ms with Strong consistency
    got = [
        store.search(q[r : r + 1], K, expr=filter_expression({"Gender": ["Men"]}, exclude={"dup_exact": [groups[r]]},
                                                             fields=store.fields))[0]
        for r in rows
    ]
    assert recall(demo, got, q[rows], allowed[rows]) == 1.0


@pytest.fixture(scope="module")
def jittered(server, demo):
    """Each demo product 30 times, jittered: above Milvus' 1,024-row threshold for building an
    index, and flushed until the index is served, so searches walk a real HNSW graph (the 99
    demo rows alone are searched by brute force)."""
    rng = np.random.default_rng(0)
    data = np.concatenate([demo["data"] + rng.normal(0, 0.01, demo["data"].shape) for _ in range(30)])
    data = data.astype(np.float32)
    keys = [f"{pid}/{j}" for j in range(30) for pid in demo["ids"]]
    gender = np.tile(demo["meta"]["Gender"].astype(str).to_numpy(), 30)
    with MilvusStore(server.uri) as s:
        s.create("jittered", data.shape[1], ["Gender"], index=HNSW, drop=True)
        s.upsert(keys, data, {"Gender": gender.tolist()})
        s.flush()  # ~15 s: until the sealed, indexed segment is served
        yield s, data, {k: i for i, k in enumerate(keys)}, gender
        s.drop()


def test_hnsw_recall_over_3000_rows(jittered, demo):
    s, data, row, _ = jittered
    q = queries(demo, np.arange(99), 0.15)
    assert recall(demo, s.search(q, K), q, None, data=data, row=row) >= 0.99  # 0.997 measured


@pytest.mark.xfail(strict=True, reason="Milvus 2.3.5 (knowhere 2.2.3): a filtered HNSW search returns no row at all "
                                       "for ~1 query in 5 here, whatever ef; FLAT is exact (docs/milvus-notes.md)")
def test_filtered_hnsw_over_3000_rows(jittered, demo):
    s, data, row, gender = jittered
    q = queries(demo, np.arange(99), 0.15)
    got = s.search(q, K, expr=filter_expression({"Gender": ["Women"]}, fields=s.fields), ef=256)
    assert recall(demo, got, q, gender == "Women", data=data, row=row) >= 0.99


def test_values_that_look_like_expressions_on_the_server(server):
    """The server reads string escapes unlike Lite; the stored encoding must not care."""
    with MilvusStore(server.uri) as s:
        s.create("nasty", 2, ["Title"], index=HNSW, drop=True)
        keys = [f"id {v}" for v in NASTY]
        s.upsert(keys, np.ones((len(keys), 2)), {"Title": NASTY})
        for key, value in zip(keys, NASTY):
            got = s.search(np.ones(2), 20, expr=filter_expression({"Title": [value]}, fields=s.fields))[0]
            assert [p for p, _ in got] == [key]
        s.delete(keys[:3])
        assert s.count() == len(keys) - 3
        s.drop()


def test_build_similar_filters_photo_and_changes_through_the_server(server, demo_rec, encoder, tmp_path):
    """The whole path on a real server: build --backend milvus, similar with same/where, a photo
    query, then live changes; every answer equals the exact oracle's."""
    import pandas as pd

    from lookalike import Index, Recommender, build, demo_catalog

    images = demo_catalog().parent / "images"
    build(demo_catalog(), tmp_path / "index", encoder=encoder, backend="milvus", milvus_uri=server.uri,
          collection="demo", show_progress_bar=False)
    rec = Recommender.load(tmp_path / "index")
    assert rec.index.name == "milvus" and rec.manifest["index"]["uri"] == server.uri
    for pid in demo_rec.ids[::3]:
        for kw in ({"same": "Gender"}, {"where": {"Colour": ["Black", "White"]}}, {}):
            got, want = rec.similar(pid, k=5, **kw), demo_rec.similar(pid, k=5, **kw)
            assert got.ids == want.ids, (pid, kw)
            assert np.allclose([r.score for r in got], [r.score for r in want], atol=1e-6)
    photo = images / "13683.jpg"
    assert rec.similar(image=photo, k=5, where={"Gender": "Men"}).ids == demo_rec.similar(
        image=photo, k=5, where={"Gender": "Men"}).ids
    table = pd.read_csv(demo_catalog(), dtype=str, keep_default_na=False)
    ix = Index.open(tmp_path / "index", encoder=encoder)
    ix.remove(table["ProductId"].iloc[:3])
    ix.upsert([{**table.iloc[5].to_dict(), "ProductId": "new-1", "Image": table["Image"].iat[0]}], images=images)
    rec = Recommender.load(tmp_path / "index")
    assert rec.similar(image=images / table["Image"].iat[0], k=1).ids == ["new-1"]
    exact = Recommender.load(tmp_path / "index", backend="exact")
    for pid in rec.ids[::5]:
        assert rec.similar(pid, k=5, same="Gender").ids == exact.similar(pid, k=5, same="Gender").ids


def test_the_back_end_conformance_suite_through_the_server(server, encoder, tmp_path):
    """tests/test_backends.py's checks, on a build whose vectors live in the real server, as
    built and after the same live changes."""
    from test_backends import apply_live_changes, run_checks

    from lookalike import build, demo_catalog

    build(demo_catalog(), tmp_path / "index", encoder=encoder, backend="milvus", milvus_uri=server.uri,
          collection="conformance", show_progress_bar=False)
    run_checks(tmp_path / "index")
    apply_live_changes(tmp_path / "index", encoder)
    run_checks(tmp_path / "index")


def test_upsert_and_delete_then_stop(store, demo):
    q = queries(demo, [7], 0.15)
    pid = demo["ids"][60]
    cells = {c: ["x"] for c in demo["columns"]}
    store.upsert([pid], demo["data"][7:8], cells)
    assert {p for p, _ in store.search(q, 2)[0]} == {pid, demo["ids"][7]}
    store.delete([pid, demo["ids"][7]])
    assert store.count() == 97
    assert not {pid, demo["ids"][7]} & {p for p, _ in store.search(q, 97)[0]}
    store.drop()
