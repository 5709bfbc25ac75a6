"""Which rows a query may return: the rules of ``same``, ``where`` and query exclusion, as one
:class:`~lookalike.search.backends.Filter` per search (:meth:`RowFilters.filter`), which local back ends
ask for a row mask and remote ones (Milvus) translate."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lookalike.errors import InvalidQueryError
from lookalike.search.backends import Filter

__all__ = ["RowFilters", "Where"]

Where = Mapping[str, "str | Sequence[str]"]


def _in(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    # one value: a plain comparison is several times faster than np.isin
    return values == wanted[0] if len(wanted) == 1 else np.isin(values, wanted)


class RowFilters:
    """The filters of one generation's rows (``columns`` shown, ``cells`` per column)."""

    def __init__(self, columns: list[str], cells: Mapping[str, np.ndarray], ids: list[str],
                 exact_group: np.ndarray) -> None:
        self.columns = columns
        self.cells = cells
        self.ids = ids
        self.exact_group = exact_group
        self._codes: dict[str, tuple[np.ndarray, pd.Index]] = {}

    def check_column(self, col: str) -> None:
        if col not in self.columns:
            raise InvalidQueryError(f"unknown column {col!r}; columns are: {', '.join(self.columns)}")

    def check_where(self, where: Where | None) -> None:
        """Refuse a ``where`` that names an unknown column, before any search."""
        for col in where or {}:
            self.check_column(col)

    def codes(self, col: str) -> tuple[np.ndarray, pd.Index]:
        """Each row's value of ``col`` as a small integer, and the values."""
        if col not in self._codes:
            self.check_column(col)
            codes, uniques = pd.factorize(self.cells[col], sort=False)
            self._codes[col] = (codes.astype(np.int64), pd.Index(uniques))
        return self._codes[col]

    def where_mask(self, where: Where | None) -> np.ndarray | None:
        """Rows whose columns hold one of the given values (columns combine with AND)."""
        if not where:
            return None
        mask = np.ones(len(self.ids), dtype=bool)
        for col, values in where.items():
            codes, uniques = self.codes(col)
            vals = [values] if isinstance(values, str) else list(values)
            wanted = np.flatnonzero(uniques.isin([str(v) for v in vals]))  # the codes of those values
            mask &= np.isin(codes, wanted)
        return mask

    def allowed_for(self, rows: Sequence[int], same: Sequence[str], base: np.ndarray | None) -> np.ndarray:
        """Rows a query may return: not a query product nor a byte-identical photo of one,
        matching the query's values of the ``same`` columns, and inside ``base``."""
        rows = list(rows)
        groups = self.exact_group
        allowed = ~_in(groups, np.unique(groups[rows]))
        if base is not None:
            allowed &= base
        for col in same:
            codes, _ = self.codes(col)
            allowed &= _in(codes, np.unique(codes[rows]))
        return allowed

    def pair_masks(self, rows: np.ndarray, same: Sequence[str], base: np.ndarray | None) -> np.ndarray:
        """:meth:`allowed_for` for each row alone, one mask per row (``export``)."""
        groups = self.exact_group
        allowed = groups[None, :] != groups[rows][:, None]
        if base is not None:
            allowed &= base[None, :]
        for col in same:
            codes, _ = self.codes(col)
            allowed &= codes[None, :] == codes[rows][:, None]
        return allowed

    def filter(self, rows: Sequence[int] | None, same: Sequence[str], where: Where | None) -> Filter:
        """The one :class:`Filter` of a search: for the query products ``rows`` (``None``: a photo
        query), their ``same`` values and no product of theirs nor a byte-identical photo of one,
        inside ``where``. Its mask (:meth:`allowed_for`) is computed only if a back end asks."""
        if rows is None:
            return Filter(where_values(where), mask=lambda: self.where_mask(where))
        return Filter(*self._expressed(rows, same, where), mask=lambda: self.allowed_for(rows, same,
                                                                                           self.where_mask(where)))

    def pair_filter(self, rows: np.ndarray, same: Sequence[str], where: Where | None) -> Filter:
        """One query per row, each with its own exclusions and ``same`` values (``export``): a
        per-query mask, which no expression says."""
        return Filter(mask=lambda: self.pair_masks(rows, same, self.where_mask(where)), expressible=False)

    def _expressed(self, rows: Sequence[int], same: Sequence[str],
                   where: Where | None) -> tuple[dict[str, list[str]], list[str]]:
        """What :meth:`allowed_for` allows as ``where`` values and excluded ids."""
        values = where_values(where)
        for col in same:
            theirs = list(dict.fromkeys(str(self.cells[col][r]) for r in rows))
            values[col] = [v for v in values[col] if v in theirs] if col in values else theirs
        groups = self.exact_group
        twins = np.flatnonzero(_in(groups, np.unique(groups[list(rows)])))
        return values, [self.ids[r] for r in twins]


def where_values(where: Where | None) -> dict[str, list[str]]:
    """``where`` with every value list spelled out as text."""
    return {col: ([v] if isinstance(v, str) else [str(x) for x in v]) for col, v in (where or {}).items()}
