"""Filter conditions: the one parser the CLI, the server and the library share, and the row
masks :class:`~lookalike.search.filters.RowFilters` makes of them (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lookalike import Condition, InvalidQueryError, parse_condition
from lookalike.folder.manifest import Manifest
from lookalike.search.conditions import conditions_of, split_conditions
from lookalike.search.filters import RowFilters, describe_where, numbers_of, numeric_columns


@pytest.mark.parametrize("text, want", [
    ("price<50", Condition("price", "<", high=50.0)),
    ("price<=5.5", Condition("price", "<=", high=5.5)),
    (" price > -1e3 ", Condition("price", ">", low=-1000.0)),
    ("price>=0", Condition("price", ">=", low=0.0)),
    ("price=10..50", Condition("price", "..", low=10.0, high=50.0)),
    ("price = 10 .. 50", Condition("price", "..", low=10.0, high=50.0)),
    ("price=10..", Condition("price", "..", low=10.0)),
    ("price=..50", Condition("price", "..", high=50.0)),
    ("Gender=Men, Women", Condition("Gender", "=", ("Men", "Women"))),
    ("Gender:Men", Condition("Gender", "=", ("Men",))),
    ("Size:10..12", Condition("Size", "=", ("10..12",))),  # a colon is always text
    ("Colour!=Blue,Navy", Condition("Colour", "!=", ("Blue", "Navy"))),
    ("Base Colour=Navy Blue", Condition("Base Colour", "=", ("Navy Blue",))),
    ("Title=a<b", Condition("Title", "=", ("a<b",))),  # the first operator splits
    ("Usage=", Condition("Usage", "=", ("",))),
])
def test_good_syntax(text, want):
    assert parse_condition(text) == want


def test_text_forms_read_back():
    for text in ("price<50", "price<=5.5", "price>-3", "price>=0", "price=10..50", "price=10..", "price=..50",
                 "Gender=Men,Women", "Colour!=Blue"):
        assert str(parse_condition(text)) == text
        assert parse_condition(str(parse_condition(text))) == parse_condition(text)


def test_one_value_each_without_split():
    """The HTTP parameter: one value each, as it is (a comma is part of the value)."""
    assert parse_condition("Colour:Blue,Navy", split=False) == Condition("Colour", "=", ("Blue,Navy",))
    assert parse_condition("Colour: Blue", split=False).values == (" Blue",)
    assert parse_condition("price<50", split=False) == Condition("price", "<", high=50.0)


@pytest.mark.parametrize("text, message", [
    ("Gender", "takes COLUMN=VALUE"),
    ("=Men", "takes COLUMN=VALUE"),
    (":Men", "takes COLUMN=VALUE"),
    ("price<abc", "'abc' is not a number"),
    ("price<", "'' is not a number"),
    ("price>nan", "'nan' is not a number"),
    ("price<1,5", "'1,5' is not a number"),  # no comma decimals
    ("price=50..10", "the low end is above the high end"),
])
def test_bad_syntax_is_one_line(text, message):
    with pytest.raises(InvalidQueryError, match=message) as caught:
        parse_condition(text)
    assert "\n" not in str(caught.value)


def test_the_option_is_named_in_the_error():
    with pytest.raises(InvalidQueryError, match="^--where takes COLUMN=VALUE"):
        parse_condition("Gender", name="--where")
    with pytest.raises(InvalidQueryError, match="^where takes COLUMN:VALUE"):
        parse_condition("Gender", split=False, name="where")


def test_a_condition_checks_itself():
    with pytest.raises(InvalidQueryError, match="unknown filter operator"):
        Condition("price", "~", low=1.0)
    with pytest.raises(InvalidQueryError, match="needs one bound"):
        Condition("price", "<", low=1.0)
    with pytest.raises(InvalidQueryError, match="at least one end"):
        Condition("price", "..")
    with pytest.raises(InvalidQueryError, match="must be a number"):
        Condition("price", ">", low=math.nan)
    assert Condition("Gender", "=", "Men").values == ("Men",)
    assert Condition("price", "<", high=3).numeric and not Condition("Gender", "!=", ("Men",)).numeric


def test_every_form_of_where():
    old = {"Gender": ["Men", "Women"], "Colour": "Blue"}
    assert conditions_of(old) == (Condition("Gender", "=", ("Men", "Women")), Condition("Colour", "=", ("Blue",)))
    assert conditions_of("price<5") == (Condition("price", "<", high=5.0),)
    mixed = conditions_of(["Colour=Blue", Condition("price", "..", low=1.0), "Colour=Navy", "Colour!=Red"])
    equal, others = split_conditions(mixed)
    assert equal == {"Colour": ["Blue", "Navy"]}  # several = on one column: any of them
    assert [str(c) for c in others] == ["price=1..", "Colour!=Red"]
    assert conditions_of(None) == conditions_of({}) == conditions_of([]) == ()
    assert describe_where(old) == {"where": {"Gender": ["Men", "Women"], "Colour": ["Blue"]}}
    assert describe_where(["price<5", "Gender=Men"]) == {"where": {"Gender": ["Men"]}, "conditions": ["price<5"]}


# -- row masks ---------------------------------------------------------------------------
CELLS = {
    "id": np.array(["a", "b", "c", "d", "e", "f"], dtype=object),
    "price": np.array(["10", " 25.5 ", "", "n/a", "1e2", "-3"], dtype=object),
    "kind": np.array(["shoe", "shoe", "bag", "bag", "hat", "shoe"], dtype=object),
    "stock": np.array([0, 5, 2, 7, 1, 3]),  # a column stored as numbers
}


@pytest.fixture
def filters() -> RowFilters:
    return RowFilters(list(CELLS), CELLS, list(CELLS["id"]), np.arange(6), numeric=("price", "stock"))


def _rows(filters: RowFilters, where) -> list[str]:
    mask = filters.where_mask(filters.check_where(where))
    return [filters.ids[i] for i in np.flatnonzero(mask)]


def test_numbers_are_floats_of_the_stripped_text():
    x = numbers_of(CELLS["price"])
    assert x[[0, 1, 4, 5]].tolist() == [10.0, 25.5, 100.0, -3.0] and np.isnan(x[[2, 3]]).all()
    assert numbers_of(CELLS["stock"]).dtype == np.float64


def test_numeric_masks_exclude_rows_without_a_number(filters):
    assert _rows(filters, "price<25.5") == ["a", "f"]
    assert _rows(filters, "price<=25.5") == ["a", "b", "f"]
    assert _rows(filters, "price>10") == ["b", "e"]
    assert _rows(filters, "price>=10") == ["a", "b", "e"]
    assert _rows(filters, "price=0..100") == ["a", "b", "e"]
    assert _rows(filters, "price=..0") == ["f"]
    assert _rows(filters, "stock=2..5") == ["b", "c", "f"]
    # != is a text condition: rows without a number stay
    assert _rows(filters, "price!=10") == ["b", "c", "d", "e", "f"]
    assert _rows(filters, ["price>0", "kind!=hat"]) == ["a", "b"]
    assert _rows(filters, ["kind=shoe", "kind=hat", "price<50"]) == ["a", "b", "f"]
    assert _rows(filters, {"kind": ["bag"]}) == ["c", "d"]


def test_a_filter_carries_its_conditions(filters):
    f = filters.filter([0], (), ["kind=shoe", "price<50", "kind!=bag"])
    assert f.where == {"kind": ["shoe"]} and [str(c) for c in f.conditions] == ["price<50", "kind!=bag"]
    assert f.exclude_ids == ("a",)
    assert np.flatnonzero(f.mask()).tolist() == [1, 5]
    assert "price<50" in repr(f)


def test_numeric_filters_on_columns_without_numbers_are_refused(filters):
    with pytest.raises(InvalidQueryError, match="column 'kind' holds none; numeric columns are: price, stock"):
        filters.check_where("kind<3")
    with pytest.raises(InvalidQueryError, match="unknown column 'size'"):
        filters.check_where("size<3")
    with pytest.raises(InvalidQueryError, match="unknown column 'size'"):
        filters.check_where({"size": "3"})
    # a column the build did not find numeric, holding some numbers, may be compared
    mixed = RowFilters(list(CELLS), CELLS, list(CELLS["id"]), np.arange(6))
    assert [c.column for c in mixed.check_where("price<3")] == ["price"]


def test_numeric_columns_of_a_table():
    import pandas as pd

    table = pd.DataFrame({"id": ["1", "2", "3"], "price": ["1.5", "", " 2 "], "name": ["a", "2", "c"],
                          "empty": ["", "", ""], "image": ["1.jpg", "2.jpg", "3.jpg"]})
    assert numeric_columns(table, skip=("image",)) == ("id", "price")


def test_the_manifest_records_numeric_columns_and_older_ones_have_none():
    record = {"model": {"name": "m", "dim": 4}, "catalog": {"id_column": "id", "columns": ["id", "price"]},
              "metric": "cosine", "dim": 4}
    old = Manifest.from_json(record)
    assert old.catalog.numeric_columns == ()
    new = old.with_catalog(numeric_columns=("price",))
    assert Manifest.from_json(new.to_json()).catalog.numeric_columns == ("price",)


def test_milvus_expresses_not_equal_and_leaves_numbers_to_the_oracle(filters):
    """Milvus keeps columns as text: != goes into its expression (``not in``), a numeric
    condition makes the search run on the exact oracle (``expressible`` is False)."""
    from lookalike.search.backends.milvus import expressible, expression

    fields = {"kind": "c_kind", "price": "c_price"}
    text = filters.filter([0], (), ["kind=shoe", 'kind!=bag,a"b'])
    assert expressible(text)
    assert expression(text, fields) == ('(c_kind in ["shoe"]) and (pk not in ["a"]) and '
                                        '(c_kind not in ["bag", "a%22b"])')
    numeric = filters.filter([0], (), ["kind=shoe", "price<50"])
    assert not expressible(numeric) and expressible(None)
    with pytest.raises(InvalidQueryError, match="compares numbers"):
        expression(numeric, fields)
