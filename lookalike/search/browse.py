"""Finding a product to start from in a catalogue of thousands: which columns are facets, which
are numeric ranges, which are text to search, and the products that match a text and some choices.

:class:`Facets` sorts a catalogue's columns (one row per product) into

- **facets**: text columns with few distinct values (at most :data:`MAX_FACET_VALUES`, and at
  most one for two products): Gender, SubCategory, Colour. A shop filters and browses by these.
- **ranges**: the numeric columns (the index's ``numeric_columns``): price. Filtered as
  ``LOW..HIGH``; a row without a number is outside every range (see
  :mod:`lookalike.search.conditions`), so a range left at the column's full span is no filter.
- **text**: the other text columns (ProductTitle: about one value a product; no facet, but
  searched). Photo columns are none of these.
- **steps**: the category step, broad to narrow: the split and the distribution of
  :mod:`lookalike.analysis.stats` and a finer column nested in the last (Gender → SubCategory
  → ProductType on the reference catalogue).

:class:`ProductFinder` answers "which products?" for a text and some conditions: each word of the
text must begin a word of the product's id, text or facet cells (letter case ignored; ``men``
finds "Men", not "Women"), and every condition must hold (the filters' own semantics,
:class:`~lookalike.search.filters.RowFilters`). With the products it gives each facet's counts
among the products that meet everything but that facet's own choice, so a step offers only
values that would find something.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lookalike.search.conditions import Condition, split_conditions
from lookalike.search.filters import RowFilters, numbers_of

__all__ = ["Facets", "Facet", "Range", "ProductFinder", "Found", "MAX_FACET_VALUES"]

#: a text column with more distinct values than this is searched, not offered as a filter (the
#: reference catalogue's widest facet, Colour, has 39; ProductTitle has about 2,900)
MAX_FACET_VALUES = 60


@dataclass(frozen=True)
class Facet:
    """A few-valued column: its values, most frequent first (ties by name), and their counts."""

    column: str
    values: tuple[str, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """A numeric column's span over the products that have a number (``missing`` have none)."""

    column: str
    low: float
    high: float
    missing: int = 0

    def condition(self, low: float, high: float) -> Condition | None:
        """The filter for a chosen ``low..high``: ``None`` when it spans the whole column (so
        products without a number stay), else the inclusive range."""
        if low <= self.low and high >= self.high:
            return None
        return Condition(self.column, "..", low=float(low), high=float(high))


@dataclass(frozen=True)
class Facets:
    """How a catalogue's columns can be filtered and searched (see the module docstring)."""

    facets: Mapping[str, Facet] = field(default_factory=dict)
    ranges: Mapping[str, Range] = field(default_factory=dict)
    text: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()

    @classmethod
    def of(cls, table: pd.DataFrame, *, numeric: Sequence[str] = (), skip: Sequence[str] = (),
           max_values: int = MAX_FACET_VALUES) -> "Facets":
        """The facets of a product table (one row a product, cells as text); ``numeric`` are the
        index's numeric columns, ``skip`` columns that are none of these (ids, photos)."""
        from lookalike.analysis.stats import category_steps, column_values, is_path_column

        n = len(table)
        facets: dict[str, Facet] = {}
        ranges: dict[str, Range] = {}
        text: list[str] = []
        for col in table.columns:
            if col in skip or str(col).startswith("_"):
                continue
            if col in numeric:
                nums = numbers_of(table[col].astype(str).str.strip().to_numpy())
                have = nums[~np.isnan(nums)]
                if len(have):
                    ranges[col] = Range(str(col), float(have.min()), float(have.max()), int(n - len(have)))
                continue
            filled = column_values(table, col)
            if is_path_column(filled):
                continue
            counts = filled.value_counts()
            if 1 <= len(counts) <= min(max_values, max(2, n // 2)):
                counts = counts.sort_index(kind="stable").sort_values(ascending=False, kind="stable")
                facets[str(col)] = Facet(str(col), tuple(map(str, counts.index)), tuple(int(c) for c in counts))
            elif len(counts):
                text.append(str(col))
        steps = tuple(c for c in category_steps(table[[c for c in table.columns if c in facets]]) if c in facets)
        return cls(facets, ranges, tuple(text), steps)

    def conditions(self, values: Mapping[str, Sequence[str]] | None = None,
                   ranges: Mapping[str, tuple[float, float]] | None = None) -> list[Condition]:
        """The filters for some chosen facet values (a column's values are alternatives) and
        numeric spans (one left at the column's full span is none)."""
        out = [Condition(col, "=", tuple(vals)) for col, vals in (values or {}).items() if vals]
        for col, (low, high) in (ranges or {}).items():
            c = self.ranges[col].condition(low, high) if col in self.ranges else None
            if c is not None:
                out.append(c)
        return out


@dataclass(frozen=True)
class Found:
    """The products that match (in catalogue order), and each facet's counts among the products
    meeting every choice but its own."""

    ids: list[str]
    counts: Mapping[str, dict[str, int]]

    def __len__(self) -> int:
        return len(self.ids)

    def pages(self, size: int) -> int:
        return max(1, math.ceil(len(self.ids) / size))

    def page(self, number: int, size: int) -> list[str]:
        """Page ``number`` (from 1) of ``size`` products; past the last, the last."""
        number = min(max(1, int(number)), self.pages(size))
        return self.ids[(number - 1) * size:number * size]


def _word_patterns(text: str) -> list[re.Pattern[str]]:
    return [re.compile(r"(?<!\w)" + re.escape(w)) for w in text.casefold().split()]


class ProductFinder:
    """Products of a catalogue by text and conditions (see the module docstring)."""

    def __init__(self, table: pd.DataFrame, *, id_column: str, numeric: Sequence[str] = (),
                 skip: Sequence[str] = ()) -> None:
        self.table = table.reset_index(drop=True)
        self.id_column = id_column
        self.facets = Facets.of(self.table, numeric=numeric, skip=[id_column, *skip])
        cols = [str(c) for c in self.table.columns]
        cells = {c: self.table[c].astype(str).to_numpy() for c in cols}
        self.ids = [str(x) for x in cells[id_column]]
        self._filters = RowFilters(cols, cells, self.ids, np.arange(len(self.ids)), numeric=numeric)
        searched = [id_column, *self.facets.text, *self.facets.facets]
        self._haystack = pd.Series([" ".join(row) for row in zip(*(cells[c] for c in searched))],
                                   dtype=object).str.casefold() if len(self.ids) else pd.Series([], dtype=object)

    @classmethod
    def of(cls, rec: Any) -> "ProductFinder":
        """The finder of a :class:`~lookalike.search.recommender.Recommender`'s products (one
        row each; its photo columns skipped, its numeric columns as ranges)."""
        cat = rec.settings.catalog
        return cls(rec.product_metadata[rec.columns], id_column=rec.id_column, numeric=cat.numeric_columns,
                   skip=cat.photo_columns)

    def __len__(self) -> int:
        return len(self.ids)

    def text_mask(self, text: str) -> np.ndarray:
        """The products whose id, text or facet cells hold a word starting with each word of ``text``."""
        mask = np.ones(len(self.ids), dtype=bool)
        for pattern in _word_patterns(text or ""):
            mask &= self._haystack.str.contains(pattern, regex=True).to_numpy(dtype=bool)
        return mask

    def find(self, text: str = "", *, where: Sequence[Condition] = ()) -> Found:
        """The products matching ``text`` and every condition of ``where`` (``=`` conditions on
        one column: any of their values), with each facet's counts (see :class:`Found`)."""
        equal, others = split_conditions(self._filters.check_where(list(where)))
        base = self.text_mask(text)
        own = {col: self._filters.condition_mask(Condition(col, "=", tuple(vals))) for col, vals in equal.items()}
        rest = np.ones(len(self.ids), dtype=bool)
        for c in others:
            rest &= self._filters.condition_mask(c)
        everything = base & rest
        for mask in own.values():
            everything &= mask
        counts: dict[str, dict[str, int]] = {}
        for col, facet in self.facets.facets.items():
            mask = base & rest
            for other, m in own.items():
                if other != col:
                    mask &= m
            values = self.table[col].astype(str).str.strip()[mask].value_counts()
            counts[col] = {v: int(values[v]) for v in facet.values if v in values.index}
        return Found([self.ids[i] for i in np.flatnonzero(everything)], counts)
