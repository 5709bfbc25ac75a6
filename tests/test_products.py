"""Products, not photos: several photos per product (columns, separators, the long layout), a
product scored by its best photo on every back end, variants, and live changes of a photo list.

On ../shared/datasets/store-demos: 25 real products with 1 to 7 photos each (97 photos), in the
wide layout (``catalog.csv``, ``images`` ``|``-separated) and the long one (``views.csv``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lookalike import IndexWriter, Recommender, build
from lookalike.folder.rows import photo_key
from lookalike.reading.catalog import load_catalog
from lookalike.search.backends import BACKENDS
from lookalike.writing.writer import Upload

NEEDS = {"hnsw": ("faiss",), "milvus": ("pymilvus", "milvus_lite")}


@pytest.fixture(scope="module")
def table(store_dir) -> pd.DataFrame:
    return pd.read_csv(store_dir / "catalog.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def photos_of(table) -> dict[str, list[str]]:
    return {pid: cell.split("|") for pid, cell in zip(table["product_id"], table["images"])}


def _build(src, out, store_dir, encoder, **kw):
    return build(src, out, images=store_dir / "images", id_column="product_id", encoder=encoder,
                 show_progress_bar=False, **kw)


@pytest.fixture(scope="module")
def wide(tmp_path_factory, store_dir, encoder) -> Path:
    out = tmp_path_factory.mktemp("wide") / "index"
    _build(store_dir / "catalog.csv", out, store_dir, encoder, image_column="images")
    return out


@pytest.fixture(scope="module")
def rec(wide) -> Recommender:
    return Recommender.load(wide)


# -- reading ---------------------------------------------------------------------------
def test_the_wide_and_the_long_layout_give_the_same_products_and_photos(store_dir, photos_of):
    wide = load_catalog(store_dir / "catalog.csv", images=store_dir / "images", id_column="product_id",
                        image_column="images")
    long = load_catalog(store_dir / "views.csv", images=store_dir / "images", id_column="product_id",
                        image_column="image")
    for cat in (wide, long):
        assert not cat.problems
        assert len(cat.products) == 25 and len(cat.image_paths) == 97
        got: dict[str, list[str]] = {}
        for pid, ref in zip(cat.ids, cat.refs):
            got.setdefault(pid, []).append(ref)
        assert got == photos_of
    assert [p.name for p in wide.image_paths] == [p.name for p in long.image_paths]
    assert long.rows[:3] == [1, 2, 3]  # each photo is reported by the row that named it


def test_several_image_columns_and_another_separator(store_dir, table, photos_of):
    both = load_catalog(table, images=store_dir / "images", id_column="product_id", image_column=["image", "images"])
    assert len(both.image_paths) == 97  # the main photo, named twice, is one photo
    commas = table.assign(images=table["images"].str.replace("|", ",", regex=False))
    cat = load_catalog(commas, images=store_dir / "images", id_column="product_id", image_column="images",
                       image_separator=",")
    assert dict(zip(*np.unique(cat.ids, return_counts=True))) == {p: len(v) for p, v in photos_of.items()}


def test_a_bad_photo_is_reported_and_its_product_indexed_with_the_others(tmp_path, store_dir, table, encoder):
    t = table.copy()
    first = t["images"].iat[0].split("|")
    t.loc[0, "images"] = "|".join([first[0], "gone.jpg", *first[1:]])
    t.loc[1, "images"] = "nothing.jpg|nowhere.jpg"
    extra = pd.DataFrame([{**t.iloc[2].to_dict(), "name": "another name", "images": first[0]}])  # same id, other cells
    report = _build(pd.concat([t, extra], ignore_index=True), tmp_path / "ix", store_dir, encoder, image_column="images")
    assert report.indexed == 24 and report.photos == 97 - 3  # oc-29 lost all 3; oc-28 kept its 3
    reasons = {(p.row, p.image): p.reason for p in report.problems}
    assert reasons[(1, "gone.jpg")].startswith("photo file not found")
    assert reasons[(2, "nothing.jpg")].startswith("photo file not found")
    assert reasons[(26, first[0])].startswith("duplicate id (first on row 3) with other cells: name is ")
    assert [p.image for p in report.photo_problems] == ["gone.jpg"]  # the others are rows not indexed
    saved = pd.read_csv(report.report_path, dtype=str, keep_default_na=False)
    assert saved.loc[saved["image"] == "gone.jpg", "status"].tolist() == ["photo skipped"]
    assert saved.loc[saved["image"] == "nowhere.jpg", "status"].tolist() == ["skipped"]
    assert "nothing.jpg" not in Recommender.load(tmp_path / "ix").photos(t["product_id"].iat[0])


# -- searching -------------------------------------------------------------------------
def _best_pairs(rec: Recommender, pid: str, w: float) -> dict[str, float]:
    """Each other product's score by brute force: its best photo against the query's best."""
    q = rec._product_queries([rec.rows(pid)], w)
    rows = np.array(rec.vectors), np.array(rec.colour)
    from lookalike.folder.rows import searchable

    scores = q @ searchable(*rows, rec.metric).T
    best: dict[str, float] = {}
    for r, pid_r in enumerate(rec.ids):
        best[pid_r] = max(best.get(pid_r, -np.inf), float(scores[:, r].max()))
    best.pop(pid)
    return best


def test_a_product_scores_by_its_best_photo_pair_and_appears_once(rec):
    assert len(rec) == 25 and rec.n_rows == 97
    for pid in rec.products[::4]:
        got = rec.similar(pid, k=24)
        assert len(set(got.ids)) == len(got.ids) == 24
        want = _best_pairs(rec, pid, rec.colour_weight)
        assert np.allclose([r.score for r in got], [want[i] for i in got.ids], atol=1e-5)
        assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)
        assert got.ids[0] == max(want, key=lambda p: want[p])
        for r in got:
            assert r.matched_photo in rec.photos(r.id)


def test_any_photo_of_a_product_finds_it_and_says_which_matched(rec, store_dir, photos_of):
    for pid, photos in list(photos_of.items())[::3]:
        last = photos[-1]
        got = rec.similar(image=store_dir / "images" / last, k=3)
        assert got.ids[0] == pid
        assert got.items[0].matched_photo == last
        assert got.to_dict()["results"][0]["matched_photo"] == last


def test_export_gives_what_similar_gives_for_each_product(rec):
    table = rec.export(k=5)
    for pid in rec.products[::5]:
        assert table.loc[table["query_id"] == pid, "id"].tolist() == rec.similar(pid, k=5).ids


def test_duplicate_listings_are_found_through_any_photo(tmp_path, store_dir, table, encoder):
    """Two listings sharing a second photo are duplicates: neither is shown for the other."""
    t = table.copy()
    i, j = [n for n, cell in enumerate(t["images"]) if "|" in cell][2:4]
    a, b = t["product_id"].iat[i], t["product_id"].iat[j]
    t.loc[j, "images"] = t["images"].iat[j] + "|" + t["images"].iat[i].split("|")[1]
    _build(t, tmp_path / "ix", store_dir, encoder, image_column="images")
    rec = Recommender.load(tmp_path / "ix")
    assert sorted([a, b]) in [sorted(g) for g in rec.duplicates(near=False)]
    assert b not in rec.similar(a, k=24).ids and a not in rec.similar(b, k=24).ids


@pytest.fixture(scope="module", params=BACKENDS)
def backend_index(request, tmp_path_factory, store_dir, encoder) -> tuple[str, Path]:
    for module in NEEDS.get(request.param, ()):
        pytest.importorskip(module, reason=f"the {request.param} back end needs {module}")
    folder = tmp_path_factory.mktemp(f"photos-{request.param}")
    kw = {"milvus_uri": str(folder / "m.db")} if request.param == "milvus" else {}
    t = pd.read_csv(store_dir / "catalog.csv", dtype=str, keep_default_na=False)
    t["family"] = [p if c != "Cameras" else "cameras" for p, c in zip(t["product_id"], t["category"])]
    _build(t, folder / "index", store_dir, encoder, image_column="images", backend=request.param,
           parent_column="family", **kw)
    return request.param, folder / "index"


def test_every_back_end_groups_as_the_exact_oracle(backend_index, store_dir, photos_of):
    name, path = backend_index
    rec, oracle = Recommender.load(path), Recommender.load(path, backend="exact")
    assert rec.index.name == name
    for kw in ({}, {"where": "price<150"}, {"where": {"platform": "prestashop"}}, {"same": "platform"},
               {"siblings": True}, {"collapse_parent": True}):
        for pid in rec.products[::6]:
            got, want = rec.similar(pid, k=8, **kw), oracle.similar(pid, k=8, **kw)
            assert got.ids == want.ids, (kw, pid)
            assert np.allclose([r.score for r in got], [r.score for r in want], atol=1e-5)
            assert [r.matched_photo for r in got] == [r.matched_photo for r in want]
    ids = rec.products[1:4]
    assert rec.similar(ids, k=6).ids == oracle.similar(ids, k=6).ids
    photo = store_dir / "images" / photos_of[rec.products[7]][1]
    assert rec.similar(image=photo, k=6).ids == oracle.similar(image=photo, k=6).ids
    assert rec.export(k=4).equals(oracle.export(k=4))


def test_siblings_are_left_out_unless_asked_and_collapse_keeps_one_per_parent(backend_index, table):
    _, path = backend_index
    rec = Recommender.load(path)
    cameras = table.loc[table["category"] == "Cameras", "product_id"].tolist()
    assert len(cameras) >= 2
    plain = rec.similar(cameras[0], k=24)
    assert not set(cameras) & set(plain.ids)
    assert set(cameras[1:]) <= set(rec.similar(cameras[0], k=24, siblings=True).ids)
    other = next(p for p in rec.products if p not in cameras)
    collapsed = rec.similar(other, k=24, collapse_parent=True).ids
    assert len(set(cameras) & set(collapsed)) == 1
    assert len(set(cameras) & set(rec.similar(other, k=24).ids)) == len(cameras)
    assert rec.export(k=24, ids=[cameras[0]])["id"].tolist() == plain.ids  # export leaves siblings out alike
    assert rec.export(k=24, ids=cameras[:1], siblings=True)["id"].tolist() == rec.similar(
        cameras[0], k=24, siblings=True).ids
    assert rec.export(k=24, ids=[other], collapse_parent=True)["id"].tolist() == collapsed


# -- live changes ----------------------------------------------------------------------
def test_a_changed_photo_list_embeds_only_new_photos_and_a_removed_one_stops_matching(
        wide, tmp_path, store_dir, table, encoder, monkeypatch):
    path = tmp_path / "live"
    shutil.copytree(wide, path)
    pid = table["product_id"].iat[3]
    old = table["images"].iat[3].split("|")
    donor = table["images"].iat[20].split("|")[-1]  # a photo of another product: bytes the index holds
    images = tmp_path / "images"
    for ref in (old[0], donor):
        (images / ref).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(store_dir / "images" / ref, images / ref)
    fresh = store_dir / "images" / table["images"].iat[24].split("|")[0]
    copy = images / "new-photo.jpg"
    copy.write_bytes(fresh.read_bytes() + b"\0")  # new bytes: embedded
    import lookalike.writing.writer as writer

    embedded: list[int] = []
    real = writer.encode_rows

    def counting(cat, positions, *a, **kw):
        embedded.extend(positions)
        return real(cat, positions, *a, **kw)

    monkeypatch.setattr(writer, "encode_rows", counting)
    row = {**table.iloc[3].to_dict(), "images": "|".join([old[0], donor, copy.name])}
    report = IndexWriter.open(path, encoder=encoder).upsert([row], images=images)
    assert [(c.id, c.status, c.reason) for c in report.changes] == [(pid, "re-embedded", "")]
    assert len(embedded) == 1  # the new bytes only: the kept photo and the donor's are reused
    rec = Recommender.load(path)
    assert rec.photos(pid) == [old[0], donor, copy.name]
    removed = store_dir / "images" / old[1]
    hits = rec.similar(image=removed, k=25)
    assert (pid, old[1]) not in [(r.id, r.matched_photo) for r in hits]
    again = IndexWriter.open(path, encoder=encoder).upsert([row], images=images)
    assert [c.status for c in again.changes] == ["unchanged"] and len(embedded) == 1
    meta_only = IndexWriter.open(path, encoder=encoder).upsert([{"product_id": pid, "name": "renamed"}])
    assert [c.status for c in meta_only.changes] == ["metadata"]
    after = Recommender.load(path)
    assert after.photos(pid) == rec.photos(pid) and after.product(pid)["name"] == "renamed"


def test_the_long_layout_in_a_change_and_uploads_of_several_photos(wide, tmp_path, store_dir, table, encoder):
    path = tmp_path / "live"
    shutil.copytree(wide, path)
    pid = table["product_id"].iat[0]
    photos = table["images"].iat[0].split("|")
    rows = [{**table.iloc[0].to_dict(), "images": photos[-1]}, {"product_id": pid, "images": photos[0]}]
    report = IndexWriter.open(path, encoder=encoder).upsert(rows, images=store_dir / "images")
    assert [(c.row, c.status) for c in report.changes] == [(1, "re-embedded")]
    assert Recommender.load(path).photos(pid) == [photos[-1], photos[0]]
    data = [(store_dir / "images" / p).read_bytes() for p in table["images"].iat[1].split("|")[:2]]
    up = IndexWriter.open(path, encoder=encoder).upsert_uploads([Upload("new-1", {"name": "two photos"}, data[0],
                                                                        photos=[data[1]])])
    assert [c.status for c in up.changes] == ["added"]
    rec = Recommender.load(path)
    assert len(rec.photos("new-1")) == 2 and up.versions["new-1"] == rec.etag("new-1")
    gone = IndexWriter.open(path, encoder=encoder).remove(["new-1"])
    assert [c.status for c in gone.changes] == ["removed"]
    assert "new-1" not in Recommender.load(path)


def test_milvus_holds_a_key_per_photo_and_drops_the_ones_a_product_lost(tmp_path, store_dir, table, encoder):
    pytest.importorskip("milvus_lite")
    path = tmp_path / "index"
    _build(store_dir / "catalog.csv", path, store_dir, encoder, image_column="images", backend="milvus",
           milvus_uri=str(tmp_path / "m.db"))
    rec = Recommender.load(path)
    assert rec.index.store.count() == 97
    pid = table["product_id"].iat[3]
    photos = table["images"].iat[3].split("|")
    IndexWriter.open(path, encoder=encoder).upsert([{**table.iloc[3].to_dict(), "images": photos[0]}],
                                                   images=store_dir / "images")
    rec = Recommender.load(path)
    assert rec.index.store.count() == 97 - (len(photos) - 1)
    assert photo_key(pid, 1) not in {k for k, _ in rec.index.store.search(
        np.zeros((1, rec.index.store.dim), np.float32) + 0.01, 100)[0]}


# -- the API and the page --------------------------------------------------------------
def test_the_api_lists_photos_serves_each_and_says_which_matched(wide, rec):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    pid = rec.products[3]
    with TestClient(create_app(wide)) as c:
        body = c.get(f"/products/{pid}").json()
        assert body["photos"] == rec.photos(pid) and len(body["photos"]) > 1
        for n, path in enumerate(rec.photo_paths(pid)):
            assert c.get(f"/products/{pid}/image", params={"photo": n}).content == path.read_bytes()
        missing = c.get(f"/products/{pid}/image", params={"photo": len(body["photos"])})
        assert missing.status_code == 404 and "no photo" in missing.json()["detail"]
        found = c.get(f"/products/{pid}/similar", params={"k": 4}).json()["results"]
        assert [r["id"] for r in found] == rec.similar(pid, k=4).ids
        assert all(r["matched_photo"] in rec.photos(r["id"]) for r in found)
        posted = c.post("/similar", json={"ids": [pid], "k": 4, "collapse_parent": True}).json()["results"]
        assert [r["id"] for r in posted] == rec.similar(pid, k=4, collapse_parent=True).ids


def test_the_page_shows_the_gallery_and_the_photo_that_matched(wide, rec, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    import lookalike

    monkeypatch.setenv("LOOKALIKE_INDEX", str(wide))
    at = AppTest.from_file(str(Path(lookalike.__file__).with_name("app.py")), default_timeout=90)
    at.run()
    assert not at.exception, at.exception
    pid = at.session_state["query_id"]
    photos = len(rec.photos(pid))
    shown = rec.similar(pid, k=5)
    assert len(at.get("image")) == min(photos, 7) + len(shown)  # the gallery, then the results
    assert f"{photos} photos" in [c.value for c in at.caption]
    cards = " ".join(m.value for m in at.markdown if 'class="lk-line"' in m.value)
    for r in shown:
        refs = rec.photos(r.id)
        said = f" · photo {refs.index(r.matched_photo) + 1}/{len(refs)}" if len(refs) > 1 else ""
        assert f">#{r.rank} · id {r.id} · score {r.score:.3f}{said}<" in cards


def test_a_put_with_several_photos_makes_them_the_products_photos(wide, tmp_path, store_dir, table, encoder):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    path = tmp_path / "index"
    shutil.copytree(wide, path)
    photos = [store_dir / "images" / p for p in table["images"].iat[5].split("|")[:1] + table["images"].iat[6].split("|")[:2]]
    auth = {"Authorization": "Bearer s3cret-write-token-0123456789"}
    with TestClient(create_app(Recommender.load(path, encoder=encoder), write_token="s3cret-write-token-0123456789")) as c:
        files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in photos]
        res = c.put("/products/new-3", headers=auth, files=files, data={"name": "three photos"})
        assert res.status_code == 201, res.text
        body = c.get("/products/new-3").json()
        assert len(body["photos"]) == 3 and body["name"] == "three photos"
        for n, p in enumerate(photos):
            assert c.get("/products/new-3/image", params={"photo": n}).content == p.read_bytes()
        res = c.put("/products/new-3", headers=auth, files=files[:1])
        assert res.status_code == 200 and len(c.get("/products/new-3").json()["photos"]) == 1


def test_evaluate_counts_products_and_tune_holds_a_products_photos_out_together(rec):
    from lookalike.analysis.evaluate import evaluate
    from lookalike.analysis.tune import _product_groups, split_holdout

    out = evaluate(rec, ["category"], k=3, show_progress_bar=False)
    assert out["queries"] == 25
    groups = _product_groups(rec.ids, rec.exact_groups)  # singletons numbered apart, as tune does
    held = split_holdout(rec.ids, groups, 0.3)
    for pid in rec.products:
        assert len(set(held[rec.rows(pid)])) == 1  # all of a product's photos on one side
    assert len(np.unique(groups)) == 25 - sum(len(g) - 1 for g in rec.duplicates(near=False))


def test_a_change_reports_a_repeated_row_that_adds_no_photo(wide, tmp_path, store_dir, table, encoder):
    """As a build does: every row of a change is applied or reported, a repeat of a product's id
    that names no photo it lacks included."""
    path = tmp_path / "live"
    shutil.copytree(wide, path)
    row = {**table.iloc[0].to_dict(), "name": "renamed"}
    report = IndexWriter.open(path, encoder=encoder).upsert([row, {"product_id": row["product_id"],
                                                                   "images": row["images"].split("|")[0]}],
                                                            images=store_dir / "images")
    assert [(c.row, c.status) for c in report.changes] == [(1, "metadata"), (2, "skipped")]
    assert report.changes[1].reason == "duplicate id (first on row 1): the row names no photo its product lacks"


STEERING = ({"boost": "price:*0.002"}, {"boost": ["platform=prestashop:+0.2", "price<50:*0.5"]},
            {"max_per": "category=1"}, {"diversity": 0.5}, {"boost": "price:+0.001", "max_per": "platform=2",
                                                            "where": "price<500"})


def test_every_back_end_steers_as_the_exact_oracle(backend_index, store_dir):
    """Boosts, caps, diversity and rules act after the search, the same on every back end."""
    name, path = backend_index
    rec, oracle = Recommender.load(path), Recommender.load(path, backend="exact")
    for kw in STEERING:
        for pid in rec.products[::5]:
            got, want = rec.similar(pid, k=6, explain=True, **kw), oracle.similar(pid, k=6, explain=True, **kw)
            assert got.ids == want.ids, (name, kw, pid)
            assert np.allclose([r.score for r in got], [r.score for r in want], atol=1e-5)
            for r in got:  # the parts add up to the score
                assert sum(r.explain.values()) == pytest.approx(r.score, abs=1e-5)
    assert rec.export(k=4, boost="price:*0.002", max_per="platform=3").equals(
        oracle.export(k=4, boost="price:*0.002", max_per="platform=3"))
