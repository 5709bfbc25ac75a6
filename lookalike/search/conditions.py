"""Filter conditions: one typed value per condition, parsed from text by one function that the
CLI (``--where``), the HTTP service (``where=``) and the library (``where=[...]``) share.

The text forms::

    COL=V1,V2      the column holds one of the values (``COL:V1,V2`` too, never a range)
    COL!=V1,V2     the column holds none of the values (text or numbers)
    COL<N  COL<=N  COL>N  COL>=N      a numeric comparison
    COL=LOW..HIGH  an inclusive numeric range; ``LOW..`` and ``..HIGH`` leave an end open

A numeric condition reads each cell as ``float(cell.strip())`` (so ``1e3`` and ``-2.5`` are
numbers, ``1,5`` and ``12 EUR`` are not): a row whose cell is empty or not a number never
matches one. Several ``=`` conditions on one column allow any of their values (as a repeated
``--where Colour=Blue --where Colour=Navy`` always did); every other condition must hold too
(AND). ``COL=LOW..HIGH`` is a range when its given ends are numbers; a text value that looks
like one is matched with ``COL:10..50`` or the mapping form ``{"COL": ["10..50"]}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, Union

from lookalike.errors import InvalidQueryError

__all__ = ["Condition", "Where", "parse_condition", "conditions_of", "split_conditions", "OPERATORS", "NUMERIC_OPERATORS"]

#: every operator; the ones after ``!=`` compare numbers (``..`` is a range)
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "..")
NUMERIC_OPERATORS = OPERATORS[2:]
_OP = re.compile(r"<=|>=|!=|<|>|=|:")
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(rf"\s*({_NUMBER})?\s*\.\.\s*({_NUMBER})?\s*")
_SYNTAX = "COLUMN!=VALUE, COLUMN<N (<=, >, >=) or COLUMN=LOW..HIGH"


@dataclass(frozen=True)
class Condition:
    """One condition on a column: ``op`` ``=`` / ``!=`` with text ``values``, or a numeric one
    (``<``, ``<=``, ``>``, ``>=`` with the bound in ``high`` or ``low``; ``..`` an inclusive range,
    either end ``None`` for open). Build it directly or from text with :func:`parse_condition`."""

    column: str
    op: str
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise InvalidQueryError(f"unknown filter operator {self.op!r}; choose one of {', '.join(OPERATORS)}")
        if isinstance(self.values, str):
            object.__setattr__(self, "values", (self.values,))
        object.__setattr__(self, "values", tuple(str(v) for v in self.values))
        for end in (self.low, self.high):
            if end is not None and (isinstance(end, bool) or not isinstance(end, (int, float)) or math.isnan(end)):
                raise InvalidQueryError(f"a filter bound must be a number, not {end!r}")
        wants = {"<": (False, True), "<=": (False, True), ">": (True, False), ">=": (True, False)}.get(self.op)
        if wants is not None and ((self.low is not None, self.high is not None) != wants):
            raise InvalidQueryError(f"{self.column}{self.op} needs one bound, in {'low' if wants[0] else 'high'}")
        if self.op == "..":
            if self.low is None and self.high is None:
                raise InvalidQueryError(f"the range on {self.column!r} needs at least one end")
            if self.low is not None and self.high is not None and self.low > self.high:
                raise InvalidQueryError(f"{self}: the low end is above the high end")

    @property
    def numeric(self) -> bool:
        """Whether the condition compares numbers (rows without a number never match it)."""
        return self.op in NUMERIC_OPERATORS

    def __str__(self) -> str:
        if not self.numeric:
            return f"{self.column}{self.op}{','.join(self.values)}"
        if self.op == "..":
            return f"{self.column}={_num(self.low)}..{_num(self.high)}"
        return f"{self.column}{self.op}{_num(self.high if self.op.startswith('<') else self.low)}"


def _num(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x)))


def _bound(text: str, item: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise InvalidQueryError(f"{item!r}: {text.strip()!r} is not a number") from None
    if math.isnan(value):
        raise InvalidQueryError(f"{item!r}: {text.strip()!r} is not a number")
    return value


def parse_condition(text: str, *, split: bool = True, name: str = "a filter") -> Condition:
    """One condition from its text form (see the module docstring). ``split``: values after
    ``=``, ``:`` or ``!=`` are a comma-separated list, each stripped (the CLI and the library);
    without it the rest of the text is one value as it is (the HTTP ``where`` parameter, one
    value each). ``name`` is how an error names the option (``--where``)."""
    if not isinstance(text, str):
        raise InvalidQueryError(f"{name} is text such as 'price<50', not {text!r}")
    m = _OP.search(text)
    if m is None or not text[: m.start()].strip():
        first = "COLUMN=VALUE[,VALUE2] (or COLUMN:VALUE)" if split else "COLUMN:VALUE (or COLUMN=VALUE)"
        raise InvalidQueryError(f"{name} takes {first}, {_SYNTAX}, not {text!r}")
    column, op, rest = text[: m.start()].strip(), m.group(), text[m.end() :]
    if op in ("<", "<=", ">", ">="):
        bound = _bound(rest, text)
        return Condition(column, op, low=bound if op[0] == ">" else None, high=bound if op[0] == "<" else None)
    if op == "=":
        found = _RANGE.fullmatch(rest)
        if found is not None and (found.group(1) or found.group(2)):
            low, high = (None if g is None else _bound(g, text) for g in found.groups())
            return Condition(column, "..", low=low, high=high)
    op = "=" if op == ":" else op
    values = [v.strip() for v in rest.split(",")] if split else [rest]
    return Condition(column, op, tuple(values))


#: what a ``where`` may be: the mapping form ``{"Gender": ["Men"]}`` (column → allowed values),
#: a condition as text or a :class:`Condition`, or a sequence of those
Where = Union[Mapping[str, Union[str, Sequence[str]]], str, Condition, Sequence[Union[str, Condition]]]


def conditions_of(where: Where | None) -> tuple[Condition, ...]:
    """Any form of ``where`` as conditions (text parsed with commas splitting the values)."""
    if not where:
        return ()
    if isinstance(where, Mapping):
        return tuple(Condition(str(col), "=", (vals,) if isinstance(vals, str) else tuple(vals))
                     for col, vals in where.items())
    items: Iterable[str | Condition] = [where] if isinstance(where, (str, Condition)) else where
    return tuple(c if isinstance(c, Condition) else parse_condition(c) for c in items)


def split_conditions(conditions: Sequence[Condition]) -> tuple[dict[str, list[str]], tuple[Condition, ...]]:
    """The ``=`` conditions as column → allowed values (one column's lists joined: any of them),
    and every other condition."""
    equal: dict[str, list[str]] = {}
    for c in conditions:
        if c.op == "=":
            equal[c.column] = list(dict.fromkeys([*equal.get(c.column, ()), *c.values]))
    return equal, tuple(c for c in conditions if c.op != "=")
