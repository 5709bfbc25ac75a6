"""Finding a product to start from (lookalike.search.browse) on the real catalogues: the
2,906-product reference set and store-demos (prices)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from lookalike.errors import InvalidQueryError
from lookalike.reading.catalog import read_table
from lookalike.search.browse import MAX_FACET_VALUES, Facets, ProductFinder
from lookalike.search.conditions import Condition


@pytest.fixture(scope="module")
def fashion(fashion_dir) -> pd.DataFrame:
    return read_table(fashion_dir / "fashion.csv")


@pytest.fixture(scope="module")
def finder(fashion) -> ProductFinder:
    return ProductFinder(fashion, id_column="ProductId", skip=["Image", "ImageURL"])


def test_few_valued_columns_are_facets_and_titles_are_text(finder, fashion):
    facets = finder.facets
    assert list(facets.facets) == ["Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage"]
    assert facets.text == ("ProductTitle",)  # about 2,900 values: searched, never a filter
    assert fashion["ProductTitle"].nunique() > MAX_FACET_VALUES
    assert facets.ranges == {}
    assert facets.steps == ("Gender", "SubCategory", "ProductType")
    gender = facets.facets["Gender"]
    assert dict(zip(gender.values, gender.counts)) == {"Men": 811, "Women": 769, "Boys": 759, "Girls": 567}
    # photo columns are none of these, even when not named as skipped
    assert "ImageURL" not in Facets.of(fashion, skip=["ProductId"]).text


def test_men_then_shoes_then_a_type(finder, fashion):
    men = finder.find(where=[Condition("Gender", "=", ("Men",))])
    assert len(men) == 811
    # the next step offers the subcategories men's products have, with their counts
    want = fashion[fashion.Gender == "Men"].SubCategory.value_counts().to_dict()
    assert men.counts["SubCategory"] == want
    shoes = finder.find(where=[Condition("Gender", "=", ("Men",)), Condition("SubCategory", "=", ("Shoes",))])
    assert shoes.ids == fashion[(fashion.Gender == "Men") & (fashion.SubCategory == "Shoes")].ProductId.tolist()
    # a facet's own counts leave out its own choice: the other genders' shoes are still offered
    assert shoes.counts["Gender"] == fashion[fashion.SubCategory == "Shoes"].Gender.value_counts().to_dict()
    types = shoes.counts["ProductType"]
    assert set(types) == set(fashion[(fashion.Gender == "Men") & (fashion.SubCategory == "Shoes")].ProductType)
    formal = finder.find(where=finder.facets.conditions({"Gender": ["Men"], "SubCategory": ["Shoes"],
                                                        "ProductType": ["Formal Shoes"]}))
    assert 0 < len(formal) == types["Formal Shoes"] < len(shoes)
    assert shoes.pages(12) == -(-len(shoes) // 12) and shoes.page(2, 12) == shoes.ids[12:24]
    assert shoes.page(999, 12) == shoes.ids[(shoes.pages(12) - 1) * 12:]


def test_text_finds_words_in_titles_and_facets(finder, fashion):
    found = finder.find("blue")
    text = (fashion.ProductTitle + " " + fashion.Colour).str.casefold()
    assert found.ids == fashion[text.str.contains(r"(?<!\w)blue")].ProductId.tolist()
    assert len(found) > 50
    # each word must start a word: "men" is Men, never Women
    men = finder.find("men formal")
    cells = fashion.set_index("ProductId").astype(str)
    assert men.ids and all(re.search(r"(?<!\w)men", " ".join(cells.loc[p]).casefold())
                           and re.search(r"(?<!\w)formal", " ".join(cells.loc[p]).casefold()) for p in men.ids)
    assert "Women" not in men.counts["Gender"]
    assert "Formal Shoes" in men.counts["ProductType"] and "Flats" not in men.counts["ProductType"]
    # text and a step together; an id is found by itself
    black = finder.find("BLACK", where=[Condition("Gender", "=", ("Women",))])
    assert black.ids and all(fashion.set_index("ProductId").loc[p, "Gender"] == "Women" for p in black.ids)
    assert finder.find("13683").ids == ["13683"]
    assert finder.find("no-such-word-anywhere").ids == []


def test_unknown_column_is_refused(finder):
    with pytest.raises(InvalidQueryError, match="unknown column"):
        finder.find(where=[Condition("Brand", "=", ("Acme",))])


def test_prices_are_a_range_on_store_demos(store_index):
    from lookalike import Recommender

    rec = Recommender.load(store_index)
    finder = ProductFinder.of(rec)
    facets = finder.facets
    price = facets.ranges["price"]
    assert (price.low, price.high, price.missing) == (16.51, 2000.0, 0)
    assert "price" not in facets.facets and "name" in facets.text
    assert set(facets.facets) == {"platform", "category"}
    assert facets.steps == ("platform", "category")
    assert facets.conditions(ranges={"price": (price.low, price.high)}) == []  # the full span is no filter
    where = facets.conditions({"platform": ["opencart"]}, {"price": (50, 300)})
    found = finder.find(where=where)
    table = rec.product_metadata
    prices = table.price.astype(float)
    assert found.ids == table[(prices >= 50) & (prices <= 300) & (table.platform == "opencart")].product_id.tolist()
    # the same conditions filter recommendations
    results = rec.similar(found.ids[0], k=5, where=where)
    assert results.ids and all(50 <= float(r.metadata["price"]) <= 300 for r in results)
    assert finder.find("macbook").ids == ["oc-43", "oc-44", "oc-45"]
