"""Quality against the catalogue's own labels: P@k, recall@k and mAP@k, overall and per group.

Every product is a query; a result is relevant to a label when it shares the query's
value of that label column (for ``all``, every label at once). The results are exactly
those of :meth:`Recommender.export` (same filters, same exclusions), so counting over an
exported table gives the same numbers.

* ``p@k``  — relevant results in the top k, divided by k (missing results count as misses)
* ``r@k``  — relevant results in the top k, divided by all relevant products the query could
  have been shown (same filters and exclusions, before duplicate collapsing)
* ``map@k`` — average precision at k, normalised by min(k, relevant products)

:func:`evaluate_views` needs no labels: every photo of a product with several is a query while
it is left out of the index, and ``r@k`` is the share of those queries whose own product is
among the top k products (``R@1``: it comes first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from lookalike.config import SCORINGS
from lookalike.errors import InvalidQueryError

if TYPE_CHECKING:
    from lookalike.search.recommender import Recommender, Where

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "score_export", "ALL", "evaluate_views", "ViewScores", "DEFAULT_VIEW_K"]

ALL = "all"


def _keys(table: pd.DataFrame, labels: Sequence[str]) -> dict[str, np.ndarray]:
    out = {lab: table[lab].astype(str).to_numpy() for lab in labels}
    if len(labels) > 1:
        joined = table[list(labels)].astype(str).agg("\x1f".join, axis=1).to_numpy()
        out[ALL] = joined
    return out


def score_export(
    export: pd.DataFrame,
    metadata: pd.DataFrame,
    *,
    id_column: str,
    labels: Sequence[str],
    k: int,
    pool_sizes: dict[str, np.ndarray] | None = None,
    group_by: Sequence[str] = (),
) -> dict[str, Any]:
    """Score an export table (``query_id, rank, id, score``) against metadata labels."""
    meta = metadata.set_index(metadata[id_column].astype(str))
    queries = meta.index.to_numpy()
    pos = {q: i for i, q in enumerate(queries)}
    keys = _keys(meta, labels)
    n = len(queries)
    ex = export[export["rank"] <= k]
    qi = ex["query_id"].astype(str).map(pos).to_numpy()
    ri = ex["id"].astype(str).map(pos).to_numpy()
    ranks = ex["rank"].to_numpy().astype(int)
    out: dict[str, Any] = {"queries": n, "k": k}
    per_query: dict[str, dict[str, np.ndarray]] = {}
    for lab, key in keys.items():
        rel = (key[qi] == key[ri]).astype(np.float64)
        hits = np.zeros((n, k))
        hits[qi, ranks - 1] = rel
        cum = hits.cumsum(axis=1)
        p = cum[:, -1] / k
        prec_at = cum / np.arange(1, k + 1)
        total = None if pool_sizes is None else pool_sizes[lab].astype(np.float64)
        if total is None:
            denom = np.maximum(np.minimum(k, cum[:, -1]), 1)
            r = np.full(n, np.nan)
        else:
            denom = np.maximum(np.minimum(k, total), 1)
            r = np.where(total > 0, cum[:, -1] / np.maximum(total, 1), np.nan)
        ap = (prec_at * hits).sum(axis=1) / denom
        per_query[lab] = {"p": p, "r": r, "map": ap}
        out[f"p@{k}_{lab}"] = float(p.mean()) if n else 0.0
        if total is not None:
            out[f"r@{k}_{lab}"] = float(np.nanmean(r)) if n else 0.0
        out[f"map@{k}_{lab}"] = float(ap.mean()) if n else 0.0
    groups: dict[str, Any] = {}
    for col in group_by:
        vals = meta[col].astype(str).to_numpy()
        groups[col] = {}
        for v in sorted(set(vals)):
            sel = vals == v
            entry: dict[str, Any] = {"queries": int(sel.sum())}
            for lab, m in per_query.items():
                entry[f"p@{k}_{lab}"] = float(m["p"][sel].mean())
                if pool_sizes is not None:
                    entry[f"r@{k}_{lab}"] = float(np.nanmean(m["r"][sel])) if np.isfinite(m["r"][sel]).any() else 0.0
                entry[f"map@{k}_{lab}"] = float(m["map"][sel].mean())
            groups[col][v] = entry
    if groups:
        out["groups"] = groups
    return out


def _pool_sizes(rec: "Recommender", labels: Sequence[str], same: Sequence[str],
                where: "Where | None") -> dict[str, np.ndarray]:
    """How many products each query could have been shown that share its label(s)."""
    n = len(rec)
    main = rec.main_rows  # a product once (its main photo's cells), however many photos it has
    keys = _keys(rec.product_metadata, labels)
    base = rec.where_mask(where)
    base = None if base is None else base[main]
    parts = [rec.exact_groups[main]] + [rec.column_codes(c)[0][main] for c in same]  # never its twins
    out: dict[str, np.ndarray] = {}
    allowed_base = np.ones(n, bool) if base is None else base
    for lab, key in keys.items():
        codes = pd.factorize(key)[0]
        # count allowed rows per (same..., label) cell, minus those in the query's own dup group
        frame = pd.DataFrame({"label": codes, **{f"s{i}": p for i, p in enumerate(parts[1:])}})
        cell_cols = ["label"] + [f"s{i}" for i in range(len(parts) - 1)]
        counts = frame[allowed_base].groupby(cell_cols).size()
        cell_total = counts.reindex(pd.MultiIndex.from_frame(frame[cell_cols]) if len(cell_cols) > 1
                                    else frame["label"]).fillna(0).to_numpy()
        frame["g"] = parts[0]
        own = frame[allowed_base].groupby(cell_cols + ["g"]).size()
        own_total = own.reindex(pd.MultiIndex.from_frame(frame[cell_cols + ["g"]])).fillna(0).to_numpy()
        out[lab] = (cell_total - own_total).astype(np.int64)
    return out


def evaluate(
    rec: "Recommender",
    labels: Sequence[str],
    *,
    k: int = 5,
    same: Sequence[str] | str = (),
    where: "Where | None" = None,
    group_by: Sequence[str] = (),
    colour_weight: float | None = None,
    collapse_duplicates: bool = True,
    show_progress_bar: bool | None = None,
    siblings: bool = False,
    collapse_parent: bool = False,
) -> dict[str, Any]:
    """Use every product as a query and score the top k against the label columns (``siblings``
    and ``collapse_parent`` as in :meth:`~lookalike.search.recommender.Recommender.similar`)."""
    labels = list(labels)
    if not labels:
        raise InvalidQueryError("give at least one label column")
    same = [same] if isinstance(same, str) else list(same)
    for col in [*labels, *group_by]:
        rec.check_column(col)
    from lookalike.search.filters import describe_where

    export = rec.export(k=k, same=same, where=where, colour_weight=colour_weight,
                        collapse_duplicates=collapse_duplicates, show_progress_bar=show_progress_bar,
                        siblings=siblings, collapse_parent=collapse_parent)
    pools = _pool_sizes(rec, labels, same, where)
    out = score_export(export, rec.product_metadata, id_column=rec.id_column, labels=labels, k=k,
                       pool_sizes=pools, group_by=group_by)
    out["settings"] = {
        "model": rec.settings.model.name, "pooling": rec.settings.model.pooling,
        "metric": rec.metric, "colour_weight": rec.colour_weight_for(colour_weight), "same": same,
        **describe_where(where), "collapse_duplicates": collapse_duplicates, "labels": labels,
    }
    return out


def compare(
    runs: Sequence[tuple["Recommender", float | None]],
    *,
    labels: Sequence[str],
    k: int = 5,
    same: Sequence[str] | str = (),
    where: "Where | None" = None,
    group_by: Sequence[str] = (),
    collapse_duplicates: bool = True,
    show_progress_bar: bool | None = None,
    siblings: bool = False,
    collapse_parent: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate several (index, colour weight) settings on the same labels, in order."""
    out = []
    for rec, weight in runs:
        scores = evaluate(rec, labels, k=k, same=same, where=where, group_by=group_by, colour_weight=weight,
                          collapse_duplicates=collapse_duplicates, show_progress_bar=show_progress_bar,
                          siblings=siblings, collapse_parent=collapse_parent)
        m = rec.settings.model
        name = f"{rec.path.name}: {m.name}/{m.pooling} w={scores['settings']['colour_weight']:g}"
        out.append({"name": name, "index": str(rec.path), "scores": scores})
    return out


def _metric_keys(scores: dict[str, Any]) -> list[str]:
    return [key for key in scores if "@" in key]


def format_scores(results: list[dict[str, Any]]) -> str:
    """A terminal table: one row per metric, one column per run; per-group tables after."""
    if not results:
        return "(nothing evaluated)"
    keys = _metric_keys(results[0]["scores"])
    names = [r["name"] for r in results]
    width = max(len(key) for key in keys)
    col = max(10, *(len(n) for n in names)) if len(names) > 1 else 10
    lines = []
    if len(names) > 1:
        lines.append(" " * width + "  " + "  ".join(f"{n:>{col}}" for n in names))
    else:
        s = results[0]["scores"]
        lines.append(f"{s['queries']} queries, k={s['k']}, labels {', '.join(s['settings']['labels'])}, "
                     f"same {s['settings']['same'] or '-'}, colour weight {s['settings']['colour_weight']:g}")
    for key in keys:
        lines.append(f"{key:<{width}}  " + "  ".join(f"{r['scores'][key]:>{col}.4f}" for r in results))
    for r in results:
        for col_name, groups in r["scores"].get("groups", {}).items():
            lines.append("")
            lines.append(f"by {col_name}" + (f" ({r['name']})" if len(results) > 1 else ""))
            gkeys = [key for key in keys if key.startswith("p@") or key.startswith("map@")]
            gw = max(len(str(v)) for v in groups) + 2
            lines.append(f"{'':<{gw}}{'queries':>8}  " + "  ".join(f"{key:>{max(10, len(key))}}" for key in gkeys))
            for value, entry in groups.items():
                lines.append(f"{value:<{gw}}{entry['queries']:>8}  "
                             + "  ".join(f"{entry[key]:>{max(10, len(key))}.4f}" for key in gkeys))
    return "\n".join(lines)


def compare_chart(results: list[dict[str, Any]], out: Any) -> Any:
    """Grouped bars: each P@k / mAP@k metric, one bar per run. Needs matplotlib (extra eval)."""
    from pathlib import Path

    from lookalike.errors import require

    require("matplotlib", "eval")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in _metric_keys(results[0]["scores"]) if not key.startswith("r@")]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(keys) * max(1, len(results)) ** 0.5), 4.2))
    width = 0.8 / max(1, len(results))
    for i, r in enumerate(results):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(keys))]
        vals = [r["scores"][key] for key in keys]
        bars = ax.bar(xs, vals, width, label=r["name"])
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(range(len(keys)), keys, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title(f"lookalike evaluate: {results[0]['scores']['queries']} queries")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# -- other views (issue 20) ------------------------------------------------------------------
#: the ranks at which :func:`evaluate_views` counts a product found (R@1: it came first)
DEFAULT_VIEW_K = (1, 5)
#: the most mask cells (query lines × rows) one batch of view queries holds (32 MiB of booleans)
_MASK_CELLS = 32 << 20


@dataclass(frozen=True)
class ViewScores:
    """What :func:`evaluate_views` measured: each query photo's product's rank, and recall from it."""

    #: one row per query photo: ``id``, ``photo`` (as the catalogue names it), ``place`` (0: the
    #: main photo), each ``group_by`` column, ``rank`` of its product (0: not in the top
    #: ``max(k)``) and ``matched`` (the product's photo that matched; "" when not found)
    ranks: pd.DataFrame
    k: tuple[int, ...]
    group_by: tuple[str, ...]
    #: the model, metric, colour weight, scoring and what was indexed
    settings: dict[str, Any]

    @property
    def queries(self) -> int:
        return len(self.ranks)

    def recall(self, k: int) -> float:
        """The share of queries whose product was among the top k (0 with no queries)."""
        rank = self.ranks["rank"].to_numpy()
        return float(((rank >= 1) & (rank <= k)).mean()) if len(rank) else 0.0

    def _entry(self, part: pd.DataFrame) -> dict[str, Any]:
        rank = part["rank"].to_numpy()
        out: dict[str, Any] = {"queries": len(part), "products": int(part["id"].nunique())}
        for k in self.k:
            out[f"r@{k}"] = float(((rank >= 1) & (rank <= k)).mean()) if len(rank) else 0.0
        return out

    def groups(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per ``group_by`` column, per value (sorted): queries, products and r@k of its queries."""
        return {col: {str(v): self._entry(part) for v, part in self.ranks.groupby(col, sort=True)}
                for col in self.group_by}

    def to_frame(self) -> pd.DataFrame:
        """One row for all queries (``column`` "", ``value`` "all"), then one per value of each
        ``group_by`` column: ``queries``, ``products``, ``r@k`` for each k."""
        lines = [{"column": "", "value": "all", **self._entry(self.ranks)}]
        for col, values in self.groups().items():
            lines.extend({"column": col, "value": v, **entry} for v, entry in values.items())
        return pd.DataFrame(lines)

    def to_dict(self) -> dict[str, Any]:
        """As :func:`evaluate` reports: counts and ``r@k`` overall, ``groups`` and ``settings``."""
        out: dict[str, Any] = {**self._entry(self.ranks), "k": list(self.k)}
        if self.group_by:
            out["groups"] = self.groups()
        out["settings"] = dict(self.settings)
        return out

    def format(self) -> str:
        """A terminal table: the settings in one line, recall overall, then per group."""
        s = self.settings
        what = ("the other photos of", "only main photos indexed") if s["main_only"] else \
            ("each photo of", "each left out of the index")
        frame = self.to_frame()
        lines = [f"{self.queries} queries: {what[0]} the {s['products']} products with 2 photos or more, {what[1]}; "
                 f"a product scores by {'its best photo' if s['scoring'] == 'best' else 'the mean of its photos'}, "
                 f"colour weight {s['colour_weight']:g}"]
        width = max(12, *(len(str(v)) + 2 for v in frame["value"]))
        keys = [f"r@{k}" for k in self.k]
        head = f"{'':<{width}}{'queries':>8}{'products':>10}" + "".join(f"{key:>9}" for key in keys)
        for col in ["", *self.group_by]:
            part = frame[frame["column"] == col]
            lines += ([head] if not col else ["", f"by {col}", head])
            lines += [f"{str(r['value']):<{width}}{r['queries']:>8}{r['products']:>10}"
                      + "".join(f"{r[key]:>9.4f}" for key in keys) for _, r in part.iterrows()]
        return "\n".join(lines)


def _view_ks(k: int | Sequence[int]) -> tuple[int, ...]:
    ks = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
    if not ks or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in ks):
        raise InvalidQueryError(f"k must be whole numbers >= 1, not {k!r}")
    return tuple(sorted(set(int(x) for x in ks)))


def _view_queries(rec: "Recommender", main_only: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """The query rows (every photo of each product with several; with ``main_only`` all but its
    main one), each row's place among its product's photos, and how many products they are."""
    place = np.zeros(rec.n_rows, dtype=np.int64)
    queries, products = [], 0
    for pid in rec.products:
        rows = rec.rows(pid)
        place[rows] = np.arange(len(rows))
        if len(rows) >= 2:
            products += 1
            queries.append(rows[1:] if main_only else rows)
    if not products:
        raise InvalidQueryError(f"no product of {rec.path} has two photos or more: evaluating other views needs "
                                "products with several photos (an image column that names them all, "
                                "'a.jpg|b.jpg', or one row per photo)")
    return np.concatenate(queries).astype(np.int64), place, products


def _left_out(rec: "Recommender", rows: np.ndarray, base: np.ndarray | None) -> np.ndarray:
    """One mask line per query row: ``base`` (every row where None) without the row itself and
    any row whose photo is byte-identical to it (the same SHA-1)."""
    sha = rec.metadata["_sha1"].astype(str).to_numpy()
    allowed = np.ones((len(rows), rec.n_rows), dtype=bool) if base is None else np.tile(base, (len(rows), 1))
    for i, r in enumerate(rows.tolist()):
        allowed[i, r] = False
        if sha[r]:
            allowed[i] &= sha != sha[r]
    return allowed


def evaluate_views(
    rec: "Recommender",
    *,
    k: int | Sequence[int] = DEFAULT_VIEW_K,
    group_by: Sequence[str] | str = (),
    colour_weight: float | None = None,
    scoring: str = "best",
    main_only: bool = False,
    collapse_duplicates: bool = True,
    show_progress_bar: bool | None = None,
) -> ViewScores:
    """How often another photo of a product finds the product: every photo of each product with
    two or more is a query while it (and any byte-identical photo) is left out of the index; its
    stored vector is the query, so no photo is read. ``r@k``: the share of queries whose product
    is among the top k products (:class:`ViewScores`), overall and per value of ``group_by``.

    ``scoring`` ``"best"`` scores a product by its best photo, as every search does; ``"mean"``
    by the mean of its photos' scores. ``main_only`` measures the index as it was before several
    photos per product: only each product's main photo indexed, the other photos the queries."""
    ks = _view_ks(k)
    group_by = (group_by,) if isinstance(group_by, str) else tuple(group_by)
    for col in group_by:
        rec.check_column(col)
    if scoring not in SCORINGS:
        raise InvalidQueryError(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
    weight = rec.colour_weight_for(colour_weight)
    query_rows, place, products = _view_queries(rec, main_only)
    base = (place == 0) if main_only else None
    ranks, matched = _view_ranks(rec, query_rows, base, max(ks), weight, scoring, collapse_duplicates,
                                 show_progress_bar)
    meta = rec.metadata
    table = pd.DataFrame({"id": [rec.ids[r] for r in query_rows.tolist()],
                          "photo": meta["_ref"].astype(str).to_numpy()[query_rows], "place": place[query_rows],
                          **{col: meta[col].astype(str).to_numpy()[query_rows] for col in group_by},
                          "rank": ranks, "matched": matched})
    m = rec.settings.model
    settings = {"index": str(rec.path), "model": m.name, "pooling": m.pooling, "metric": rec.metric,
                "colour_weight": weight, "scoring": scoring, "main_only": main_only, "products": products,
                "collapse_duplicates": collapse_duplicates}
    scores = ViewScores(table, ks, group_by, settings)
    logger.info("other views: %d queries of %d products, %s", scores.queries, products,
                ", ".join(f"R@{k} {scores.recall(k):.3f}" for k in ks))
    return scores


def _view_ranks(rec: "Recommender", query_rows: np.ndarray, base: np.ndarray | None, k: int, weight: float,
                scoring: str, collapse: bool, show_progress_bar: bool | None) -> tuple[np.ndarray, list[str]]:
    """Each query row's product's rank among its top k (0: not there), and the photo that matched."""
    from tqdm.auto import tqdm

    from lookalike.config import progress_enabled

    batch = max(1, min(256, _MASK_CELLS // max(1, rec.n_rows)))
    ranks = np.zeros(len(query_rows), dtype=np.int64)
    matched: list[str] = []
    for start in tqdm(range(0, len(query_rows), batch), disable=not progress_enabled(show_progress_bar),
                      desc="views", unit="batch"):
        rows = query_rows[start : start + batch]
        found = rec.similar_to_rows(rows, k=k, allowed=_left_out(rec, rows, base), colour_weight=weight,
                                    collapse_duplicates=collapse, scoring=scoring)
        for i, (row, res) in enumerate(zip(rows.tolist(), found), start=start):
            hit = next((r for r in res if r.id == rec.ids[row]), None)
            ranks[i] = 0 if hit is None else hit.rank
            matched.append("" if hit is None else hit.matched_photo)
    return ranks, matched
