"""Recommender: by id, several ids, or a photo; filters; duplicates; export == similar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layout import edit_record

from lookalike import (
    ImageError,
    InvalidQueryError,
    Recommendation,
    Recommender,
    Results,
    UnknownProductError,
    build,
    demo_catalog,
)
from lookalike.search.recommender import MAX_IDS, MAX_K

HIDDEN = {"_image", "_row", "_sha1", "_dhash", "_dup_exact", "_dup_near"}


@pytest.fixture(scope="module")
def full_path(fashion_hnsw_index) -> Path:
    return fashion_hnsw_index


@pytest.fixture(scope="module")
def full_rec(full_path) -> Recommender:
    """The oracle back end: exact search (the HNSW one is checked against it below)."""
    return Recommender.load(full_path, backend="exact")


def _check_results(rec: Recommender, res: Results, k: int) -> None:
    assert isinstance(res, Results) and len(res) <= k
    assert [r.rank for r in res] == list(range(1, len(res) + 1))
    scores = [r.score for r in res]
    assert scores == sorted(scores, reverse=True)
    assert len(set(res.ids)) == len(res)
    for r in res:
        assert isinstance(r, Recommendation) and isinstance(r.id, str) and r.id in rec
        assert r.metadata == rec.product(r.id)
        assert not HIDDEN & set(r.metadata)


# -- results ----------------------------------------------------------------------------------
def test_results_carry_id_rank_score_metadata(demo_rec):
    pid = demo_rec.ids[0]
    res = demo_rec.similar(pid, k=5)
    assert len(res) == 5
    _check_results(demo_rec, res, 5)
    assert pid not in res.ids
    first = res.items[0]
    assert {"Gender", "ProductType", "Colour", "ProductTitle", "ProductId"} <= set(first.metadata)
    assert -1.0 <= first.score <= 1.0 + 1e-5
    d = res.to_dict()
    assert d["query"] == {"ids": [pid], "k": 5, "same": [], "where": {}}
    assert d["results"][0]["id"] == first.id and d["results"][0]["rank"] == 1
    assert d["results"][0]["Gender"] == first.metadata["Gender"]


def test_scores_are_cosine_of_stored_vectors(demo_rec):
    pid = demo_rec.ids[5]
    q = demo_rec.vectors[demo_rec.row(pid)]
    for r in demo_rec.similar(pid, k=8, colour_weight=0.0):
        assert abs(r.score - float(q @ demo_rec.vectors[demo_rec.row(r.id)])) < 1e-5


def test_scores_blend_shape_and_colour(demo_rec):
    """score = (1 - w) * cos(shape) + w * cos(colour), the index's default w included."""
    pid = demo_rec.ids[5]
    i = demo_rec.row(pid)
    c = demo_rec.colour / np.linalg.norm(demo_rec.colour, axis=1, keepdims=True)
    for w in (None, 0.5):
        weight = demo_rec.colour_weight if w is None else w
        for r in demo_rec.similar(pid, k=8, colour_weight=w):
            j = demo_rec.row(r.id)
            expected = (1 - weight) * float(demo_rec.vectors[i] @ demo_rec.vectors[j]) + weight * float(c[i] @ c[j])
            assert abs(r.score - expected) < 1e-5


def test_product_accessors(demo_rec):
    pid = demo_rec.ids[3]
    assert pid in demo_rec and "no-such-id" not in demo_rec and len(demo_rec) == 99
    assert demo_rec.product(pid)["ProductId"] == pid
    assert demo_rec.image_path(pid).is_file()
    assert demo_rec.similar(f"  {pid} ", k=1).query["ids"] == [pid]  # ids are stripped


# -- the query and its duplicates are never returned -------------------------------------------
def test_never_returns_query_nor_its_identical_photos(full_rec):
    assert ["21838", "23129"] in full_rec.duplicates(near=False)
    for pid, twin in (("21838", "23129"), ("23129", "21838")):
        for collapse in (True, False):
            res = full_rec.similar(pid, k=50, collapse_duplicates=collapse)
            assert len(res) == 50
            assert pid not in res.ids and twin not in res.ids
            _check_results(full_rec, res, 50)


def test_no_query_gets_a_photo_identical_to_its_own(full_rec):
    table = full_rec.export(k=10, collapse_duplicates=False)
    exact = dict(zip(full_rec.ids, full_rec._exact_group, strict=True))
    assert (table["query_id"] != table["id"]).all()
    assert (table["query_id"].map(exact) != table["id"].map(exact)).all()


def test_colour_variants_are_not_near_duplicates(full_rec):
    """A top listed twice in red (31174, 34164) and twice in magenta (31175, 34166): same
    outline, same hash, nearly the same embedding, but a shopper must see both colours."""
    near = dict(zip(full_rec.ids, full_rec.metadata["_dup_near"], strict=True))
    assert near["31174"] == near["34164"] >= 0 and near["31175"] == near["34166"] >= 0
    assert near["31174"] != near["31175"]
    # subtler variants: copper / purple sandals, brown / maroon flats (colour cosine 0.95, 0.98)
    assert near["47530"] != near["47531"] or near["47530"] < 0
    assert near["47537"] != near["47538"] or near["47537"] < 0
    res = full_rec.similar("31174", k=5)
    assert "34164" in res.ids and len({"31175", "34166"} & set(res.ids)) == 1


def test_find_duplicate_groups_colour_test():
    from lookalike.writing.duplicates import find_duplicate_groups

    unit = np.ones((4, 3), np.float32) / np.sqrt(3)  # same embedding, same hash, other bytes
    red, magenta = np.array([1.0, 0.0, 0.0]), np.array([0.6, 0.8, 0.0])  # colour cosine 0.6
    colour = np.stack([red, red, magenta, magenta]).astype(np.float32)
    exact, near = find_duplicate_groups(["a", "b", "c", "d"], np.full(4, 7, np.uint64), unit, colour)
    assert list(exact) == [-1, -1, -1, -1]
    assert near[0] == near[1] >= 0 and near[2] == near[3] >= 0 and near[2] != near[0]
    _, without = find_duplicate_groups(["a", "b", "c", "d"], np.full(4, 7, np.uint64), unit)
    assert len(set(without)) == 1 and without[0] >= 0


def test_collapse_keeps_one_product_per_duplicate_group(full_rec):
    near = dict(zip(full_rec.ids, full_rec.metadata["_dup_near"], strict=True))

    def repeats(table: pd.DataFrame) -> int:
        grouped = table.assign(g=table["id"].map(near))
        grouped = grouped[grouped["g"] >= 0]
        return int(grouped.duplicated(["query_id", "g"]).sum())

    collapsed = full_rec.export(k=10)
    assert repeats(collapsed) == 0
    assert collapsed.groupby("query_id").size().eq(10).all()
    kept = full_rec.export(k=10, collapse_duplicates=False)
    assert repeats(kept) > 0  # without collapsing, groups do show up more than once


# -- filters ------------------------------------------------------------------------------------
def test_same_gender(full_rec):
    for pid in ("21838", full_rec.ids[0], full_rec.ids[-1]):
        gender = full_rec.product(pid)["Gender"]
        res = full_rec.similar(pid, k=10, same="Gender")
        assert len(res) == 10 and all(r.metadata["Gender"] == gender for r in res)
    pid = full_rec.ids[100]
    p = full_rec.product(pid)
    res = full_rec.similar(pid, k=10, same=["Gender", "Category"])
    assert all((r.metadata["Gender"], r.metadata["Category"]) == (p["Gender"], p["Category"]) for r in res)


def test_where_filters(demo_rec):
    pid = demo_rec.ids[0]
    res = demo_rec.similar(pid, k=10, where={"Gender": "Women"})
    assert len(res) == 10 and {r.metadata["Gender"] for r in res} == {"Women"}
    res = demo_rec.similar(pid, k=30, where={"Gender": ["Boys", "Girls"]})
    assert {r.metadata["Gender"] for r in res} == {"Boys", "Girls"}
    res = demo_rec.similar(pid, k=10, where={"Gender": ["Men"], "Category": "Footwear"})
    assert res.ids and all((r.metadata["Gender"], r.metadata["Category"]) == ("Men", "Footwear") for r in res)
    # a filter that leaves fewer than k products returns what there is
    wanted = demo_rec.metadata[demo_rec.metadata["Gender"] == "Men"]
    few = wanted[wanted["Category"] == "Footwear"]["ProductId"].tolist()
    res = demo_rec.similar(pid, k=50, where={"Gender": ["Men"], "Category": "Footwear"})
    assert sorted(res.ids) == sorted(set(few) - {pid})
    assert demo_rec.similar(pid, k=5, where={"Gender": "Martians"}).ids == []


def test_invalid_queries(demo_rec):
    pid = demo_rec.ids[0]
    bad = [
        dict(ids=pid, where={"Colour_": "Red"}),
        dict(ids=pid, same="Size"),
        dict(ids=pid, k=0),
        dict(ids=pid, k=-3),
        dict(ids=pid, k=MAX_K + 1),
        dict(ids=pid, k=True),
        dict(ids=pid, k=2.5),
        dict(ids=pid, colour_weight=1.5),
        dict(ids=[]),
        dict(ids=[pid] * (MAX_IDS + 1)),
        dict(),
        dict(ids=pid, image=demo_rec.image_path(pid)),
        dict(image=demo_rec.image_path(pid), same="Gender"),
    ]
    for kw in bad:
        with pytest.raises(InvalidQueryError) as err:
            demo_rec.similar(**kw)
        assert isinstance(err.value, ValueError) and "\n" not in str(err.value), kw
    with pytest.raises(InvalidQueryError, match="unknown column 'Size'.*Gender"):
        demo_rec.similar(pid, same="Size")
    with pytest.raises(InvalidQueryError):
        demo_rec.export(k=0)
    with pytest.raises(InvalidQueryError):
        demo_rec.export(where={"Nope": "x"})


def test_unknown_product(demo_rec):
    with pytest.raises(UnknownProductError, match="unknown product id: 99999999") as err:
        demo_rec.similar("99999999")
    assert isinstance(err.value, KeyError)
    with pytest.raises(UnknownProductError):
        demo_rec.similar([demo_rec.ids[0], "nope"])


# -- several ids --------------------------------------------------------------------------------
def test_several_ids_combined(demo_rec):
    a, b = demo_rec.ids[0], demo_rec.ids[40]
    res = demo_rec.similar([a, b], k=10, colour_weight=0.0)
    _check_results(demo_rec, res, 10)
    assert a not in res.ids and b not in res.ids
    assert res.query["ids"] == [a, b]
    assert demo_rec.similar([b, a], k=10, colour_weight=0.0).ids == res.ids
    mean = demo_rec.vectors[demo_rec.row(a)] + demo_rec.vectors[demo_rec.row(b)]
    mean /= np.linalg.norm(mean)
    for r in res:  # scored by cosine with the direction of the two products' mean
        assert abs(r.score - float(mean @ demo_rec.vectors[demo_rec.row(r.id)])) < 1e-5
    # the combination differs from either product alone
    assert res.ids != demo_rec.similar(a, k=10, colour_weight=0.0).ids


def test_several_ids_with_same_keeps_their_values(demo_rec):
    meta = demo_rec.metadata
    men = meta[meta["Gender"] == "Men"]["ProductId"].tolist()
    women = meta[meta["Gender"] == "Women"]["ProductId"].tolist()
    res = demo_rec.similar([men[0], women[0]], k=30, same="Gender")
    assert {r.metadata["Gender"] for r in res} == {"Men", "Women"}


def test_identical_twins_combined_equal_one(full_rec):
    assert full_rec.similar(["21838", "23129"], k=10).ids == full_rec.similar("21838", k=10).ids


# -- by photo -----------------------------------------------------------------------------------
def test_by_photo_of_an_indexed_product(demo_rec):
    alone = demo_rec.metadata[demo_rec.metadata["_dup_near"] < 0]["ProductId"].tolist()
    for pid in alone[:3]:
        path = demo_rec.image_path(pid)
        res = demo_rec.similar(image=path, k=5)
        assert res.ids[0] == pid and res.items[0].score > 0.999
        assert res.query["image"] == str(path)
        _check_results(demo_rec, res, 5)
        from_bytes = demo_rec.similar(image=path.read_bytes(), k=5)
        assert from_bytes.ids == res.ids and from_bytes.query["image"] == "<image>"
    # a where filter applies to photo queries too
    pid = alone[0]
    other = "Men" if demo_rec.product(pid)["Gender"] != "Men" else "Women"
    res = demo_rec.similar(image=demo_rec.image_path(pid), k=5, where={"Gender": other})
    assert pid not in res.ids and {r.metadata["Gender"] for r in res} == {other}


def test_photo_queries_use_the_model_settings_the_index_was_built_with(tmp_path):
    """An index built at 224 px in fp32 (older indexes, or `build --size 224 --precision fp32`)
    embeds photos that way: the defaults (256 px trimmed, int8) would give other vectors. An index
    from before trimming (no ``trim`` in its manifest) embeds photos untrimmed."""
    table = pd.read_csv(demo_catalog(), dtype=str, keep_default_na=False).iloc[:12]
    table.to_csv(tmp_path / "cat.csv", index=False)
    build(tmp_path / "cat.csv", tmp_path / "idx", images=demo_catalog().parent / "images", size=224,
          precision="fp32", show_progress_bar=False)
    rec = Recommender.load(tmp_path / "idx")
    assert rec.manifest["model"]["input_size"] == 224 and rec.manifest["model"]["precision"] == "fp32"
    assert rec.encoder.preprocess.size == 224 and rec.encoder.precision == "fp32"
    alone = rec.metadata[rec.metadata["_dup_near"] < 0]["ProductId"].tolist()
    for pid in alone[:2]:
        res = rec.similar(image=rec.image_path(pid), k=3)
        assert res.ids[0] == pid and res.items[0].score > 0.999
    # manifests written before precision was recorded were fp32
    edit_record(tmp_path / "idx", lambda m: m["model"].pop("precision"))
    assert Recommender.load(tmp_path / "idx").encoder.precision == "fp32"
    # and those written before trimming were untrimmed
    assert rec.manifest["model"]["trim"] is True
    edit_record(tmp_path / "idx", lambda m: m["model"].pop("trim"))
    assert Recommender.load(tmp_path / "idx").encoder.preprocess.trim is False


def test_by_photo_of_an_indexed_product_full_set(full_rec, fashion_dir):
    meta = full_rec.metadata
    alone = meta[meta["_dup_near"] < 0]["ProductId"].tolist()
    for pid in alone[::700]:
        res = full_rec.similar(image=fashion_dir / "images" / f"{pid}.jpg", k=5)
        assert res.ids[0] == pid


def test_by_photo_errors(demo_rec, tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        demo_rec.similar(image=tmp_path / "missing.jpg")
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(ImageError, match="not an image"):
        demo_rec.similar(image=tmp_path / "notes.jpg")


# -- colour weight --------------------------------------------------------------------------------
def test_colour_weight_one_ranks_by_colour(demo_rec):
    pid = demo_rec.ids[2]
    res = demo_rec.similar(pid, k=10, colour_weight=1.0)
    c = demo_rec.colour
    q = c[demo_rec.row(pid)]
    for r in res:
        assert abs(r.score - float(q @ c[demo_rec.row(r.id)])) < 1e-5
    assert res.ids != demo_rec.similar(pid, k=10).ids


# -- export --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [{}, {"same": "Gender"}, {"where": {"Category": ["Apparel", "Footwear"]}}, {"collapse_duplicates": False}],
    ids=["plain", "same-gender", "where", "keep-duplicates"],
)
def test_export_equals_similar_for_each_product(demo_rec, kw):
    table = demo_rec.export(k=5, batch=16, **kw)
    assert list(table.columns[:4]) == ["query_id", "rank", "id", "score"]
    assert table["query_id"].unique().tolist() == demo_rec.ids
    for pid, rows in table.groupby("query_id", sort=False):
        res = demo_rec.similar(pid, k=5, **kw)
        assert rows["rank"].tolist() == [r.rank for r in res]
        scores = rows["score"].to_numpy()
        assert np.allclose(scores, [r.score for r in res], atol=1e-5)
        # the same ids in the same order, except that products whose scores tie to the last
        # float bits may swap (a batch of queries rounds its products differently from one)
        for score, got, want in zip(scores, rows["id"].tolist(), res.ids):
            tied = {i for i, sc in zip(res.ids, (r.score for r in res)) if abs(sc - score) <= 1e-6}
            assert got == want or {got, want} <= tied, (pid, rows["id"].tolist(), res.ids)


def test_export_subset_of_ids(demo_rec):
    ids = demo_rec.ids[10:13]
    table = demo_rec.export(k=3, ids=ids)
    assert table["query_id"].unique().tolist() == ids and len(table) == 9


def test_full_set_export_five_of_own_gender(full_rec):
    table = full_rec.export(k=5, same="Gender")
    assert table["query_id"].nunique() == len(full_rec) == 2906
    assert table.groupby("query_id").size().eq(5).all()
    gender = dict(zip(full_rec.ids, full_rec.metadata["Gender"], strict=True))
    assert (table["query_id"].map(gender) == table["id"].map(gender)).all()
    assert (table["query_id"] != table["id"]).all()
    exact = dict(zip(full_rec.ids, full_rec._exact_group, strict=True))
    assert (table["query_id"].map(exact) != table["id"].map(exact)).all()
    assert table.groupby("query_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()


def test_hnsw_loaded_index_answers_like_the_exact_one(full_path, full_rec):
    """At 2,906 rows every filtered query falls back to exact search inside the HNSW back end."""
    hnsw = Recommender.load(full_path)
    assert hnsw.index.name == "hnsw"
    ids = full_rec.ids[::25]
    a = hnsw.export(k=5, same="Gender", ids=ids)
    b = full_rec.export(k=5, same="Gender", ids=ids)
    assert np.allclose(a["score"], b["score"], atol=1e-5)
    assert (a["id"] == b["id"]).mean() > 0.98  # equal up to order among float-tied scores
    assert hnsw.similar("21838", k=10, same="Gender").ids == full_rec.similar("21838", k=10, same="Gender").ids


@pytest.fixture
def empty_rec(tmp_path, encoder) -> Recommender:
    """An index whose every product was removed since it was built."""
    from lookalike import Index

    table = pd.read_csv(demo_catalog(), dtype=str, keep_default_na=False).iloc[:3]
    table.to_csv(tmp_path / "c.csv", index=False)
    build(tmp_path / "c.csv", tmp_path / "index", images=demo_catalog().parent / "images", encoder=encoder,
          show_progress_bar=False)
    Index.open(tmp_path / "index", encoder=encoder).remove(table["ProductId"])
    return Recommender.load(tmp_path / "index", encoder=encoder)


def test_empty_index_by_id_and_export(empty_rec):
    assert len(empty_rec) == 0
    with pytest.raises(UnknownProductError):
        empty_rec.similar(pd.read_csv(demo_catalog(), dtype=str)["ProductId"].iat[0])
    assert len(empty_rec.export(k=5)) == 0


def test_empty_index_photo_query(empty_rec):
    photo = sorted((demo_catalog().parent / "images").glob("*.jpg"))[0]
    assert empty_rec.similar(image=photo, k=5).ids == []
