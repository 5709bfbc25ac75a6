"""Catalogue ingestion: tables, columns, photo lookup, and a reason for every row not indexed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from layout import base, report_path

from lookalike import CatalogError, build, demo_catalog, load_catalog

DEMO = demo_catalog()
DEMO_IMAGES = DEMO.parent / "images"


def _demo_rows(n: int) -> pd.DataFrame:
    return pd.read_csv(DEMO, dtype=str, keep_default_na=False).head(n)


def _copy_photos(table: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in table["Image"]:
        shutil.copy(DEMO_IMAGES / name, folder / name)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Six real demo products, their photos in ``images/`` beside the CSV."""
    table = _demo_rows(6)
    _copy_photos(table, tmp_path / "images")
    table.to_csv(tmp_path / "catalog.csv", index=False)
    return tmp_path, table


# -- tables and columns ----------------------------------------------------------------
def test_csv_finds_images_folder_beside_it(small):
    folder, table = small
    cat = load_catalog(folder / "catalog.csv")
    assert cat.ids == table["ProductId"].tolist()
    assert cat.problems == []
    assert cat.total_rows == len(table)
    assert [p.name for p in cat.image_paths] == table["Image"].tolist()
    assert cat.rows == list(range(1, len(table) + 1))
    # every other column is kept, as text, for filters and display
    assert list(cat.table.columns) == list(table.columns)
    assert cat.table["Gender"].tolist() == table["Gender"].tolist()
    assert len(cat.sha256) == 64


def test_parquet_reads_like_csv_and_ids_stay_text(small):
    folder, table = small
    pq = table.copy()
    pq["ProductId"] = pq["ProductId"].astype(int)  # a numeric id column in Parquet
    pq.to_parquet(folder / "catalog.parquet", index=False)
    csv = load_catalog(folder / "catalog.csv")
    par = load_catalog(folder / "catalog.parquet")
    assert par.ids == csv.ids
    assert all(isinstance(i, str) for i in par.ids)
    assert par.image_paths == csv.image_paths
    assert par.table["ProductTitle"].tolist() == csv.table["ProductTitle"].tolist()


def test_ids_keep_leading_zeros(small):
    folder, table = small
    table = table.copy()
    table["ProductId"] = ["000" + i for i in table["ProductId"]]
    table.to_csv(folder / "zeros.csv", index=False)
    assert load_catalog(folder / "zeros.csv").ids == table["ProductId"].tolist()


def test_custom_id_and_image_columns(small):
    folder, table = small
    custom = table.rename(columns={"ProductId": "sku", "Image": "photo"})
    custom.to_csv(folder / "custom.csv", index=False)
    cat = load_catalog(folder / "custom.csv", id_column="sku", image_column="photo")
    assert cat.ids == table["ProductId"].tolist()
    assert cat.problems == []
    assert cat.id_column == "sku" and cat.image_column == "photo"


def test_dataframe_input(small):
    folder, table = small
    cat = load_catalog(table, images=folder / "images")
    assert cat.ids == table["ProductId"].tolist()
    assert cat.source is None


def test_missing_id_column_lists_the_columns(small):
    folder, _ = small
    with pytest.raises(CatalogError) as err:
        load_catalog(folder / "catalog.csv", id_column="sku")
    msg = str(err.value)
    assert "'sku'" in msg
    for col in ("ProductId", "Gender", "ProductTitle", "Image"):
        assert col in msg


def test_missing_image_column(small):
    folder, _ = small
    with pytest.raises(CatalogError, match="image column 'photo'"):
        load_catalog(folder / "catalog.csv", image_column="photo")


def test_missing_catalogue_and_images_folder(tmp_path, small):
    folder, _ = small
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "nope.csv")
    with pytest.raises(CatalogError, match="images folder not found"):
        load_catalog(folder / "catalog.csv", images=tmp_path / "no-such-folder")


def test_unreadable_table_is_a_catalog_error(tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"this is not parquet at all")
    with pytest.raises(CatalogError, match="can't read catalogue"):
        load_catalog(bad)


# -- the Kaggle layout: photos nested in folders, found by file name ---------------------
def test_nested_folders_found_by_file_name(tmp_path):
    table = _demo_rows(6)
    for j, name in enumerate(table["Image"]):
        sub = tmp_path / "images" / f"part{j % 3}" / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO_IMAGES / name, sub / name)
    table.to_csv(tmp_path / "fashion.csv", index=False)
    cat = load_catalog(tmp_path / "fashion.csv", images=tmp_path / "images")
    assert cat.problems == []
    assert cat.ids == table["ProductId"].tolist()
    for path, name in zip(cat.image_paths, table["Image"], strict=True):
        assert path.name == name and path.is_file() and "deeper" in path.parts


def test_relative_path_with_folders_and_ambiguous_names(tmp_path):
    table = _demo_rows(3)
    name = table["Image"].iat[0]
    for sub in ("a", "b"):
        (tmp_path / "images" / sub).mkdir(parents=True)
        shutil.copy(DEMO_IMAGES / name, tmp_path / "images" / sub / name)
    table = table.copy()
    table["Image"] = [f"a/{name}", name, "c/missing.jpg"]
    cat = load_catalog(table, images=tmp_path / "images")
    assert cat.image_paths == [tmp_path / "images" / "a" / name]  # a direct relative path wins
    reasons = {p.row: p.reason for p in cat.problems}
    assert reasons[2].startswith("ambiguous photo name: 2 files")
    assert reasons[3] == "photo file not found: c/missing.jpg"


# -- bad rows: each one reported with its reason, the rest indexed ------------------------
@pytest.fixture
def bad_catalogue(tmp_path: Path) -> tuple[Path, pd.DataFrame, dict[int, str]]:
    """Real photos plus one row of each kind of problem; returns (csv, table, row -> reason)."""
    good = _demo_rows(5)
    images = tmp_path / "images"
    _copy_photos(good, images)
    a, b, c, d, e = good["Image"]
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.jpg").write_text("a text file, not a photo\n")
    whole = (DEMO_IMAGES / d).read_bytes()
    (images / "half.jpg").write_bytes(whole[: len(whole) // 2])
    ids = good["ProductId"].tolist()
    rows = [
        (ids[0], a, None),
        (ids[1], b, None),
        ("90001", "missing.jpg", "photo file not found"),
        ("90002", "empty.jpg", "empty file"),
        ("90003", "notes.jpg", "not an image"),
        ("90004", "half.jpg", "truncated"),
        (ids[0], c, "duplicate id"),
        ("", e, "empty id"),
        ("90005", "", "no photo named"),
        (ids[2], c, None),
    ]
    template = good.iloc[0].to_dict()
    table = pd.DataFrame([{**template, "ProductId": pid, "Image": img} for pid, img, _ in rows])
    table.to_csv(tmp_path / "bad.csv", index=False)
    expected = {i + 1: reason for i, (_, _, reason) in enumerate(rows) if reason}
    return tmp_path / "bad.csv", table, expected


def test_load_catalog_reports_table_problems(bad_catalogue):
    csv, table, expected = bad_catalogue
    cat = load_catalog(csv)
    by_row = {p.row: p.reason for p in cat.problems}
    # rows the table alone can judge; photo decoding problems come at build time
    assert by_row[3].startswith("photo file not found")
    assert by_row[7] == "duplicate id (first on row 1)"
    assert by_row[8] == "empty id"
    assert by_row[9] == "no photo named"
    assert len(cat.ids) + len(cat.problems) == len(table)


def test_build_reports_every_bad_row_and_indexes_the_rest(bad_catalogue, tmp_path, encoder):
    csv, table, expected = bad_catalogue
    out = tmp_path / "index"
    report = build(csv, out, encoder=encoder, show_progress_bar=False, workers=2)
    assert report.total_rows == len(table)
    assert report.indexed + report.skipped == len(table)
    assert report.indexed == 3
    got = {p.row: p.reason for p in report.problems}
    assert set(got) == set(expected)
    for row, reason in expected.items():
        assert reason in got[row], (row, got[row])
    summary = report.summary()
    assert f"indexed 3 of {len(table)}" in summary and "skipped 7 rows" in summary

    saved = pd.read_csv(report_path(out), dtype=str, keep_default_na=False)
    assert list(saved.columns) == ["row", "id", "image", "status", "reason"]
    assert saved["row"].astype(int).tolist() == list(range(1, len(table) + 1))
    status = dict(zip(saved["row"].astype(int), saved["status"], strict=True))
    assert {r for r, s in status.items() if s == "indexed"} == {1, 2, 10}
    for row, reason in expected.items():
        line = saved[saved["row"].astype(int) == row].iloc[0]
        assert line["status"] == "skipped" and reason in line["reason"]
    # the index holds exactly the indexed rows, in catalogue order
    meta = pd.read_parquet(base(out) / "metadata.parquet")
    assert meta["ProductId"].tolist() == [
        table["ProductId"].iat[0],
        table["ProductId"].iat[1],
        table["ProductId"].iat[9],
    ]
    assert meta["_row"].tolist() == [1, 2, 10]


def test_build_with_nothing_usable_is_refused_and_keeps_the_index(tmp_path, encoder, capsys):
    """A build where every row failed (say, the photo folder did not mount) must not replace a
    good index with an empty one, and must fail: exit 1 from the CLI, CatalogError in Python."""
    from lookalike import CatalogError, Recommender
    from lookalike.cli import main

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.jpg").write_bytes(b"")
    pd.DataFrame({"ProductId": ["1", "2"], "Image": ["x.jpg", "y.jpg"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(CatalogError, match="nothing could be indexed: all 2 catalogue rows failed"):
        build(tmp_path / "c.csv", tmp_path / "index", encoder=encoder, show_progress_bar=False)
    assert not (tmp_path / "index").exists()
    good = tmp_path / "good"
    build(demo_catalog(), good, encoder=encoder, show_progress_bar=False)
    before = Recommender.load(good).ids
    assert main(["-q", "build", str(tmp_path / "c.csv"), "--out", str(good)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was left as it was" in err[0] and "1 empty file" in err[0]
    assert Recommender.load(good).ids == before
