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
        (ids[0], c, "duplicate id"),  # with another title: another product under the same id
        ("", e, "empty id"),
        ("90005", "", "no photo named"),
        (ids[2], c, None),
    ]
    template = good.iloc[0].to_dict()
    table = pd.DataFrame([{**template, "ProductId": pid, "Image": img} for pid, img, _ in rows])
    table.loc[6, "ProductTitle"] = "Another product entirely"
    table.to_csv(tmp_path / "bad.csv", index=False)
    expected = {i + 1: reason for i, (_, _, reason) in enumerate(rows) if reason}
    return tmp_path / "bad.csv", table, expected


def test_load_catalog_reports_table_problems(bad_catalogue):
    csv, table, expected = bad_catalogue
    cat = load_catalog(csv)
    by_row = {p.row: p.reason for p in cat.problems}
    # rows the table alone can judge; photo decoding problems come at build time
    assert by_row[3].startswith("photo file not found")
    assert by_row[7].startswith("duplicate id (first on row 1) with other cells: ProductTitle is ")
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


# -- hostile folders, paths and tables -------------------------------------------------------
@pytest.fixture
def deadline():
    """Fail a test that runs past 20 s instead of hanging the suite (symlink loops used to)."""
    import signal

    def fail(*_):  # type: ignore[no-untyped-def]
        raise TimeoutError("took over 20 s")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("links", [["a"], ["a", "b"]])
def test_symlink_loops_in_the_images_folder_are_walked_once(tmp_path, deadline, links):
    """Two ``x -> .`` links made the walk endless; one made every photo 'ambiguous'."""
    table = _demo_rows(4)
    _copy_photos(table, tmp_path / "images" / "deep")
    for name in links:
        (tmp_path / "images" / name).symlink_to(".")
    (tmp_path / "images" / "deep" / "up").symlink_to("..")
    cat = load_catalog(table, images=tmp_path / "images")
    assert cat.problems == []
    assert all(p.parent == (tmp_path / "images" / "deep").resolve() for p in cat.image_paths)


@pytest.fixture
def outside(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """Photos named so that they lead out of ``images/``: ../, absolute, a link, a linked folder."""
    table = _demo_rows(5)
    a, b, c, d, e = table["Image"]
    images, elsewhere = tmp_path / "images", tmp_path / "outside"
    _copy_photos(table.iloc[:1], images)
    _copy_photos(table.iloc[1:], elsewhere)
    (images / "link.jpg").symlink_to(elsewhere / c)
    (images / "ext").symlink_to(elsewhere)
    table = table.copy()
    table["Image"] = [a, f"../outside/{b}", "link.jpg", str(elsewhere / d), e]  # e: only in the linked folder
    return table, images


def test_photos_must_resolve_inside_the_images_folder(outside):
    table, images = outside
    cat = load_catalog(table, images=images)
    assert cat.ids == [table["ProductId"].iat[0]]
    assert cat.images_root == images.resolve() and not cat.allow_outside_images
    reasons = {p.row: p.reason for p in cat.problems}
    assert reasons[2].startswith("photo is outside the images folder: ../outside/")
    assert reasons[3].startswith("photo is outside the images folder: link.jpg")
    assert reasons[4].startswith("absolute photo path")
    assert reasons[5].startswith("photo file not found")  # a folder link out of images/ is not followed
    assert all("--allow-outside-images" in r for r in list(reasons.values())[:3])


def test_photos_outside_the_images_folder_on_request(outside):
    table, images = outside
    cat = load_catalog(table.iloc[:4], images=images, allow_outside_images=True)
    assert cat.problems == [] and cat.allow_outside_images
    assert [p.name for p in cat.image_paths] == [Path(v).name for v in _demo_rows(4)["Image"]]


def test_parquet_whole_number_floats_keep_their_text(tmp_path):
    """pandas writes an integer id column with a gap as floats: 42419.0 must read as 42419."""
    table = _demo_rows(3)
    _copy_photos(table, tmp_path / "images")
    pq = table.copy()
    pq["ProductId"] = [42419.0, 13683.0, float("nan")]
    pq["Year"] = [2012.0, float("nan"), 2011.0]
    pq["Rating"] = [4.5, 3.0, float("nan")]  # not whole numbers: left as they are
    pq.to_parquet(tmp_path / "c.parquet", index=False)
    cat = load_catalog(tmp_path / "c.parquet")
    assert cat.ids == ["42419", "13683"]
    assert cat.table["Year"].tolist() == ["2012", ""]
    assert cat.table["Rating"].tolist() == ["4.5", "3.0"]
    assert [(p.row, p.reason) for p in cat.problems] == [(3, "empty id")]
    # a DataFrame handed over directly reads the same way
    assert load_catalog(pq, images=tmp_path / "images").ids == ["42419", "13683"]


def test_repeated_column_names_are_a_catalog_error(tmp_path):
    (tmp_path / "c.csv").write_text("ProductId,Gender,Image,Gender \n1,Men,a.jpg,Women\n")
    with pytest.raises(CatalogError, match="repeated column names: 'Gender'"):
        load_catalog(tmp_path / "c.csv")
    frame = pd.DataFrame([[1, "Men", "a.jpg", "Women"]], columns=["ProductId", "Gender", "Image", "Gender"])
    with pytest.raises(CatalogError, match="'Gender'"):
        load_catalog(frame, images=tmp_path)


def test_build_gives_hostile_photos_a_reason_each(tmp_path, encoder):
    """Bombs, lying or cut JPEGs, formats outside the allowlist (EPS, PCX) and paths out of the
    folder are rows with reasons; a 16-bit PNG is indexed; the manifest records the images
    folder for the server's checks."""
    import io

    import numpy as np
    from hostile import cut_jpeg, eps, lying_jpeg, pillow_file, png
    from PIL import Image

    from lookalike import Recommender

    table = _demo_rows(3)
    images = tmp_path / "images"
    _copy_photos(table, images)
    photo = (images / table["Image"].iat[0]).read_bytes()
    (images / "bomb.png").write_bytes(png(20_000, 20_000, rows=b""))
    (images / "lying.jpg").write_bytes(lying_jpeg())
    (images / "cut.jpg").write_bytes(cut_jpeg(photo))
    (images / "drawing.eps").write_bytes(eps())
    (images / "pcx.jpg").write_bytes(pillow_file("PCX"))
    grey16 = np.asarray(Image.open(images / table["Image"].iat[1]).convert("L"), dtype=np.uint16) * 257
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")
    (images / "deep16.png").write_bytes(buf.getvalue())
    (tmp_path / "secret.png").write_bytes(buf.getvalue())
    template = table.iloc[0].to_dict()
    rows = [(table["ProductId"].iat[0], table["Image"].iat[0], None),
            ("91", "bomb.png", "image too large"), ("92", "lying.jpg", "truncated or corrupt image"),
            ("93", "cut.jpg", "truncated or corrupt image"), ("94", "deep16.png", None),
            ("95", "../secret.png", "photo is outside the images folder"),
            ("96", "drawing.eps", "not an image"), ("97", "pcx.jpg", "not an image")]
    frame = pd.DataFrame([{**template, "ProductId": pid, "Image": img} for pid, img, _ in rows])
    frame.to_csv(tmp_path / "c.csv", index=False)
    report = build(tmp_path / "c.csv", tmp_path / "index", encoder=encoder, show_progress_bar=False)
    got = {p.id: p.reason for p in report.problems}
    assert set(got) == {pid for pid, _, why in rows if why}
    for pid, _, why in rows:
        if why:
            assert got[pid].startswith(why), (pid, got[pid])
    rec = Recommender.load(tmp_path / "index")
    assert rec.manifest["catalog"]["images_root"] == str(images.resolve())
    assert rec.manifest["catalog"]["allow_outside_images"] is False


# -- rows cut short: a truncated export ------------------------------------------------------
def _cut(csv: Path, cells: int) -> bytes:
    """The file's bytes cut inside its last row, leaving that row ``cells`` cells (the last one
    cut mid-text) and no newline: what an export cut off by a full disk or a timeout leaves."""
    data = csv.read_bytes().rstrip(b"\n")
    start = data.rindex(b"\n") + 1
    last = data[start:].split(b",")
    return data[:start] + b",".join(last[: cells - 1] + [last[cells - 1][:3]])


@pytest.mark.parametrize("cells", [1, 2, 8])
def test_a_row_cut_short_is_a_row_problem_not_blank_cells(small, cells):
    folder, table = small
    (folder / "cut.csv").write_bytes(_cut(folder / "catalog.csv", cells))
    cat = load_catalog(folder / "cut.csv")
    assert cat.ids == table["ProductId"].tolist()[:5] and cat.total_rows == 6
    [problem] = cat.problems
    assert problem.row == 6
    assert problem.reason == (f"cut short: the row has {cells} of 9 cells and ends the file without a newline "
                              "(a truncated export?)")


def test_a_short_row_inside_the_file_is_a_row_problem(small):
    from lookalike.reading.catalog import read_table_file

    folder, table = small
    lines = (folder / "catalog.csv").read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:4])  # data row 3: 4 of 9 cells, the file goes on
    lines[4] = lines[4].rsplit(",", 1)[0] + ","  # data row 4: a real empty last cell is no cut
    (folder / "short.csv").write_text("\n".join(lines) + "\n")
    read = read_table_file(folder / "short.csv")
    assert read.short_rows == {3: 4} and not read.cut_at_end
    cat = load_catalog(folder / "short.csv")
    assert [(p.row, p.reason) for p in cat.problems] == [(3, "cut short: the row has 4 of 9 cells"),
                                                         (4, "no photo named")]


def test_a_file_ending_inside_a_quoted_field_is_refused(tmp_path):
    table = _demo_rows(3)
    table.loc[2, "ProductTitle"] = "Puma Men, Women and Kids Shoe"  # quoted: it holds a comma
    table.to_csv(tmp_path / "c.csv", index=False)
    data = (tmp_path / "c.csv").read_bytes()
    (tmp_path / "cut.csv").write_bytes(data[: data.index(b"Women and")])
    with pytest.raises(CatalogError, match="ends inside a quoted field"):
        load_catalog(tmp_path / "cut.csv", images=DEMO_IMAGES)


def test_build_of_a_cut_file_indexes_the_whole_rows_and_reports_the_cut_one(small, tmp_path, encoder):
    folder, table = small
    (folder / "cut.csv").write_bytes(_cut(folder / "catalog.csv", 8))
    report = build(folder / "cut.csv", tmp_path / "index", encoder=encoder, show_progress_bar=False)
    assert report.indexed == 5 and [p.row for p in report.problems] == [6]
    assert "cut short" in report.summary()
    saved = pd.read_csv(report_path(tmp_path / "index"), dtype=str, keep_default_na=False)
    assert saved[saved["row"] == "6"]["reason"].iat[0].startswith("cut short: the row has 8 of 9 cells")


def test_photo_references_as_platforms_write_them(tmp_path):
    """Magento 2 roots media paths at its media folder (``/m/h/mh01.jpg``); exports also carry
    absolute paths and ``file://`` URLs. Each that names a file in the images folder is indexed;
    each other reference gets its own reason, and nothing outside the folder is read."""
    table = _demo_rows(9)
    names = list(table["Image"])
    images = tmp_path / "media"
    (images / "m" / "h").mkdir(parents=True)
    for name in names[:5]:
        shutil.copy(DEMO_IMAGES / name, images / "m" / "h" / name)
    (tmp_path / "secret").mkdir()
    shutil.copy(DEMO_IMAGES / names[5], tmp_path / "secret" / names[5])
    table = table.copy()
    table["Image"] = [
        f"/m/h/{names[0]}",                                    # rooted at the media folder
        str(images / "m" / "h" / names[1]),                   # absolute, inside
        (images / "m" / "h" / names[2]).as_uri(),             # file:// URL, inside
        f"m/h/{names[3]}",                                     # relative, as before
        f"file://localhost{images / 'm' / 'h' / names[4]}",   # file://localhost/...
        (tmp_path / "secret" / names[5]).as_uri(),            # file:// URL outside the folder
        f"/../secret/{names[5]}",                              # rooted, climbing out
        f"https://cdn.example.com/m/h/{names[7]}",             # a URL: fetched (here: gone)
        f"/m/h/{names[8]}",                                    # rooted, missing
    ]
    import httpx

    from lookalike.reading.fetch import PhotoFetcher

    asked: list[str] = []
    gone = httpx.MockTransport(lambda request: asked.append(str(request.url)) or httpx.Response(404))
    fetcher = PhotoFetcher(tmp_path / "cache", transport=gone)  # never the network (tests/test_fetch.py: a real server)
    cat = load_catalog(table, images=images, fetcher=fetcher)
    assert asked == [f"https://cdn.example.com/m/h/{names[7]}"]
    assert cat.ids == list(table["ProductId"].iloc[:5])
    assert [p.name for p in cat.image_paths] == names[:5]
    assert all(p.is_relative_to(images.resolve()) for p in cat.image_paths)
    reasons = {p.row: p.reason for p in cat.problems}
    assert sorted(reasons) == [6, 7, 8, 9]
    assert reasons[6].startswith("absolute photo path outside the images folder")
    assert reasons[7].startswith("photo is outside the images folder")
    assert reasons[8] == "HTTP 404"
    assert reasons[9].startswith(f"photo file not found: /m/h/{names[8]}")
    assert str(images / "m" / "h" / names[8]) in reasons[9]  # says where it looked

    # asked for, a file:// URL outside the folder is read
    cat = load_catalog(table.iloc[5:6], images=images, allow_outside_images=True)
    assert cat.problems == [] and [p.name for p in cat.image_paths] == [names[5]]
