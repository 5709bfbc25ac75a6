"""Other views (issue 20): how often another photo of a product finds the product.

Every photo of each product with two or more photos queries the index while it is left out
(``lookalike.analysis.evaluate.evaluate_views``); R@k is the share whose product is among the
top k products. Three ways of indexing and scoring, on the same index:

* ``best``: every photo indexed, a product scored by its best photo (what searches do);
* ``mean``: every photo indexed, a product scored by the mean of its photos' scores;
* ``main only``: only each product's main photo indexed, as before issue 20; the queries are
  the other photos (so ``best`` and ``mean`` are also given on those queries alone).

It also counts, for the queries whose product did not come first, how many photos the product
that came first has: scored by its best photo, a product of many photos has more chances.

    lookalike build ../shared/datasets/store-demos/catalog.csv --images ../shared/datasets/store-demos/images \\
        --id-column product_id --image-column images --out /tmp/store-views
    python benchmarks/views_study.py /tmp/store-views --group-by category --out benchmarks/results/views.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from machine import print_machine  # benchmarks/ is the script's folder

from lookalike import Recommender
from lookalike.analysis.evaluate import ViewScores, evaluate_views


def _first_wrong(rec: Recommender, scores: ViewScores, weight: float, scoring: str) -> dict[str, Any]:
    """Photos of the product that came first where it was not the query's own (the query row left out)."""
    photos = {pid: len(rec.rows(pid)) for pid in rec.products}
    row_of = {(rec.ids[r], str(ref)): r for r, ref in enumerate(rec.metadata["_ref"])}
    rows = np.array([row_of[(pid, ph)] for pid, ph in zip(scores.ranks["id"], scores.ranks["photo"])])
    sha = rec.metadata["_sha1"].astype(str).to_numpy()
    allowed = np.stack([(sha != sha[r]) & (np.arange(rec.n_rows) != r) for r in rows])
    found = rec.similar_to_rows(rows, k=1, allowed=allowed, colour_weight=weight, scoring=scoring)
    wrong = [photos[res.items[0].id] for r, res in zip(rows, found) if res.items and res.items[0].id != rec.ids[r]]
    return {"queries": len(wrong), "mean_photos": float(np.mean(wrong)) if wrong else 0.0,
            "catalogue_mean_photos": float(np.mean(list(photos.values())))}


def _line(name: str, scores: ViewScores, subset: np.ndarray | None = None) -> dict[str, Any]:
    ranks = scores.ranks if subset is None else scores.ranks[subset]
    r = ranks["rank"].to_numpy()
    return {"name": name, "queries": len(r), **{f"r@{k}": float(((r >= 1) & (r <= k)).mean()) for k in scores.k}}


def run(rec: Recommender, weight: float, group_by: list[str]) -> dict[str, Any]:
    kw: dict[str, Any] = {"group_by": group_by, "colour_weight": weight, "show_progress_bar": False}
    best = evaluate_views(rec, scoring="best", **kw)
    mean = evaluate_views(rec, scoring="mean", **kw)
    old = evaluate_views(rec, main_only=True, **kw)
    others = best.ranks["place"].to_numpy() > 0
    lines = [_line("best photo, every photo indexed", best), _line("mean of photos, every photo indexed", mean),
             _line("main photos only indexed (before issue 20)", old),
             _line("best photo, every photo indexed: non-main queries", best, others),
             _line("mean of photos, every photo indexed: non-main queries", mean, others)]
    wrong = {"best": _first_wrong(rec, best, weight, "best"), "mean": _first_wrong(rec, mean, weight, "mean")}
    groups = {name: s.groups() for name, s in (("best", best), ("mean", mean), ("main_only", old))}
    return {"colour_weight": weight, "overall": lines, "first_wrong": wrong, "groups": groups,
            "settings": best.settings}


def _print(result: dict[str, Any]) -> None:
    print(f"\n**Colour weight {result['colour_weight']:g}**\n")
    print("| | queries | R@1 | R@5 |\n|---|---|---|---|")
    for line in result["overall"]:
        print(f"| {line['name']} | {line['queries']} | {line['r@1']:.3f} | {line['r@5']:.3f} |")
    print()
    for name, w in result["first_wrong"].items():
        print(f"- {name}: {w['queries']} queries not first; the product first has {w['mean_photos']:.2f} photos "
              f"on average (catalogue {w['catalogue_mean_photos']:.2f})")
    for col in next(iter(result["groups"].values())):
        print(f"\n| {col} | queries | best R@1 | best R@5 | mean R@1 | mean R@5 | main only: queries | R@1 | R@5 |")
        print("|---|---|---|---|---|---|---|---|---|")
        g = {name: groups[col] for name, groups in result["groups"].items()}
        for value, b in g["best"].items():
            m, o = g["mean"][value], g["main_only"].get(value, {"queries": 0, "r@1": 0.0, "r@5": 0.0})
            print(f"| {value} | {b['queries']} | {b['r@1']:.3f} | {b['r@5']:.3f} | {m['r@1']:.3f} | {m['r@5']:.3f} "
                  f"| {o['queries']} | {o['r@1']:.3f} | {o['r@5']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path)
    ap.add_argument("--group-by", action="append", default=[], metavar="COL")
    ap.add_argument("--colour-weights", default=None, metavar="W1,W2",
                    help="colour weights to measure at (default: the index's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = ap.parse_args()
    machine = print_machine()
    rec = Recommender.load(args.index)
    weights = [float(w) for w in args.colour_weights.split(",")] if args.colour_weights else [rec.colour_weight]
    results = [run(rec, w, args.group_by) for w in weights]
    print(f"{args.index}: {len(rec)} products, {rec.n_rows} photos")
    for result in results:
        _print(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "index": str(args.index), "products": len(rec),
                                        "photos": rec.n_rows, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
