"""evaluate --views (issue 20 item 9): each photo of a product with several queries the index with
that photo left out; the counts, the per-group sums, the leaving out, mean scoring and the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lookalike import InvalidQueryError, Recommender, build
from lookalike.analysis.evaluate import evaluate_views
from lookalike.cli import main
from lookalike.search.backends import Filter


@pytest.fixture(scope="module")
def photos_of(store_dir) -> dict[str, list[str]]:
    """Each product's photos as catalog.csv lists them, main photo first."""
    table = pd.read_csv(store_dir / "catalog.csv", dtype=str, keep_default_na=False)
    return {pid: cell.split("|") for pid, cell in zip(table["product_id"], table["images"])}


@pytest.fixture(scope="module")
def views_index(tmp_path_factory, store_dir, encoder) -> Path:
    out = tmp_path_factory.mktemp("views") / "index"
    build(store_dir / "catalog.csv", out, images=store_dir / "images", id_column="product_id",
          image_column="images", encoder=encoder, show_progress_bar=False)
    return out


@pytest.fixture(scope="module")
def rec(views_index) -> Recommender:
    return Recommender.load(views_index)


@pytest.fixture(scope="module")
def best(rec):
    return evaluate_views(rec, group_by="category", show_progress_bar=False)


def test_every_photo_of_a_product_with_several_is_one_query(rec, best, photos_of):
    several = {pid: photos for pid, photos in photos_of.items() if len(photos) >= 2}
    assert best.queries == sum(len(p) for p in several.values()) == 95  # 97 photos, 2 products of one
    assert best.settings["products"] == len(several) == 23
    assert sorted(zip(best.ranks["id"], best.ranks["photo"])) == sorted((pid, ph) for pid, photos in several.items()
                                                                        for ph in photos)
    old = evaluate_views(rec, main_only=True, show_progress_bar=False)
    assert old.queries == 95 - 23 == 72 and (old.ranks["place"] > 0).all()  # the other photos only


def test_recall_grows_with_k_and_groups_sum_to_the_whole(rec, best, photos_of):
    frame = best.to_frame()
    assert list(frame.columns) == ["column", "value", "queries", "products", "r@1", "r@5"]
    assert (frame["r@5"] >= frame["r@1"]).all()
    overall, groups = frame.iloc[0], frame.iloc[1:]
    assert overall["value"] == "all" and overall["queries"] == best.queries
    assert groups["queries"].sum() == best.queries and groups["products"].sum() == overall["products"]
    several = {pid for pid, photos in photos_of.items() if len(photos) >= 2}
    categories = {rec.product(pid)["category"] for pid in several}
    assert set(groups["value"]) == categories and len(categories) == 11  # both Monitors have one photo
    ranks = best.ranks["rank"]
    assert overall["r@1"] == pytest.approx((ranks == 1).mean())
    assert overall["r@5"] == pytest.approx(((ranks >= 1) & (ranks <= 5)).mean())
    as_dict = best.to_dict()
    assert sum(g["queries"] for g in as_dict["groups"]["category"].values()) == as_dict["queries"]


def test_the_query_photo_is_left_out(rec, best, photos_of):
    found = best.ranks[best.ranks["rank"] > 0]
    assert (found["matched"] != found["photo"]).all()
    pairs = {pid: photos for pid, photos in photos_of.items() if len(photos) == 2}
    assert pairs
    for a, b in pairs.values():
        for query, other in ((a, b), (b, a)):
            line = best.ranks[best.ranks["photo"] == query].iloc[0]
            assert line["matched"] in ("", other)
    # directly: every product listed (k = all of them), the pair's product only through its other photo
    pid, (a, b) = next(iter(pairs.items()))
    row_a = int(rec.rows(pid)[0])
    allowed = np.ones(rec.n_rows, bool)
    allowed[row_a] = False
    (res,) = rec.similar_to_rows([row_a], k=len(rec), allowed=allowed)
    assert {r.id: r.matched_photo for r in res}[pid] == b
    (unmasked,) = rec.similar_to_rows([row_a], k=1)
    assert unmasked.items[0].id == pid and unmasked.items[0].matched_photo == a and unmasked.items[0].score > 0.999


def test_main_only_matches_only_main_photos(rec, photos_of):
    old = evaluate_views(rec, main_only=True, show_progress_bar=False)
    found = old.ranks[old.ranks["rank"] > 0]
    assert len(found) and all(m == photos_of[pid][0] for pid, m in zip(found["id"], found["matched"]))


def test_a_byte_identical_copy_of_the_query_is_left_out_too(tmp_path, store_dir, encoder):
    src, images = store_dir / "images" / "opencart", tmp_path / "images"
    images.mkdir()
    for name, source in (("a.jpg", "htc_touch_hd_1.jpg"), ("a_copy.jpg", "htc_touch_hd_1.jpg"),
                         ("b.jpg", "htc_touch_hd_2.jpg"), ("c.jpg", "iphone_1.jpg"), ("d.jpg", "iphone_2.jpg")):
        shutil.copyfile(src / source, images / name)
    (tmp_path / "cat.csv").write_text("id,images\np1,a.jpg|a_copy.jpg|b.jpg\np2,c.jpg|d.jpg\n")
    build(tmp_path / "cat.csv", tmp_path / "ix", images=images, id_column="id", image_column="images",
          encoder=encoder, show_progress_bar=False)
    ranks = evaluate_views(Recommender.load(tmp_path / "ix"), show_progress_bar=False).ranks.set_index("photo")
    assert ranks.loc["a.jpg", "matched"] in ("", "b.jpg") and ranks.loc["a_copy.jpg", "matched"] in ("", "b.jpg")


def test_mean_scoring_is_exact(rec):
    """The mean of a product's allowed photos, against brute force over every row."""
    n, w = rec.n_rows, rec.colour_weight
    rows, allowed = np.arange(n), ~np.eye(n, dtype=bool)
    got = rec.similar_to_rows(rows, k=5, allowed=allowed, scoring="mean")
    scores, hits = rec.index.search(rec._product_queries([rows], w), n, filter=Filter.of_mask(allowed))
    for i in range(n):
        per: dict[str, list[float]] = {}
        for s, r in zip(scores[i], hits[i]):
            if r >= 0:
                per.setdefault(rec.ids[r], []).append(float(s))
        mean = {pid: float(np.mean(v)) for pid, v in per.items()}
        assert got[i].ids == sorted(mean, key=lambda p: (-mean[p], p))[:5]
        assert [r.score for r in got[i]] == pytest.approx([mean[p] for p in got[i].ids], abs=1e-5)


def test_bad_settings_are_refused(rec):
    with pytest.raises(InvalidQueryError, match="choose one of best, mean"):
        evaluate_views(rec, scoring="median")
    with pytest.raises(InvalidQueryError, match="Nope"):
        evaluate_views(rec, group_by="Nope")
    with pytest.raises(InvalidQueryError, match="k must be"):
        evaluate_views(rec, k=(0, 5))
    with pytest.raises(InvalidQueryError, match="allowed must be"):
        rec.similar_to_rows([0], allowed=np.ones(3, bool))


def test_cli_prints_the_table_and_json(views_index, capsys, restore_logging):
    assert main(["-q", "evaluate", str(views_index), "--views", "--by", "category"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("95 queries: each photo of the 23 products with 2 photos or more")
    assert "by category" in out and "Laptops & Notebooks" in out
    assert main(["-q", "evaluate", str(views_index), "--views", "-k", "3", "--scoring", "mean", "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["queries"] == 95 and got["k"] == [1, 3] and got["settings"]["scoring"] == "mean"
    assert got["r@3"] >= got["r@1"]


def test_cli_one_error_line_without_products_of_several_photos(store_index, capsys, restore_logging):
    assert main(["-q", "evaluate", str(store_index), "--views"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("lookalike: error: no product of ") and "has two photos or more" in err


def test_cli_refuses_what_views_does_not_take(views_index, capsys, restore_logging):
    assert main(["-q", "evaluate", str(views_index), "--views", "--same", "category"]) == 1
    assert capsys.readouterr().err.strip() == "lookalike: error: --views takes no --same"
    assert main(["-q", "evaluate", str(views_index), "--label", "category", "--scoring", "mean"]) == 1
    assert capsys.readouterr().err.strip() == "lookalike: error: --scoring needs --views"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "evaluate", str(views_index)])
    assert exc.value.code == 2  # neither --label nor --views: argparse's usage error
