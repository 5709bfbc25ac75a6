"""What a catalogue holds: the reference recipe's first step (data analysis) as a library.

``catalog_stats`` counts products and the values of the catalogue's grouping columns —
``Gender, Category, SubCategory, ProductType, Colour, Usage`` when present, otherwise any
low-cardinality text column — then splits the products by one column (``by``, default
``Gender``) and the distribution of a second column (``SubCategory``, or the next
grouping column) within each of its values. ``format_stats`` prints it, ``make_charts``
draws it (matplotlib figures, no pyplot state) and ``save_charts`` writes the PNGs.

The result of ``catalog_stats`` is plain JSON::

    {"products": 2906, "by": "Gender", "within": "SubCategory",
     "columns": {"Gender": {"distinct": 4, "missing": 0, "counts": {"Men": 811, ...}}, ...},
     "per_by": {"Men": 811, ...},
     "within_per_by": {"Men": {"Shoes": 616, ...}, ...}}
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lookalike.errors import CatalogError, require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "USUAL_COLUMNS",
    "MAX_LEVELS",
    "load_stats_table",
    "grouping_columns",
    "category_steps",
    "column_values",
    "is_path_column",
    "catalog_stats",
    "format_stats",
    "make_charts",
    "save_charts",
]

#: the reference catalogue's descriptive columns, used first when present (any letter case)
USUAL_COLUMNS = ("Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage")
#: a column with more distinct values than this is not a grouping column (titles, ids, ...)
MAX_LEVELS = 60
#: a ``by`` column chosen automatically has at most this many values
MAX_BY_LEVELS = 12
#: bars shown in a "top values" chart and rows in a terminal table
TOP = 15
#: bar colours (values of ``by``) in the grouped chart
MAX_GROUPS = 10

_PATHLIKE = re.compile(r"^(?:https?://|ftp://|/)|[\\/]|\.(?:jpe?g|png|webp|gif|bmp|tiff?)$", re.IGNORECASE)


# -- reading ------------------------------------------------------------------------------
def load_stats_table(path: str | os.PathLike) -> pd.DataFrame:
    """A catalogue table (CSV/TSV/Parquet), or an index folder's metadata (hidden columns dropped)."""
    path = Path(path)
    if path.is_dir():
        from lookalike.folder.store import Store

        snap = Store(path).snapshot()
        meta = snap.dense()[2]  # IndexFormatError when it is not an index
        meta = meta.drop_duplicates(subset=[snap.id_column])  # a product once, not once a photo
        return meta[[c for c in meta.columns if not str(c).startswith("_")]].astype(str).reset_index(drop=True)

    from lookalike.reading.catalog import read_table

    return read_table(path)


# -- choosing columns ---------------------------------------------------------------------
def _find(table: pd.DataFrame, name: str) -> str | None:
    """The table's column called ``name``, exactly or else ignoring letter case."""
    if name in table.columns:
        return name
    folded = [c for c in table.columns if str(c).casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def _resolve(table: pd.DataFrame, name: str) -> str:
    col = _find(table, name)
    if col is None:
        raise CatalogError(f"unknown column {name!r}; columns are: {', '.join(map(str, table.columns))}")
    return col


def column_values(table: pd.DataFrame, col: str) -> pd.Series:
    """A column as stripped text, without empty cells."""
    s = table[col].astype(str).str.strip()
    return s[(s != "") & (s.str.lower() != "nan")]


def is_path_column(values: pd.Series) -> bool:
    """Whether a column's cells (text) are mostly photo files or URLs."""
    return _mostly_paths(values.drop_duplicates().head(200))


def _mostly_paths(sample: pd.Series) -> bool:
    return bool(len(sample)) and bool(sample.str.contains(_PATHLIKE).mean() > 0.5)


def _is_grouping(values: pd.Series, rows: int) -> bool:
    distinct = values.nunique()
    if distinct < 1 or distinct > MAX_LEVELS or (distinct >= rows and rows > 1):
        return False
    sample = values.drop_duplicates().head(200)
    if _mostly_paths(sample):  # photo files, URLs
        return False
    if sample.str.len().mean() > 40:  # free text
        return False
    numeric = pd.to_numeric(sample, errors="coerce").notna().all()
    return not (numeric and distinct > MAX_BY_LEVELS)  # prices, sizes in cm, ...


def grouping_columns(table: pd.DataFrame) -> list[str]:
    """The columns worth counting: the usual ones present, then other low-cardinality text columns."""
    usual = [c for c in (_find(table, name) for name in USUAL_COLUMNS) if c is not None]
    rows = len(table)
    others = [
        c for c in table.columns
        if c not in usual and not str(c).startswith("_") and _is_grouping(column_values(table, c), rows)
    ]
    return usual + others


def _choose_by(table: pd.DataFrame, columns: list[str], by: str | None) -> str | None:
    if by is not None:
        return _resolve(table, by)
    gender = _find(table, "Gender")
    if gender is not None:
        return gender
    for c in columns:
        if 2 <= column_values(table, c).nunique() <= MAX_BY_LEVELS:
            return c
    return None


def _choose_within(table: pd.DataFrame, columns: list[str], by: str | None) -> str | None:
    if by is None:
        return None
    sub = _find(table, "SubCategory")
    if sub is not None and sub != by:
        return sub
    rest = [c for c in columns if c != by and column_values(table, c).nunique() >= 2]
    return rest[0] if rest else None


def category_steps(table: pd.DataFrame) -> tuple[str, ...]:
    """The columns to browse a catalogue by, broad to narrow (fewer values first): the split
    (``by``) and the distribution within it that :func:`catalog_stats` chooses (Gender →
    SubCategory), then a finer column nested in the last (each of its values under one value
    of it: ProductType)."""
    columns = grouping_columns(table)
    by = _choose_by(table, columns, None)
    steps = sorted((c for c in (by, _choose_within(table, columns, by)) if c),
                   key=lambda c: column_values(table, c).nunique())
    if steps:
        last = column_values(table, steps[-1])
        for c in columns:
            if c in steps:
                continue
            finer = column_values(table, c)
            pairs = pd.DataFrame({"c": finer, "last": last}).dropna()
            if finer.nunique() > last.nunique() and pairs.groupby("c")["last"].nunique().max() == 1:
                steps.append(c)
                break
    return tuple(steps)


# -- counting -----------------------------------------------------------------------------
def _counts(values: pd.Series) -> dict[str, int]:
    vc = values.value_counts(sort=False)
    vc = vc.sort_index(kind="stable").sort_values(ascending=False, kind="stable")  # ties by name
    return {str(k): int(v) for k, v in vc.items()}


def _crosstab(table: pd.DataFrame, by: str, within: str) -> pd.DataFrame:
    """Rows: values of ``within``; columns: values of ``by`` (both by frequency); cells: counts."""
    t = pd.DataFrame({"by": table[by].astype(str).str.strip(), "within": table[within].astype(str).str.strip()})
    t = t[(t["by"] != "") & (t["within"] != "")]
    ct = pd.crosstab(t["within"], t["by"])
    col_order = list(_counts(t["by"]))
    row_order = list(_counts(t["within"]))
    return ct.reindex(index=row_order, columns=col_order, fill_value=0)


def catalog_stats(table: pd.DataFrame, by: str | None = None) -> dict[str, Any]:
    """Counts of products and of the grouping columns' values, split by ``by`` (default Gender).

    Raises :class:`CatalogError` when ``by`` names no column of the table.
    """
    columns = grouping_columns(table)
    by_col = _choose_by(table, columns, by)
    if by_col is not None and by_col not in columns:
        columns.insert(0, by_col)
    within = _choose_within(table, columns, by_col)
    out: dict[str, Any] = {"products": int(len(table)), "by": by_col, "within": within, "columns": {}}
    for col in columns:
        values = column_values(table, col)
        out["columns"][col] = {
            "distinct": int(values.nunique()),
            "missing": int(len(table) - len(values)),
            "counts": _counts(values),
        }
    out["per_by"] = dict(out["columns"][by_col]["counts"]) if by_col else {}
    out["within_per_by"] = {}
    if by_col and within:
        ct = _crosstab(table, by_col, within)
        out["within_per_by"] = {
            str(b): {str(w): int(n) for w, n in ct[b].items() if n} for b in ct.columns
        }
    return out


# -- terminal -----------------------------------------------------------------------------
def _grid(header: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    right = right if right is not None else set(range(1, len(header)))
    widths = [max(len(h), *(len(r[j]) for r in rows)) if rows else len(h) for j, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def format_stats(stats: dict[str, Any]) -> str:
    """``catalog_stats`` as terminal tables."""
    n = stats["products"]
    cols = stats["columns"]
    parts = [f"{n} products"]
    if cols:
        parts.append(_grid(["column", "distinct", "missing"],
                           [[c, str(v["distinct"]), str(v["missing"])] for c, v in cols.items()]))
    by, within = stats.get("by"), stats.get("within")
    if by:
        per = list(stats["per_by"].items())
        more = f"\n... and {len(per) - MAX_LEVELS} more" if len(per) > MAX_LEVELS else ""
        parts.append(f"products per {by}\n" + _grid(
            [by, "products", "share"],
            [[k, str(v), f"{100 * v / n:.1f}%" if n else "-"] for k, v in per[:MAX_LEVELS]],
        ) + more)
    if by and within and stats["within_per_by"]:
        groups = list(stats["within_per_by"])[:MAX_GROUPS]
        if len(stats["within_per_by"]) > MAX_GROUPS:
            within_note = f" (the {MAX_GROUPS} largest of {len(stats['within_per_by'])} {by} values)"
        else:
            within_note = ""
        values = list(cols[within]["counts"]) if within in cols else sorted(
            {w for d in stats["within_per_by"].values() for w in d})
        rows = [[w, *(str(stats["within_per_by"][g].get(w, 0)) for g in groups),
                 str(sum(d.get(w, 0) for d in stats["within_per_by"].values()))] for w in values]
        parts.append(f"{within} per {by}{within_note}\n" + _grid([within, *groups, "total"], rows))
    for col, v in cols.items():
        if col in (by, within):
            continue
        items = list(v["counts"].items())
        rows = [[k, str(c), f"{100 * c / n:.1f}%" if n else "-"] for k, c in items[:TOP]]
        more = f"\n... and {len(items) - TOP} more" if len(items) > TOP else ""
        parts.append(f"{col} ({v['distinct']} values)\n" + _grid([col, "products", "share"], rows) + more)
    return "\n\n".join(parts)


# -- charts -------------------------------------------------------------------------------
def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_") or "column"


def _is_colour_column(name: str) -> bool:
    return bool(re.fullmatch(r"(base)?_?colou?rs?", str(name).strip().lower()))


def _bar_colour(value: str) -> str | None:
    from matplotlib.colors import is_color_like

    words = value.lower().split()
    for cand in (value, "".join(words), *(words[:1] + words[-1:])):
        if cand and is_color_like(cand) and not str(cand).replace(".", "").isdigit():
            return cand
    return None


def _figure(width: float, height: float) -> Figure:
    require("matplotlib", "eval")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _hbar(counts: dict[str, int], title: str, *, colours: bool = False) -> Figure:
    items = list(counts.items())[:TOP][::-1]
    fig = _figure(7, max(2.2, 0.35 * len(items) + 1.0))
    ax = fig.add_subplot()
    labels = [k for k, _ in items]
    values = [v for _, v in items]
    fill = [(_bar_colour(k) or "#9aa4ad") if colours else "#4c72b0" for k in labels]
    bars = ax.barh(labels, values, color=fill, edgecolor="#444444" if colours else None, linewidth=0.6)
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_title(title)
    ax.set_xlabel("products")
    ax.margins(x=0.12)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def make_charts(table: pd.DataFrame, by: str | None = None, *, stats: dict[str, Any] | None = None) -> dict[str, Figure]:
    """The analysis as matplotlib figures, keyed by a file-name stem (no pyplot state is used).

    ``overview`` (distinct values per column), ``products_per_<by>``,
    ``<within>_per_<by>`` (grouped bars), and ``top_<column>`` for each other grouping column.
    """
    import numpy as np

    stats = stats if stats is not None else catalog_stats(table, by=by)
    cols, by_col, within = stats["columns"], stats["by"], stats["within"]
    figs: dict[str, Figure] = {}

    if cols:
        fig = _figure(7, max(2.2, 0.4 * len(cols) + 1.0))
        ax = fig.add_subplot()
        names = list(cols)[::-1]
        bars = ax.barh(names, [cols[c]["distinct"] for c in names], color="#55a868")
        ax.bar_label(bars, padding=3, fontsize=9)
        ax.set_title(f"{stats['products']} products: distinct values per column")
        ax.set_xlabel("distinct values")
        ax.margins(x=0.12)
        ax.spines[["top", "right"]].set_visible(False)
        figs["overview"] = fig

    if by_col:
        per = dict(list(stats["per_by"].items())[:MAX_LEVELS])
        fig = _figure(max(4.5, 0.9 * len(per) + 2), 3.6)
        ax = fig.add_subplot()
        bars = ax.bar(list(per), list(per.values()), color="#4c72b0")
        ax.bar_label(bars, padding=2, fontsize=9)
        more = len(stats["per_by"]) - len(per)
        ax.set_title(f"products per {by_col}" + (f" (top {len(per)} of {len(stats['per_by'])})" if more else ""))
        ax.set_ylabel("products")
        ax.margins(y=0.12)
        ax.spines[["top", "right"]].set_visible(False)
        if len(per) > 6:
            ax.tick_params(axis="x", labelrotation=45)
        figs[f"products_per_{_slug(by_col)}"] = fig

    if by_col and within:
        ct = _crosstab(table, by_col, within)
        ct = ct.iloc[:MAX_LEVELS, :MAX_GROUPS]  # the most frequent values of both
        groups = list(ct.columns)
        x = np.arange(len(ct.index))
        width = 0.8 / max(1, len(groups))
        fig = _figure(max(7, 0.25 * len(ct.index) * max(1, len(groups)) + 2), 4.2)
        ax = fig.add_subplot()
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        for j, g in enumerate(groups):
            ax.bar(x + (j - (len(groups) - 1) / 2) * width, ct[g].to_numpy(), width, label=str(g), color=cmap(j % 10))
        ax.set_xticks(x, [str(i) for i in ct.index], rotation=35, ha="right")
        ax.set_title(f"{within} distribution per {by_col}")
        ax.set_ylabel("products")
        ax.legend(title=by_col, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        figs[f"{_slug(within)}_per_{_slug(by_col)}"] = fig

    for col, v in cols.items():
        if col in (by_col, within):
            continue
        title = f"top {col} values" if v["distinct"] > TOP else f"{col}"
        figs[f"top_{_slug(col)}"] = _hbar(v["counts"], f"{title} ({v['distinct']} distinct)",
                                          colours=_is_colour_column(col))
    return figs


def save_charts(table: pd.DataFrame, out_dir: str | os.PathLike, by: str | None = None) -> list[Path]:
    """Write the charts of :func:`make_charts` as PNG files in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    figs = make_charts(table, by=by)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in figs.items():
        path = out / f"{stem}.png"
        fig.savefig(path, format="png")
        paths.append(path)
    return paths
