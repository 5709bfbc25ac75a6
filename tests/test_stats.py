"""Catalogue analysis (``lookalike stats``) on the real 2,906-product catalogue."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from lookalike.analysis.stats import catalog_stats, format_stats, grouping_columns, load_stats_table, save_charts
from lookalike.cli import main
from lookalike.errors import CatalogError

pytest.importorskip("matplotlib")

USUAL = ["Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage"]


@pytest.fixture(scope="module")
def fashion_csv(fashion_dir):
    return fashion_dir / "fashion.csv"


@pytest.fixture(scope="module")
def table(fashion_csv) -> pd.DataFrame:
    return load_stats_table(fashion_csv)


@pytest.fixture(scope="module")
def stats(table) -> dict:
    return catalog_stats(table)


def test_reference_numbers(stats):
    assert stats["products"] == 2906
    assert stats["by"] == "Gender" and stats["within"] == "SubCategory"
    assert stats["per_by"] == {"Men": 811, "Women": 769, "Boys": 759, "Girls": 567}
    assert list(stats["columns"]) == USUAL
    assert stats["columns"]["SubCategory"]["distinct"] == 9
    assert stats["columns"]["Gender"]["distinct"] == 4


def test_counts_agree_with_pandas(stats, fashion_csv):
    raw = pd.read_csv(fashion_csv, dtype=str)
    for col in USUAL:
        got = stats["columns"][col]
        assert got["distinct"] == raw[col].nunique()
        assert got["missing"] == 0
        assert got["counts"] == raw[col].value_counts().to_dict()
        assert list(got["counts"].values()) == sorted(got["counts"].values(), reverse=True)
    ct = pd.crosstab(raw["SubCategory"], raw["Gender"])
    expected = {g: {s: int(n) for s, n in ct[g].items() if n} for g in ct.columns}
    assert stats["within_per_by"] == expected
    assert stats["within_per_by"]["Men"]["Shoes"] == 616
    assert "Dress" not in stats["within_per_by"]["Men"]


def test_stats_are_json(stats):
    assert json.loads(json.dumps(stats)) == stats


def test_other_split(table):
    s = catalog_stats(table, by="SubCategory")
    assert s["by"] == "SubCategory"
    assert s["per_by"] == table["SubCategory"].value_counts().to_dict()
    assert s["within"] != "SubCategory" and s["within_per_by"]
    # a column name in another letter case is found too
    assert catalog_stats(table, by="gender")["by"] == "Gender"


def test_unknown_column(table):
    with pytest.raises(CatalogError, match="unknown column 'Size'.*columns are: ProductId"):
        catalog_stats(table, by="Size")


def test_generic_columns(table):
    """Another shop's catalogue: other names; ids, titles, photos and prices are not grouped."""
    other = pd.DataFrame({
        "sku": table["ProductId"],
        "shopper": table["Gender"],
        "family": table["SubCategory"],
        "shade": table["Colour"],
        "name": table["ProductTitle"],
        "picture": table["Image"],
        "price": [str(100 + i % 997) for i in range(len(table))],
    })
    assert grouping_columns(other) == ["shopper", "family", "shade"]
    s = catalog_stats(other)
    assert s["by"] == "shopper" and s["within"] == "family"
    assert s["per_by"] == {"Men": 811, "Women": 769, "Boys": 759, "Girls": 567}
    assert s["within_per_by"]["Girls"]["Dress"] == 74


def test_tiny_and_empty_cells():
    t = pd.DataFrame({"id": ["1", "2", "3"], "Gender": ["Men", "", "Women"], "Colour": ["Red", "Red", "Blue"]})
    s = catalog_stats(t)
    assert s["products"] == 3
    assert s["columns"]["Gender"] == {"distinct": 2, "missing": 1, "counts": {"Men": 1, "Women": 1}}
    assert s["within"] == "Colour" and s["within_per_by"] == {"Men": {"Red": 1}, "Women": {"Blue": 1}}
    assert "3 products" in format_stats(s)
    only_ids = catalog_stats(pd.DataFrame({"id": ["1", "2"]}))
    assert only_ids["by"] is None and only_ids["columns"] == {} and only_ids["per_by"] == {}
    assert format_stats(only_ids).startswith("2 products")


def test_format(stats):
    text = format_stats(stats)
    assert text.startswith("2906 products")
    assert "products per Gender" in text and "SubCategory per Gender" in text
    men = next(line for line in text.splitlines() if line.startswith("Men "))
    assert men.split()[:3] == ["Men", "811", "27.9%"]
    shoes = next(line for line in text.splitlines() if line.startswith("Shoes "))
    assert shoes.split() == ["Shoes", "616", "690", "0", "0", "1306"]


def test_charts(table, tmp_path):
    from PIL import Image

    paths = save_charts(table, tmp_path / "charts")
    names = {p.name for p in paths}
    assert {"products_per_gender.png", "subcategory_per_gender.png", "top_producttype.png",
            "top_colour.png", "overview.png"} <= names
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as img:
            assert img.width > 300 and img.height > 150
            assert img.convert("L").getextrema()[0] < 128  # something is drawn


def test_index_folder(demo_index):
    t = load_stats_table(demo_index)
    assert len(t) == 99
    assert not [c for c in t.columns if c.startswith("_")]
    s = catalog_stats(t)
    assert s["products"] == 99 and s["by"] == "Gender" and len(s["per_by"]) == 4


def test_cli(fashion_csv, tmp_path, capsys):
    assert main(["stats", str(fashion_csv), "--out", str(tmp_path), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["per_by"]["Girls"] == 567
    assert (tmp_path / "products_per_gender.png").stat().st_size > 1000
    assert "chart:" in out.err


def test_cli_errors(fashion_csv, tmp_path, capsys):
    assert main(["stats", str(fashion_csv), "--by", "Size"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lookalike: error: unknown column 'Size'") and "\n" not in err
    assert main(["stats", str(tmp_path / "missing.csv")]) == 1
    assert "catalogue not found" in capsys.readouterr().err


def test_cli_process(demo_index):
    """The real command: exit code 0 and a table on stdout."""
    proc = subprocess.run([sys.executable, "-m", "lookalike", "stats", str(demo_index)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("99 products")
