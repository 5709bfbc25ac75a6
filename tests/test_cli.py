"""The ``lookalike`` command: what each command prints, and one clean line per user error."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from layout import base, record, record_path, report_path
from PIL import Image

from lookalike import Recommender, demo_catalog
from lookalike.cli import main

DEMO = demo_catalog()
DEMO_IMAGES = DEMO.parent / "images"


pytestmark = pytest.mark.usefixtures("restore_logging")  # main() configures logging (tests/conftest.py)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture
def pid(demo_rec) -> str:
    return demo_rec.ids[0]


# -- build -----------------------------------------------------------------------------------
def test_build(capsys, tmp_path):
    table = pd.read_csv(DEMO, dtype=str).head(8)
    (tmp_path / "photos" / "nested").mkdir(parents=True)
    for name in table["Image"]:
        shutil.copy(DEMO_IMAGES / name, tmp_path / "photos" / "nested" / name)
    table = table.rename(columns={"ProductId": "sku", "Image": "photo"})
    bad = {**table.iloc[0].to_dict(), "sku": "900", "photo": "gone.jpg"}
    table = pd.concat([table, pd.DataFrame([bad])])
    table.to_csv(tmp_path / "shop.csv", index=False)
    out = tmp_path / "index"
    code, stdout, err = run(
        capsys,
        "-q",
        "build",
        tmp_path / "shop.csv",
        "--images",
        tmp_path / "photos",
        "--out",
        out,
        "--id-column",
        "sku",
        "--image-column",
        "photo",
        "--batch-size",
        "4",
        "--workers",
        "2",
    )
    assert code == 3, err  # done, one row refused
    lines = _lines(stdout)
    assert lines[0].startswith(f"indexed 8 of 9 catalogue rows into {out} in ")
    assert lines[1] == f"skipped 1 rows (see {report_path(out)}):"
    assert lines[2].split() == ["1", "photo", "file", "not", "found"]
    rec = Recommender.load(out)
    assert len(rec) == 8 and rec.id_column == "sku"
    assert rec.manifest["build"]["batch_size"] == 4


def test_build_exits_0_when_every_row_is_indexed_and_3_when_some_are_not(capsys, tmp_path):
    table = pd.read_csv(DEMO, dtype=str).head(4)
    table.to_csv(tmp_path / "good.csv", index=False)
    code, stdout, err = run(capsys, "-q", "build", tmp_path / "good.csv", "--images", DEMO_IMAGES,
                            "--out", tmp_path / "a")
    assert code == 0 and "indexed 4 of 4" in stdout, err
    data = (tmp_path / "good.csv").read_bytes()
    (tmp_path / "cut.csv").write_bytes(data[: data.rstrip(b"\n").rindex(b",")])  # a truncated export
    code, stdout, err = run(capsys, "-q", "build", tmp_path / "cut.csv", "--images", DEMO_IMAGES,
                            "--out", tmp_path / "b")
    assert code == 3 and "indexed 3 of 4" in stdout and "cut short" in stdout, err


def test_build_options_reach_the_manifest(capsys, tmp_path):
    table = pd.read_csv(DEMO, dtype=str).head(6)
    out = tmp_path / "index"
    table.to_csv(tmp_path / "c.csv", index=False)
    code, stdout, err = run(
        capsys,
        "-q",
        "build",
        tmp_path / "c.csv",
        "--images",
        DEMO_IMAGES,
        "--out",
        out,
        "--pooling",
        "avg",
        "--metric",
        "euclidean",
        "--resize",
        "squash",
    )
    assert code == 0, err
    m = record(out)
    assert (m["model"]["pooling"], m["metric"], m["model"]["resize"]) == ("avg", "euclidean", "squash")


# -- similar ---------------------------------------------------------------------------------
def test_similar_table(capsys, demo_index, demo_rec, pid):
    code, stdout, err = run(capsys, "similar", demo_index, "--id", pid)
    assert code == 0 and err == ""
    lines = _lines(stdout)
    p = demo_rec.product(pid)
    assert lines[0] == f"query {pid}: {p['Gender']} | {p['ProductType']} | {p['Colour']} | {p['ProductTitle']}"
    assert lines[1].split() == ["rank", "id", "score", "Gender", "ProductType", "Colour", "ProductTitle"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    rows = lines[3:]
    expected = demo_rec.similar(pid, k=5)
    assert len(rows) == 5
    for line, r in zip(rows, expected, strict=True):
        rank, rid, score = line.split()[:3]
        assert (int(rank), rid, score) == (r.rank, r.id, f"{r.score:.4f}")


def test_similar_filters_and_k(capsys, demo_index, demo_rec, pid):
    code, stdout, _ = run(capsys, "similar", demo_index, "--id", pid, "-k", "7", "--same", "Gender", "--format", "json")
    assert code == 0
    data = json.loads(stdout)
    gender = demo_rec.product(pid)["Gender"]
    assert len(data["results"]) == 7 and {r["Gender"] for r in data["results"]} == {gender}
    assert data["query"] == {"ids": [pid], "k": 7, "same": ["Gender"], "where": {}}
    code, stdout, _ = run(
        capsys,
        "similar",
        demo_index,
        "--id",
        pid,
        "--where",
        "Gender=Men,Women",
        "--where",
        "Category=Footwear",
        "--format",
        "json",
    )
    data = json.loads(stdout)
    assert code == 0 and data["query"]["where"] == {"Gender": ["Men", "Women"], "Category": ["Footwear"]}
    assert data["results"] and all(
        r["Gender"] in ("Men", "Women") and r["Category"] == "Footwear" for r in data["results"]
    )


def test_similar_numeric_filters(capsys, store_index):
    """--where with numbers, on a shop's prices: comparisons, a range, != on text, combined."""
    from lookalike import Recommender

    rec = Recommender.load(store_index)
    assert rec.settings.catalog.numeric_columns == ("price",)
    argv = ["similar", store_index, "--id", "oc-43", "-k", "30", "--format", "json"]
    code, stdout, _ = run(capsys, *argv, "--where", "price<200", "--where", "price>=50",
                          "--where", "category!=Cameras,Monitors")
    data = json.loads(stdout)
    assert code == 0 and data["query"]["conditions"] == ["price<200", "price>=50", "category!=Cameras,Monitors"]
    prices = [float(r["price"]) for r in data["results"]]
    assert prices and all(50 <= p < 200 for p in prices)
    assert not {r["category"] for r in data["results"]} & {"Cameras", "Monitors"}
    assert [r["id"] for r in data["results"]] == rec.similar(
        "oc-43", k=30, where=["price<200", "price>=50", "category!=Cameras,Monitors"]).ids
    code, stdout, _ = run(capsys, *argv, "--where", "price=20..50", "--where", "platform=prestashop")
    data = json.loads(stdout)
    assert code == 0 and data["query"]["where"] == {"platform": ["prestashop"]}
    assert sorted(r["id"] for r in data["results"]) == ["ps-2", "ps-3", "ps-5", "ps-6", "ps-7"]
    code, stdout, _ = run(capsys, *argv, "--where", "price=1000..")
    assert code == 0 and sorted(r["id"] for r in json.loads(stdout)["results"]) == ["oc-44", "oc-45", "oc-46"]


def test_build_finds_numeric_columns_and_takes_declared_ones(capsys, tmp_path, store_dir):
    """A price column with an ``n/a`` cell is not all numbers: found numeric only when declared;
    either way a numeric filter keeps the rows that have a number and drops the ``n/a`` one."""
    import pandas as pd

    from lookalike import Recommender

    store = store_dir
    table = pd.read_csv(store / "catalog.csv", dtype=str, keep_default_na=False).head(8)
    table.loc[2, "price"] = "n/a"  # oc-30
    table.loc[3, "price"] = ""  # oc-31
    table.to_csv(tmp_path / "shop.csv", index=False)
    common = ["build", tmp_path / "shop.csv", "--images", store / "images", "--id-column", "product_id",
              "--image-column", "image", "--runtime", "onnx", "-q"]
    for declared, out in (([], "found"), (["--numeric", "price"], "declared")):
        code, _, err = run(capsys, *common, *declared, "--out", tmp_path / out)
        assert code == 0, err
    assert Recommender.load(tmp_path / "found").settings.catalog.numeric_columns == ()
    assert Recommender.load(tmp_path / "declared").settings.catalog.numeric_columns == ("price",)
    for out in ("found", "declared"):
        code, stdout, _ = run(capsys, "similar", tmp_path / out, "--id", "oc-28", "--where", "price>=0",
                              "--keep-duplicates", "--format", "json")
        got = sorted(r["id"] for r in json.loads(stdout)["results"])
        assert code == 0 and got == sorted(set(table["product_id"]) - {"oc-28", "oc-30", "oc-31"})
    code, _, err = run(capsys, *common, "--numeric", "weight", "--out", tmp_path / "x")
    assert code == 1 and err.startswith("lookalike: error: can't declare 'weight' numeric") and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("where, words", [
    ("name<3", "'name<3' compares numbers, but column 'name' holds none; numeric columns are: price"),
    ("weight>1", "unknown column 'weight'"),
    ("price<cheap", "'price<cheap': 'cheap' is not a number"),
    ("price=50..10", "the low end is above the high end"),
])
def test_bad_numeric_filters_are_one_line(capsys, store_index, where, words):
    code, stdout, err = run(capsys, "similar", store_index, "--id", "oc-43", "--where", where)
    assert code == 1 and not stdout
    assert len(err.splitlines()) == 1 and err.startswith("lookalike: error: ") and words in err, err


def test_similar_several_ids_and_csv(capsys, demo_index, demo_rec):
    a, b = demo_rec.ids[1], demo_rec.ids[50]
    code, stdout, _ = run(
        capsys, "similar", demo_index, "--id", a, "--id", b, "-k", "4", "--format", "csv", "--columns", "Gender,Colour"
    )
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0] == "rank,id,score,Gender,Colour"
    assert [line.split(",")[1] for line in lines[1:]] == demo_rec.similar([a, b], k=4).ids


def test_similar_by_photo(capsys, demo_index, demo_rec):
    alone = demo_rec.metadata[demo_rec.metadata["_dup_near"] < 0]["ProductId"].iat[0]
    photo = demo_rec.image_path(alone)
    code, stdout, _ = run(capsys, "similar", demo_index, "--image", photo, "-k", "3", "--format", "json")
    assert code == 0
    data = json.loads(stdout)
    assert data["results"][0]["id"] == alone and len(data["results"]) == 3
    code, stdout, _ = run(capsys, "similar", demo_index, "--image", photo, "-k", "3")
    assert code == 0 and _lines(stdout)[0] == f"query photo: {photo}"


def test_similar_sheet_writes_png(capsys, demo_index, pid, tmp_path):
    sheet = tmp_path / "out" / "sheet.png"
    sheet.parent.mkdir()
    code, stdout, err = run(capsys, "similar", demo_index, "--id", pid, "-k", "4", "--sheet", sheet)
    assert code == 0
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(sheet) as img:
        assert img.format == "PNG" and img.width > img.height > 100
    assert f"contact sheet: {sheet}" in err


# -- export, info, duplicates, demo ------------------------------------------------------------
def test_export_csv_and_parquet(capsys, demo_index, demo_rec, tmp_path):
    code, stdout, _ = run(capsys, "-q", "export", demo_index, tmp_path / "top.csv", "-k", "3", "--same", "Gender")
    assert code == 0
    assert stdout.strip() == f"wrote 297 rows (99 products x up to 3) to {tmp_path / 'top.csv'}"
    table = pd.read_csv(tmp_path / "top.csv", dtype={"query_id": str, "id": str})
    assert list(table.columns[:4]) == ["query_id", "rank", "id", "score"]
    expected = demo_rec.export(k=3, same="Gender")
    assert table["query_id"].tolist() == expected["query_id"].tolist()
    assert table["id"].tolist() == expected["id"].tolist()
    code, _, _ = run(capsys, "-q", "export", demo_index, tmp_path / "top.parquet", "-k", "2")
    assert code == 0
    pq = pd.read_parquet(tmp_path / "top.parquet")
    assert len(pq) == 198 and list(pq.columns[:4]) == ["query_id", "rank", "id", "score"]
    assert not list(tmp_path.glob(".*tmp"))


def test_info(capsys, demo_index):
    code, stdout, _ = run(capsys, "info", demo_index)
    assert code == 0
    fields = {line.split("  ")[0]: line.split("  ", 1)[1].strip() for line in _lines(stdout)}
    m = record(demo_index)
    assert fields["rows"] == "99 (of 99 catalogue rows; 0 skipped)"
    assert fields["model"].startswith(
        f"efficientnet-lite0 / pooling {m['model']['pooling']} / trimmed, {m['model']['resize']} "
        f"{m['model']['input_size']}px / int8 "
        f"on {m['model']['runtime']} / weights"
    )
    assert fields["vectors"].startswith(f"{m['dim']}-d float32, metric cosine")
    assert fields["vectors"].endswith("back end exact")
    assert "Gender" in fields["columns"] and "_sha1" not in fields["columns"]
    assert fields["columns"].endswith("(numbers: ProductId)")  # the demo's one numeric column
    code, stdout, _ = run(capsys, "info", demo_index, "--format", "json")
    assert code == 0
    assert json.loads(stdout) == record(demo_index)
    assert fields["generation"].startswith("1 (made by build")


def test_duplicates(capsys, demo_index, demo_rec):
    code, stdout, err = run(capsys, "duplicates", demo_index, "--format", "json")
    assert code == 0
    assert json.loads(stdout) == demo_rec.duplicates()
    code, stdout, err = run(capsys, "duplicates", demo_index, "--exact")
    groups = demo_rec.duplicates(near=False)
    lines = _lines(stdout)
    assert code == 0 and len(lines) == 2 + len(groups)
    assert lines[0].split() == ["photos", "products", "title", "of", "the", "first", "ids"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split()[:2] == ["byte-identical", "2"] and lines[2].endswith("21838 23129")
    assert err.strip() == f"{sum(map(len, groups))} products in {len(groups)} groups ({len(groups)} byte-identical, " \
                          "0 near-identical)"


def test_duplicates_tells_byte_identical_photos_from_near_identical_ones(capsys, tmp_path):
    """A photo copied under a second id is byte-identical; the same photo saved again as a JPEG
    of another quality (other bytes, the same picture) is near-identical."""
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False).iloc[[0, 10, 20, 30, 40]].reset_index(drop=True)
    images = tmp_path / "images"
    images.mkdir()
    for name in table["Image"]:
        shutil.copy(DEMO_IMAGES / name, images / name)
    Image.open(DEMO_IMAGES / table["Image"][0]).save(images / "resaved.jpg", quality=90)
    extra = [{**table.iloc[0].to_dict(), "ProductId": "resaved", "Image": "resaved.jpg"},
             {**table.iloc[1].to_dict(), "ProductId": "copied", "Image": table["Image"][1]}]
    pd.concat([table, pd.DataFrame(extra)]).to_csv(tmp_path / "c.csv", index=False)
    assert run(capsys, "-q", "build", tmp_path / "c.csv", "--out", tmp_path / "index")[0] == 0
    code, stdout, err = run(capsys, "duplicates", tmp_path / "index")
    assert code == 0
    rows = {line.split()[0]: line.split()[-2:] for line in _lines(stdout)[2:]}
    assert rows == {"near-identical": [table["ProductId"][0], "resaved"],
                    "byte-identical": [table["ProductId"][1], "copied"]}
    assert err.strip() == "4 products in 2 groups (1 byte-identical, 1 near-identical)"


def _private_cache(tmp_path: Path, monkeypatch) -> Path:
    """A user whose cache folder is ``tmp_path/cache`` ($XDG_CACHE_HOME), holding the suite's
    exported models (linked: nothing is exported again)."""
    from lookalike.config import cache_dir

    models = cache_dir()
    monkeypatch.delenv("LOOKALIKE_CACHE_DIR")
    monkeypatch.delenv("LOOKALIKE_CALIBRATION_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache" / "lookalike").mkdir(parents=True)
    for name in ("onnx", "calibration", "openvino"):
        if (models / name).is_dir():
            (tmp_path / "cache" / "lookalike" / name).symlink_to(models / name)
    return tmp_path / "cache" / "lookalike"


def test_demo_no_app(capsys, tmp_path, monkeypatch):
    """The demo's index goes to the user's own cache folder, beside the model cache (not a
    fixed /tmp path another user may hold)."""
    cache = _private_cache(tmp_path, monkeypatch)
    out = cache / "demo-index"
    code, stdout, err = run(capsys, "demo", "--no-app", "-q")
    assert code == 0, err
    lines = _lines(stdout)
    assert lines[0].startswith(f"indexed 99 of 99 catalogue rows into {out}")
    rec = Recommender.load(out)
    first = "13683"  # the reference tutorial's example, which the demo shows
    head = [i for i, line in enumerate(lines) if line.startswith(f"more like {first} (")]
    assert head and lines[head[0]].endswith("same Gender:")
    rows = lines[head[0] + 3 :]
    assert [line.split()[1] for line in rows] == rec.similar(first, k=5, same="Gender").ids
    code, stdout, err = run(capsys, "demo", "--no-app", "-q", "--out", tmp_path / "elsewhere")
    assert code == 0 and f"into {tmp_path / 'elsewhere'} in" in stdout


# -- -q and -v, before or after the command ----------------------------------------------------
def test_quiet_and_verbose_after_the_command(capsys, tmp_path, demo_index):
    table = pd.read_csv(DEMO, dtype=str).head(3)
    table.to_csv(tmp_path / "c.csv", index=False)
    code, stdout, err = run(capsys, "build", tmp_path / "c.csv", "--images", DEMO_IMAGES, "--out",
                            tmp_path / "index", "-q")
    assert code == 0 and err == "" and stdout.startswith("indexed 3 of 3")  # no progress bar
    code, stdout, err = run(capsys, "info", demo_index, "-v")
    assert code == 0 and logging.getLogger().level == logging.INFO
    code, stdout, err = run(capsys, "-q", "info", demo_index, "-vv")
    assert code == 0 and logging.getLogger().level == logging.ERROR  # -q wins, wherever it is


# -- a newcomer's first run: one line, then the model is prepared --------------------------------
def test_first_run_says_it_prepares_the_model_before_any_progress_bar(capsys, tmp_path, monkeypatch):
    from lookalike.encoders import CNNEncoder

    prepared: list[str] = []
    monkeypatch.setattr(CNNEncoder, "is_prepared", lambda self: bool(prepared))
    real = CNNEncoder.prepare
    monkeypatch.setattr(CNNEncoder, "prepare", lambda self: prepared.append(self.name) or real(self))
    table = pd.read_csv(DEMO, dtype=str).head(3)
    table.to_csv(tmp_path / "c.csv", index=False)
    code, stdout, err = run(capsys, "build", tmp_path / "c.csv", "--images", DEMO_IMAGES, "--out", tmp_path / "a")
    assert code == 0 and prepared == ["efficientnet-lite0"]
    first = err.lstrip("\r").splitlines()[0]
    assert first.startswith("preparing the model efficientnet-lite0 for this machine, once (about 20 s; kept in ")
    assert "build:" in err.split(first, 1)[1]  # the progress bar comes after it
    prepared.clear()
    code, stdout, err = run(capsys, "-q", "build", tmp_path / "c.csv", "--images", DEMO_IMAGES, "--out",
                            tmp_path / "b")
    assert code == 0 and prepared == ["efficientnet-lite0"] and err == ""  # -q: prepared without a word
    code, stdout, err = run(capsys, "build", tmp_path / "c.csv", "--images", DEMO_IMAGES, "--out", tmp_path / "c")
    assert code == 0 and "preparing" not in err  # prepared already: nothing said


def test_an_encoder_is_prepared_once_its_export_and_calibration_are_kept(tmp_path, monkeypatch, encoder):
    from lookalike import get_encoder

    encoder.encode(DEMO_IMAGES / "13683.jpg")
    assert encoder.is_prepared()
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path))
    assert not get_encoder().is_prepared() and not get_encoder(runtime="onnx").is_prepared()
    assert get_encoder(runtime="torch").is_prepared()  # nothing to export


# -- user errors: one line, no traceback, non-zero exit -------------------------------------------
@pytest.fixture
def corrupt_index(demo_index, tmp_path) -> Path:
    bad = tmp_path / "corrupt"
    shutil.copytree(demo_index, bad)
    record_path(bad).write_text("{ this is not json")
    return bad


@pytest.fixture
def half_index(demo_index, tmp_path) -> Path:
    bad = tmp_path / "half"
    shutil.copytree(demo_index, bad)
    (base(bad) / "vectors.npy").unlink()
    return bad


ERRORS = {
    "unknown id": (["similar", "{demo}", "--id", "no-such-product"], "unknown product id: no-such-product"),
    "missing photo": (["similar", "{demo}", "--image", "{tmp}/missing.jpg"], "file not found"),
    "not a photo": (["similar", "{demo}", "--image", "{tmp}/notes.txt"], "not an image"),
    "unknown same column": (["similar", "{demo}", "--id", "{pid}", "--same", "Size"], "unknown column 'Size'"),
    "unknown where column": (["similar", "{demo}", "--id", "{pid}", "--where", "Size=M"], "unknown column 'Size'"),
    "unknown display column": (["similar", "{demo}", "--id", "{pid}", "--columns", "Size"], "unknown column"),
    "bad where": (["similar", "{demo}", "--id", "{pid}", "--where", "Gender"], "--where takes COLUMN=VALUE"),
    "corrupt index": (["info", "{corrupt}"], "damaged"),
    "incomplete index": (["similar", "{half}", "--id", "{pid}"], "vectors.npy is missing"),
    "no index": (["info", "{tmp}/nowhere"], "index not found"),
    "not an index": (["similar", "{tmp}", "--id", "1"], "is not a lookalike index"),
    "missing catalogue": (["build", "{tmp}/missing.csv", "--out", "{tmp}/x"], "catalogue not found"),
    "missing images folder": (
        ["build", "{catalog}", "--images", "{tmp}/nope", "--out", "{tmp}/x"],
        "images folder not found",
    ),
    "missing id column": (["build", "{catalog}", "--id-column", "sku", "--out", "{tmp}/x"], "'sku'"),
    "missing weights": (
        ["build", "{catalog}", "--weights", "{tmp}/w.pth", "--out", "{tmp}/x"],
        "weights file not found",
    ),
    "odd input size": (["build", "{catalog}", "--size", "200", "--out", "{tmp}/x"], "multiple of 32"),
    "export suffix": (["export", "{demo}", "{tmp}/top.txt"], "export writes .csv or .parquet"),
    "export bad where": (["export", "{demo}", "{tmp}/top.csv", "--where", "Colour"], "--where takes"),
    "export unknown column": (["export", "{demo}", "{tmp}/top.csv", "--same", "Size"], "unknown column"),
    # hostile photos and outputs that can't be written
    "bomb past Pillow's limit": (["similar", "{demo}", "--image", "{tmp}/bomb.png"], "image too large"),
    "jpeg with no data": (["similar", "{demo}", "--image", "{tmp}/lying.jpg"], "truncated or corrupt image"),
    "too many ids": (["similar", "{demo}", *["--id", "{pid}"] * 101], "at most 100 product ids"),
    "out is a file": (["build", "{catalog}", "--out", "{tmp}/notes.txt"], "exists and is not a folder"),
    "out under a file": (["build", "{catalog}", "--out", "{tmp}/notes.txt/x"], "is not a folder"),
    "out read-only": (["build", "{catalog}", "--out", "/sys/lookalike-test/x"], "can't write"),
    "export read-only": (["export", "{demo}", "/sys/lookalike-test/top.csv"], "can't write"),
    "export to a folder": (["export", "{demo}", "{tmp}/x.csv/"], "is a folder"),
    "sheet read-only": (["similar", "{demo}", "--id", "{pid}", "--sheet", "/sys/lookalike-test/s.png"], "can't write"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_user_errors_print_one_line(case, capsys, tmp_path, demo_index, corrupt_index, half_index, pid):
    from hostile import lying_jpeg, png

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bomb.png").write_bytes(png(20_000, 20_000, rows=b""))
    (tmp_path / "lying.jpg").write_bytes(lying_jpeg())
    (tmp_path / "x.csv").mkdir()
    argv, words = ERRORS[case]
    values = {
        "demo": demo_index,
        "tmp": tmp_path,
        "corrupt": corrupt_index,
        "half": half_index,
        "pid": pid,
        "catalog": DEMO,
    }
    code, stdout, err = run(capsys, *(a.format(**values) for a in argv))
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lookalike: error: ") and words in lines[0], lines[0]
    assert "Traceback" not in err and "Traceback" not in stdout
    assert not (tmp_path / "x").exists() and not (tmp_path / "top.txt").exists()


def test_usage_errors_exit_2(capsys, demo_index, pid):
    for argv in (
        ["similar", str(demo_index), "--id", pid, "-k", "0"],
        ["similar", str(demo_index)],
        ["frobnicate"],
        ["similar", str(demo_index), "--id", pid, "--image", "x.jpg"],
        ["build", str(DEMO), "--out", "x", "--projection-dim", "-5"],
        ["serve", str(demo_index), "--timeout-headers", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        _, err = capsys.readouterr()
        assert "usage: lookalike" in err and "Traceback" not in err


def test_main_twice_logs_once(capsys, demo_index):
    for _ in range(2):
        assert main(["info", str(demo_index)]) == 0
    logging.getLogger("lookalike.test").warning("hello once")
    _, err = capsys.readouterr()
    assert err.count("hello once") == 1


# -- a real process ------------------------------------------------------------------------------
def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "lookalike", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_python_dash_m_help():
    done = _python("--help")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: lookalike")
    for command in ("build", "similar", "export", "info", "duplicates", "demo"):
        assert command in done.stdout
    assert "exit status:" in done.stdout
    for code in ("0", "1", "2", "3"):
        assert any(line.split()[:1] == [code] for line in done.stdout.split("exit status:")[1].splitlines())
    for command in ("build", "add", "remove", "sync"):
        assert "exit status 3 when some rows were refused" in " ".join(_python(command, "--help").stdout.split())
    version = _python("--version")
    assert version.returncode == 0 and version.stdout.startswith("lookalike ")


def test_python_dash_m_error_is_one_line(tmp_path):
    done = _python("similar", str(tmp_path / "nowhere"), "--id", "1")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"lookalike: error: index not found: {tmp_path / 'nowhere'}"]


def test_a_bomb_warning_does_not_add_lines(tmp_path, demo_index):
    """A photo past Pillow's warning limit (89 MP) is one error line, without Pillow's warning."""
    from hostile import png

    (tmp_path / "big.png").write_bytes(png(10_000, 10_000, rows=b""))
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-m", "lookalike", "similar", str(demo_index), "--image",
                           str(tmp_path / "big.png")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "lookalike: error: image too large: 10000x10000 pixels (limit 64,000,000)"
    ]


def test_build_allow_outside_images(capsys, tmp_path):
    table = pd.read_csv(DEMO, dtype=str).head(3)
    (tmp_path / "shop" / "images").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for name in table["Image"]:
        shutil.copy(DEMO_IMAGES / name, tmp_path / "shop" / "images" / name)
    shutil.copy(DEMO_IMAGES / table["Image"].iat[2], tmp_path / "elsewhere" / "x.jpg")
    table["Image"] = [*table["Image"].iloc[:2], "../../elsewhere/x.jpg"]
    table.to_csv(tmp_path / "shop" / "c.csv", index=False)
    code, out, _ = run(capsys, "-q", "build", tmp_path / "shop" / "c.csv", "--out", tmp_path / "a")
    assert code == 3 and "indexed 2 of 3" in out and "photo is outside the images folder" in out
    code, out, _ = run(capsys, "-q", "build", tmp_path / "shop" / "c.csv", "--out", tmp_path / "b",
                       "--allow-outside-images")
    assert code == 0 and "indexed 3 of 3" in out
    manifest = Recommender.load(tmp_path / "b").manifest["catalog"]
    assert manifest["allow_outside_images"] is True
    assert manifest["images_root"] == str((tmp_path / "shop" / "images").resolve())


def test_calibrate_shows_each_runtime_and_keeps_the_choice(capsys, tmp_path, monkeypatch):
    import lookalike.encoders.calibrate as calibrate

    monkeypatch.setenv("LOOKALIKE_CALIBRATION_DIR", str(tmp_path))
    code, out, _ = run(capsys, "calibrate", "--format", "json")
    assert code == 0
    record = json.loads(out)
    kept = list(tmp_path.glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == record
    code, out, _ = run(capsys, "calibrate")  # the kept record, as a table
    lines = _lines(out)
    assert code == 0 and lines[0].split() == ["runtime", "photos/s", "min", "cosine"]
    chosen = [line for line in lines if line.endswith("<- chosen")]
    assert len(chosen) == 1 and chosen[0].split()[0] == record["runtime"]
    assert str(kept[0]) in lines[-1]

    calls = []
    real = calibrate.measure
    monkeypatch.setattr(calibrate, "measure", lambda enc: calls.append(enc) or real(enc))
    assert run(capsys, "calibrate")[0] == 0 and calls == []  # kept: not measured again
    assert run(capsys, "calibrate", "--again")[0] == 0 and len(calls) == 1
