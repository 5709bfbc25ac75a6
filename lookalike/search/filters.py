"""Which rows a query may return: the rules of ``same``, ``where`` and query exclusion, as one
:class:`~lookalike.search.backends.Filter` per search (:meth:`RowFilters.filter`), which local back ends
ask for a row mask and remote ones (Milvus) translate.

``where`` is any form :func:`~lookalike.search.conditions.conditions_of` reads (the mapping
``{"Gender": ["Men"]}``, ``"price<50"``, :class:`~lookalike.search.conditions.Condition` values);
a numeric condition reads each column once per generation as floats (NaN: empty or not a
number, which no numeric condition matches)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lookalike.errors import InvalidQueryError
from lookalike.search.backends import Filter
from lookalike.search.conditions import Condition, Where, conditions_of, split_conditions

__all__ = ["RowFilters", "Where", "numbers_of", "numeric_columns", "describe_where"]


def _number(cell: Any) -> float:
    try:
        return float(str(cell).strip())
    except ValueError:
        return math.nan


def numbers_of(cells: np.ndarray | Sequence[Any]) -> np.ndarray:
    """Each cell as ``float(cell.strip())``, NaN where it is empty or not a number."""
    arr = np.asarray(cells)
    if arr.dtype.kind in "iufb":
        return arr.astype(np.float64)
    return np.fromiter((_number(c) for c in arr), dtype=np.float64, count=len(arr))


def numeric_columns(table: pd.DataFrame, skip: Sequence[str] = ()) -> tuple[str, ...]:
    """The columns whose non-empty cells are all numbers (at least one): what a build records."""
    return tuple(str(col) for col in table.columns if col not in skip and _all_numbers(table[col].astype(str)))


def _all_numbers(cells: pd.Series) -> bool:
    """Whether every non-empty cell is a number, and one is at least (stops at the first that isn't)."""
    seen = False
    for cell in cells:
        text = cell.strip()
        if text:
            if math.isnan(_number(text)):
                return False
            seen = True
    return seen


def describe_where(where: Where | None) -> dict[str, Any]:
    """What a query records of its ``where``: ``{"where": {col: values}}`` for the ``=``
    conditions, plus ``"conditions"`` (their text) for any other."""
    equal, others = split_conditions(conditions_of(where))
    return {"where": equal, **({"conditions": [str(c) for c in others]} if others else {})}


def _in(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    # one value: a plain comparison is several times faster than np.isin
    return values == wanted[0] if len(wanted) == 1 else np.isin(values, wanted)


class RowFilters:
    """The filters of one generation's rows (``columns`` shown, ``cells`` per column)."""

    def __init__(self, columns: list[str], cells: Mapping[str, np.ndarray], ids: list[str],
                 exact_group: np.ndarray, numeric: Sequence[str] = (), products: np.ndarray | None = None,
                 parent_column: str | None = None) -> None:
        self.columns = columns
        self.cells = cells
        self.ids = ids
        self.exact_group = exact_group
        #: the columns the build found numeric (the manifest's ``numeric_columns``)
        self.numeric = tuple(numeric)
        #: each row's product as a number, where a product may have several rows (photos)
        self.products = products
        self.max_photos = int(np.bincount(products).max()) if products is not None and len(products) else 1
        self.parent_column = parent_column if parent_column in columns else None
        self._codes: dict[str, tuple[np.ndarray, pd.Index]] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._family: tuple[np.ndarray, np.ndarray, int] | None = None
        self._members: dict[int, np.ndarray] | None = None

    @property
    def families(self) -> np.ndarray:
        """Each row's family as a number: its parent (the parent column's value), or the product
        itself when it names none. ``collapse_parent`` keeps one product of each."""
        if self.parent_column is None:
            return np.arange(len(self.ids)) if self.products is None else self.products
        return self._family_codes()[0]

    def _family_names(self, rows: Sequence[int] | np.ndarray) -> list[str]:
        """The families of some rows as text (parents, or ids where none is named)."""
        assert self.parent_column is not None
        parents = self.cells[self.parent_column]
        return list(dict.fromkeys(str(parents[r]).strip() or self.ids[r] for r in rows))

    def _not_family(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows neither naming as parent one of the query rows' families nor being one."""
        family, own, _ = self._family_codes()
        named = np.unique(family[np.asarray(rows, dtype=np.int64)])
        return ~(_in(family, named) | _in(own, named))

    def check_column(self, col: str) -> None:
        if col not in self.columns:
            raise InvalidQueryError(f"unknown column {col!r}; columns are: {', '.join(self.columns)}")

    def check_where(self, where: Where | None) -> tuple[Condition, ...]:
        """``where`` as conditions; refused, before any search, when it can't be parsed, names an
        unknown column, or compares numbers on a column that holds none."""
        conditions = conditions_of(where)
        for c in conditions:
            self.check_column(c.column)
            if c.numeric and c.column not in self.numeric and np.isnan(self.numbers(c.column)).all():
                known = f"; numeric columns are: {', '.join(self.numeric)}" if self.numeric else ""
                raise InvalidQueryError(f"{str(c)!r} compares numbers, but column {c.column!r} holds none{known}")
        return conditions

    def numbers(self, col: str) -> np.ndarray:
        """Each row's value of ``col`` as a float (NaN: empty or not a number), made once."""
        if col not in self._numbers:
            self.check_column(col)
            self._numbers[col] = numbers_of(self.cells[col])
        return self._numbers[col]

    def condition_mask(self, c: Condition) -> np.ndarray:
        """The rows that meet one condition."""
        if not c.numeric:
            codes, uniques = self.codes(c.column)
            inside = np.isin(codes, np.flatnonzero(uniques.isin(list(c.values))))
            return inside if c.op == "=" else ~inside
        x = self.numbers(c.column)
        mask = ~np.isnan(x)
        if c.low is not None:
            mask &= (x > c.low) if c.op == ">" else (x >= c.low)
        if c.high is not None:
            mask &= (x < c.high) if c.op == "<" else (x <= c.high)
        return mask

    def codes(self, col: str) -> tuple[np.ndarray, pd.Index]:
        """Each row's value of ``col`` as a small integer, and the values."""
        if col not in self._codes:
            self.check_column(col)
            codes, uniques = pd.factorize(self.cells[col], sort=False)
            self._codes[col] = (codes.astype(np.int64), pd.Index(uniques))
        return self._codes[col]

    def where_mask(self, where: Where | None) -> np.ndarray | None:
        """Rows that meet every condition (``=`` on one column: any of its values)."""
        equal, others = split_conditions(conditions_of(where))
        if not equal and not others:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        for col, values in equal.items():
            mask &= self.condition_mask(Condition(col, "=", tuple(values)))
        for c in others:
            mask &= self.condition_mask(c)
        return mask

    def _twins(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of the query products and of every product with a photo byte-identical to one of theirs."""
        groups = self.exact_group
        twins = _in(groups, np.unique(groups[list(rows)]))
        if self.products is not None:  # a product is left out whole, whichever of its photos matched
            twins = _in(self.products, np.unique(self.products[twins]))
        return twins

    def allowed_for(self, rows: Sequence[int] | np.ndarray, same: Sequence[str], base: np.ndarray | None,
                    siblings: bool = True, twins: np.ndarray | None = None) -> np.ndarray:
        """Rows a query may return: not a query product nor one with a byte-identical photo
        (``twins``, when the caller has them already), matching the query's values of the
        ``same`` columns, and inside ``base``; without ``siblings``, not a product of the query
        products' parents (nor the parent)."""
        rows = list(rows)
        allowed = ~(self._twins(rows) if twins is None else twins)
        if base is not None:
            allowed &= base
        if not siblings and self.parent_column is not None:
            allowed &= self._not_family(rows)
        for col in same:
            codes, _ = self.codes(col)
            allowed &= _in(codes, np.unique(codes[rows]))
        return allowed

    def pair_masks(self, rows: Sequence[np.ndarray], same: Sequence[str], base: np.ndarray | None,
                   siblings: bool = True) -> np.ndarray:
        """:meth:`allowed_for` for each query product alone (its rows), one mask per product
        (``export``), made with whole-array steps: a product's twins are few, the rows many."""
        n = len(self.ids)
        product = self.products if self.products is not None else np.arange(n, dtype=np.int64)
        members = self._group_members()
        excluded = np.zeros((len(rows), int(product.max(initial=-1)) + 1), dtype=bool)
        for j, r in enumerate(rows):  # the query product and every one with a byte-identical photo
            for g in np.unique(self.exact_group[np.asarray(r, dtype=np.int64)]):
                excluded[j, members[int(g)]] = True
        allowed = ~excluded[:, product]
        if base is not None:
            allowed &= base[None, :]
        first = np.array([int(np.asarray(r)[0]) for r in rows], dtype=np.int64)
        for col in same:
            codes, _ = self.codes(col)
            allowed &= codes[None, :] == codes[first][:, None]
        if not siblings and self.parent_column is not None:
            family, own, count = self._family_codes()
            named = np.zeros((len(rows), count), dtype=bool)
            for j, r in enumerate(rows):
                named[j, family[np.asarray(r, dtype=np.int64)]] = True
            allowed &= ~(named[:, family] | named[:, own])
        return allowed

    def _group_members(self) -> dict[int, np.ndarray]:
        """Each byte-identical photo group's products, made once."""
        if self._members is None:
            product = self.products if self.products is not None else np.arange(len(self.ids), dtype=np.int64)
            order = np.argsort(self.exact_group, kind="stable")
            groups, starts = np.unique(self.exact_group[order], return_index=True)
            parts = np.split(product[order], starts[1:])
            self._members = {int(g): np.unique(p) for g, p in zip(groups, parts)}
        return self._members

    def _family_codes(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Each row's family (its parent, or its id when it names none) and its id, as codes of
        one numbering, and how many codes: a row is a query's sibling when either is one of the
        query's families. Made once per generation."""
        assert self.parent_column is not None
        if self._family is None:
            names = [str(p).strip() or pid for p, pid in zip(self.cells[self.parent_column], self.ids)]
            codes, uniques = pd.factorize(np.asarray([*names, *self.ids], dtype=object))
            n = len(self.ids)
            self._family = (codes[:n].astype(np.int64), codes[n:].astype(np.int64), len(uniques))
        return self._family

    def filter(self, rows: Sequence[int] | None, same: Sequence[str], where: Where | None,
               siblings: bool = False, exclude: Sequence[int] | np.ndarray = (),
               hide: Sequence[int] | np.ndarray = ()) -> Filter:
        """The one :class:`Filter` of a search: for the query products' ``rows`` (``None``: a photo
        query), their ``same`` values, no product of theirs nor one with a byte-identical photo,
        nor (unless ``siblings``) one of their parents', inside ``where``. Its mask
        (:meth:`allowed_for`) is computed only if a back end asks. ``exclude``: rows of more products
        never to return (the negative examples of "less like this"), with their byte-identical twins;
        ``hide``: rows of products never to return, alone (blocked by a rule)."""
        conditions = conditions_of(where)
        others = split_conditions(conditions)[1]
        away = np.asarray(exclude, dtype=np.int64)
        hidden = np.asarray(hide, dtype=np.int64)
        hidden_ids = list(dict.fromkeys(self.ids[r] for r in hidden))
        if rows is None:
            return Filter(where_values(conditions), list(dict.fromkeys([*self._twin_ids(away), *hidden_ids])),
                          conditions=others,
                          mask=lambda: self._hidden(self._without(self.where_mask(conditions), away), hidden))
        twins = self._twins(rows)  # once: the excluded ids and the mask both need them
        values, excluded = self._expressed(rows, same, conditions, twins)
        excluded = list(dict.fromkeys([*excluded, *self._twin_ids(away), *hidden_ids]))
        if not siblings and self.parent_column is not None:
            families = self._family_names(rows)
            others = (*others, Condition(self.parent_column, "!=", tuple(families)))
            excluded = list(dict.fromkeys([*excluded, *families]))
        return Filter(values, excluded, conditions=others,
                      mask=lambda: self._hidden(self._without(self.allowed_for(
                          rows, same, self.where_mask(conditions), siblings, twins), away), hidden))

    def _twin_ids(self, rows: np.ndarray) -> list[str]:
        """The products of ``rows`` and those with a byte-identical photo, each once."""
        return list(dict.fromkeys(self.ids[r] for r in np.flatnonzero(self._twins(rows)))) if len(rows) else []

    def _without(self, mask: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
        """``mask`` (None: every row) less ``rows``' products and their twins."""
        if not len(rows):
            return mask
        keep = ~self._twins(rows)
        return keep if mask is None else mask & keep

    def _hidden(self, mask: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
        """``mask`` (None: every row) less the products of ``rows`` (their twins stay)."""
        if not len(rows):
            return mask
        keep = ~self._product_rows(rows)
        return keep if mask is None else mask & keep

    def _product_rows(self, rows: np.ndarray) -> np.ndarray:
        """Every row of the products of ``rows``."""
        if self.products is None:
            out = np.zeros(len(self.ids), dtype=bool)
            out[rows] = True
            return out
        return _in(self.products, np.unique(self.products[rows]))

    def pair_filter(self, rows: Sequence[np.ndarray], same: Sequence[str], where: Where | None,
                    siblings: bool = False, hide: Sequence[np.ndarray] | None = None) -> Filter:
        """One query per product (its rows), each with its own exclusions and ``same`` values
        (``export``): a per-query mask, which no expression says. ``hide``: per query, rows of
        products it never returns (blocked)."""
        def masks() -> np.ndarray:
            allowed = self.pair_masks(rows, same, self.where_mask(where), siblings)
            for j, h in enumerate(hide or ()):
                if len(h):
                    allowed[j] &= ~self._product_rows(np.asarray(h, dtype=np.int64))
            return allowed

        return Filter(mask=masks, expressible=False)

    def _expressed(self, rows: Sequence[int], same: Sequence[str], where: Where | None,
                   twins: np.ndarray) -> tuple[dict[str, list[str]], list[str]]:
        """What :meth:`allowed_for` allows as ``where`` values and excluded product ids
        (``twins``: :meth:`_twins` of ``rows``)."""
        values = where_values(where)
        for col in same:
            theirs = list(dict.fromkeys(str(self.cells[col][r]) for r in rows))
            values[col] = [v for v in values[col] if v in theirs] if col in values else theirs
        return values, list(dict.fromkeys(self.ids[r] for r in np.flatnonzero(twins)))


def where_values(where: Where | None) -> dict[str, list[str]]:
    """The ``=`` conditions of ``where`` as column → allowed values, spelled out as text."""
    return split_conditions(conditions_of(where))[0]
