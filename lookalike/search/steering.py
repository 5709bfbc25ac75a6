"""Steering a query beyond "what looks nearest": boosts, caps per column, diversity, pinned and
blocked pairs, and each result's score in parts.

Boosts (``--boost``, ``boost=[...]``), each ``TARGET:OP WEIGHT``::

    in_stock=yes:+0.05    add 0.05 to the score of a product that meets the condition
    Colour=Black:*0.9     multiply its score by 0.9 where the condition holds
    popularity:+0.001     add 0.001 × popularity (a numeric column; an empty cell adds nothing)
    rating:*0.1           multiply by 1 + 0.1 × rating (an empty cell: × 1)

``TARGET`` is a numeric column or any filter condition (:mod:`lookalike.search.conditions`:
``price<50``, ``Brand=Acme,Zeta``…); ``-0.05`` subtracts. A factor below 0 counts as 0. A
product's score is ``raw × m1 × m2 … + a1 + a2 …``: the factors first, in the order given, then
the terms. The ranking by boosted score is exact on every back end: candidates are fetched by
raw score until no product left out could reach the k-th boosted score (:meth:`Boosts.bound`).

``max_per`` (``COL=N``): at most N results with one value of ``COL`` in a list (a brand, a
parent, a type). ``diversity`` δ in [0, 1]: maximal marginal relevance over the best
``candidates`` products, each next result the one with the most
``(1 − δ)·score − δ·(its greatest likeness to a result already chosen)``; 0 is the plain ranking.

Pinned and blocked pairs are :class:`~lookalike.folder.manifest.Rule` records of the generation
(``lookalike rules``). A pinned product is shown at its rank for a query by the product it is
pinned for when it passes the query's filters (Algolia's ``filterPromotes``); a blocked one is
never shown there (a rule without a product: for every query).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lookalike.errors import InvalidQueryError
from lookalike.folder.manifest import QueryDefaults, Rule
from lookalike.search.conditions import Condition, Where, conditions_of, parse_condition

__all__ = ["Boost", "Boosts", "parse_boost", "boosts_of", "parse_max_per", "merge_where", "merge_boosts",
           "check_diversity", "mmr", "Steer", "QueryDefaults", "Rule", "DEFAULT_CANDIDATES", "MAX_BOOSTS"]

#: how many products diversity chooses from, at least (Qdrant's ``candidates_limit`` is 100)
DEFAULT_CANDIDATES = 100
#: most boosts one query may combine
MAX_BOOSTS = 16
_WEIGHT = re.compile(r"\s*([+*-])\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*")
_SYNTAX = "TARGET:+W, TARGET:-W or TARGET:*W (TARGET a numeric column or a condition such as in_stock=yes)"


@dataclass(frozen=True)
class Boost:
    """One boost: ``op`` ``+`` adds ``weight`` (times the column's value, for a column) and ``*``
    multiplies by ``weight`` (by ``1 + weight × value`` for a column); ``condition`` is set when
    the target is a condition, else ``column`` is a numeric column."""

    op: str
    weight: float
    condition: Condition | None = None
    column: str | None = None

    @property
    def target(self) -> str:
        """What the boost acts on, as text: a query's boost with a default's target replaces it."""
        return str(self.condition) if self.condition is not None else str(self.column)

    def __str__(self) -> str:
        w = repr(float(self.weight)).removesuffix(".0") if float(self.weight).is_integer() else repr(self.weight)
        if self.op == "+":
            return f"{self.target}:{'+' if self.weight >= 0 else ''}{w}"
        return f"{self.target}:*{w}"


def parse_boost(text: str) -> Boost:
    """One boost from its text form (see the module docstring)."""
    if not isinstance(text, str):
        raise InvalidQueryError(f"a boost is text such as 'in_stock=yes:+0.05', not {text!r}")
    at = text.rfind(":")
    m = _WEIGHT.fullmatch(text[at + 1:]) if at > 0 else None
    if m is None or not text[:at].strip():
        raise InvalidQueryError(f"a boost takes {_SYNTAX}, not {text!r}")
    sign, number = m.groups()
    weight = float(number)
    if not math.isfinite(weight):
        raise InvalidQueryError(f"boost {text!r}: its weight must be a finite number")
    op = "*" if sign == "*" else "+"
    if sign == "-":
        weight = -weight
    target = text[:at].strip()
    if re.search(r"[=<>!]", target) or ":" in target:
        return Boost(op, weight, condition=parse_condition(target, name="a boost's condition"))
    return Boost(op, weight, column=target)


def boosts_of(boost: str | Boost | Sequence[str | Boost] | None) -> tuple[Boost, ...]:
    """Any form of boosts (text, :class:`Boost`, a sequence of them) as boosts."""
    if not boost:
        return ()
    items = [boost] if isinstance(boost, (str, Boost)) else list(boost)
    out = tuple(b if isinstance(b, Boost) else parse_boost(b) for b in items)
    if len(out) > MAX_BOOSTS:
        raise InvalidQueryError(f"give at most {MAX_BOOSTS} boosts, not {len(out)}")
    return out


def parse_max_per(spec: str | Sequence[str] | dict[str, int] | None) -> dict[str, int]:
    """``max_per`` as column → cap: ``"Brand=2"``, several of those, or a mapping."""
    if not spec:
        return {}
    items: list[tuple[str, object]]
    if isinstance(spec, dict):
        items = [(str(c), n) for c, n in spec.items()]
    else:
        items = []
        for text in [spec] if isinstance(spec, str) else spec:
            col, eq, n = str(text).rpartition("=")
            if not eq or not col.strip():
                raise InvalidQueryError(f"max-per takes COLUMN=N (at most N results per value), not {text!r}")
            items.append((col.strip(), n))
    out: dict[str, int] = {}
    for col, given in items:
        n = str(given).strip()
        try:
            cap = int(n)
        except ValueError:
            raise InvalidQueryError(f"max-per {col}={n}: N must be a whole number >= 1") from None
        if cap < 1:
            raise InvalidQueryError(f"max-per {col}={n}: N must be a whole number >= 1")
        out[col] = cap
    return out


def check_diversity(diversity: float | None) -> float | None:
    if diversity is None:
        return None
    if isinstance(diversity, bool) or not isinstance(diversity, (int, float)) or not 0.0 <= float(diversity) <= 1.0:
        raise InvalidQueryError(f"diversity must be a number from 0 to 1, not {diversity!r}")
    return float(diversity)


def merge_where(defaults: Sequence[str], where: Where | None) -> tuple[Condition, ...]:
    """The index's default conditions and a query's: a query's condition on a column replaces
    the defaults on that column; the others all hold."""
    mine = conditions_of(where)
    columns = {c.column for c in mine}
    return tuple(c for c in conditions_of(list(defaults)) if c.column not in columns) + mine


def merge_boosts(defaults: Sequence[str], boost: Any) -> tuple[Boost, ...]:
    """The index's default boosts and a query's: a query's boost of a default's target replaces it."""
    mine = boosts_of(boost)
    targets = {b.target for b in mine}
    return boosts_of([b for b in boosts_of(list(defaults)) if b.target not in targets] + list(mine))


class Boosts:
    """Boosts made into per-row numbers for one generation: each boost's factor or term per row,
    their product ``mul`` and sum ``add`` (a score becomes ``raw × mul + add``)."""

    def __init__(self, boosts: Sequence[Boost], filters: Any) -> None:
        self.boosts = tuple(boosts)
        n = len(filters.ids)
        self.parts: list[np.ndarray] = []
        self.mul = np.ones(n, dtype=np.float64)
        self.add = np.zeros(n, dtype=np.float64)
        for b in self.boosts:
            if b.condition is not None:
                filters.check_where([b.condition])
                hit = filters.condition_mask(b.condition)
                part = np.where(hit, b.weight, 1.0 if b.op == "*" else 0.0)
            else:
                assert b.column is not None
                filters.check_column(b.column)
                x = filters.numbers(b.column)
                if np.isnan(x).all():
                    raise InvalidQueryError(f"boost {b}: column {b.column!r} holds no numbers; boost by a condition "
                                            f"instead ({b.column}=VALUE:{b.op}{abs(b.weight)})")
                x = np.nan_to_num(x, nan=0.0)
                part = 1.0 + b.weight * x if b.op == "*" else b.weight * x
            if b.op == "*":
                part = np.maximum(part, 0.0)
                self.mul *= part
            else:
                self.add += part
            self.parts.append(part)
        self._hi, self._lo, self._add = float(self.mul.max(initial=1.0)), float(self.mul.min(initial=1.0)), \
            float(self.add.max(initial=0.0))

    def score(self, raw: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Boosted scores of some rows' raw scores."""
        return (np.asarray(raw, np.float64) * self.mul[rows] + self.add[rows]).astype(np.float32)

    def bound(self, raw: float) -> float:
        """The highest boosted score a row whose raw score is at most ``raw`` can have."""
        return max(raw * self._hi, raw * self._lo) + self._add

    def explain(self, raw: float, row: int) -> dict[str, float]:
        """Each boost's share of one row's boosted score (factors first, then terms)."""
        out: dict[str, float] = {}
        s = float(raw)
        for b, part in zip(self.boosts, self.parts):
            if b.op == "*":
                out[f"boost {b}"] = s * (float(part[row]) - 1.0)
                s *= float(part[row])
        for b, part in zip(self.boosts, self.parts):
            if b.op == "+":
                out[f"boost {b}"] = float(part[row])
        return out


@dataclass
class Steer:
    """How one query's ranked hits become its list, beyond filters: boosts, caps per column
    value (``caps``: each row's code and the cap), diversity over ``candidates``."""

    boosts: Boosts | None = None
    caps: list[tuple[np.ndarray, int]] = field(default_factory=list)
    diversity: float | None = None
    candidates: int = DEFAULT_CANDIDATES

    def __bool__(self) -> bool:
        return self.boosts is not None or bool(self.caps) or self.diversity is not None

    def pool(self, k: int) -> int:
        """How many products to rank before choosing ``k`` (diversity chooses among more)."""
        return max(k, self.candidates) if self.diversity else k


def mmr(relevance: np.ndarray, likeness: np.ndarray, k: int, diversity: float) -> list[int]:
    """Maximal marginal relevance: ``k`` of the candidates (their ``relevance`` and pairwise
    ``likeness``), each next the one with the most ``(1 − δ)·relevance − δ·max likeness to
    those chosen``; ties go to the better ranked (lower index)."""
    m = len(relevance)
    if m == 0:
        return []
    chosen = [int(np.argmax(relevance))]
    closest = likeness[chosen[0]].astype(np.float64).copy()
    left = np.ones(m, dtype=bool)
    left[chosen[0]] = False
    while len(chosen) < min(k, m):
        value = (1.0 - diversity) * relevance - diversity * closest
        value[~left] = -np.inf
        nxt = int(np.argmax(value))
        chosen.append(nxt)
        left[nxt] = False
        closest = np.maximum(closest, likeness[nxt])
    return chosen


def rules_for(rules: Sequence[Rule], ids: Sequence[str]) -> tuple[list[Rule], list[Rule]]:
    """The pins (by rank) and blocks that act on a query by products ``ids`` (photo query: none)."""
    asked = set(ids)
    pins = sorted((r for r in rules if r.kind == "pin" and r.for_id in asked), key=lambda r: (r.rank, r.show))
    blocks = [r for r in rules if r.kind == "block" and (r.for_id is None or r.for_id in asked)]
    return pins, blocks
