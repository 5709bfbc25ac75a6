"""Quality against the catalogue's own labels: P@k, recall@k and mAP@k, overall and per group.

Every product is a query; a result is relevant to a label when it shares the query's
value of that label column (for ``all``, every label at once). The results are exactly
those of :meth:`Recommender.export` (same filters, same exclusions), so counting over an
exported table gives the same numbers.

* ``p@k``  — relevant results in the top k, divided by k (missing results count as misses)
* ``r@k``  — relevant results in the top k, divided by all relevant products the query could
  have been shown (same filters and exclusions, before duplicate collapsing)
* ``map@k`` — average precision at k, normalised by min(k, relevant products)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from lookalike.errors import InvalidQueryError

if TYPE_CHECKING:
    from lookalike.search.recommender import Recommender, Where

__all__ = ["evaluate", "score_export", "ALL"]

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
) -> dict[str, Any]:
    """Use every product as a query and score the top k against the label columns."""
    labels = list(labels)
    if not labels:
        raise InvalidQueryError("give at least one label column")
    same = [same] if isinstance(same, str) else list(same)
    for col in [*labels, *group_by]:
        rec.check_column(col)
    from lookalike.search.filters import describe_where

    export = rec.export(k=k, same=same, where=where, colour_weight=colour_weight,
                        collapse_duplicates=collapse_duplicates, show_progress_bar=show_progress_bar)
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
) -> list[dict[str, Any]]:
    """Evaluate several (index, colour weight) settings on the same labels, in order."""
    out = []
    for rec, weight in runs:
        scores = evaluate(rec, labels, k=k, same=same, where=where, group_by=group_by, colour_weight=weight,
                          collapse_duplicates=collapse_duplicates, show_progress_bar=show_progress_bar)
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
