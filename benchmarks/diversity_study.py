"""What diversity costs (issue 21, item 4): P@5 against how varied the 5 are, for MMR
(``diversity=δ``) and for caps (``max_per=COL=N``), on a labelled index.

For each query product (every ``--step``-th of the index), its top ``k`` with each setting; the
same queries for every setting. Reported per setting: P@k same type (the share of the ``k``
results with the query's ``--type`` value, as docs/quality.md counts it), P@k same type and
colour, the mean number of distinct ``--colour`` and ``--type`` values in a list, and the mean
shape likeness between the results of a list (cosine of their stored vectors' shape parts, the
lower the more varied). δ = 0 is the plain ranking, the baseline of the same run.

    python benchmarks/diversity_study.py INDEX --same Gender --step 1 \\
        --out benchmarks/results/diversity.json --doc docs/quality.md

``--doc`` writes the table and what it means into that file's "Diversity (issue 21)" section.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import print_machine  # noqa: E402  # benchmarks/ is the script's folder

from lookalike import Recommender  # noqa: E402
from scripts.doc_sections import put_section  # noqa: E402  # the repository's root is on the path

DIVERSITIES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7)


def likeness(rec: Recommender, ids: list[str]) -> float:
    """Mean pairwise cosine of the results' main photos' shape vectors."""
    v = rec.vectors[[rec.row(i) for i in ids]].astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    sim = v @ v.T
    pairs = list(itertools.combinations(range(len(ids)), 2))
    return float(np.mean([sim[a, b] for a, b in pairs])) if pairs else 1.0


def study(rec: Recommender, queries: list[str], setting: dict[str, Any], k: int, same: list[str],
          type_col: str, colour_col: str) -> dict[str, float | int]:
    p_type, p_both, colours, types, like = [], [], [], [], []
    t0 = time.perf_counter()
    for pid in queries:
        me = rec.product(pid)
        got = rec.similar(pid, k=k, same=same, **setting)
        if not got:
            continue
        meta = [r.metadata for r in got]
        p_type.append(np.mean([m[type_col] == me[type_col] for m in meta]))
        p_both.append(np.mean([m[type_col] == me[type_col] and m[colour_col] == me[colour_col] for m in meta]))
        colours.append(len({m[colour_col] for m in meta}))
        types.append(len({m[type_col] for m in meta}))
        like.append(likeness(rec, [r.id for r in got]))
    return {"queries": len(p_type), "p_type": float(np.mean(p_type)), "p_type_colour": float(np.mean(p_both)),
            "distinct_colours": float(np.mean(colours)), "distinct_types": float(np.mean(types)),
            "likeness": float(np.mean(like)), "ms_per_query": (time.perf_counter() - t0) / len(queries) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--same", action="append", default=[])
    parser.add_argument("--type", dest="type_col", default="ProductType")
    parser.add_argument("--colour", dest="colour_col", default="Colour")
    parser.add_argument("--max-per", action="append", default=["Colour=2", "ProductType=3"],
                        help="caps to measure beside MMR (COL=N)")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--step", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="write the section into this markdown file")
    args = parser.parse_args(argv)
    machine = print_machine()
    rec = Recommender.load(args.index)
    queries = list(rec.products[:: args.step])
    settings: dict[str, dict[str, Any]] = {f"diversity {d:g}": {"diversity": d} for d in DIVERSITIES}
    settings.update({f"max_per {c}": {"max_per": c} for c in args.max_per})
    out = {name: study(rec, queries, s, args.k, args.same, args.type_col, args.colour_col)
           for name, s in settings.items()}
    base = out["diversity 0"]
    lines = [f"| setting | P@{args.k} same type | P@{args.k} type + colour | colours in a list | types in a list "
             "| shape likeness within a list | ms a query |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in out.items():
        cost = "" if r is base else f" ({r['p_type'] - base['p_type']:+.3f})"
        lines.append(f"| {name} | {r['p_type']:.3f}{cost} | {r['p_type_colour']:.3f} | {r['distinct_colours']:.2f} "
                     f"| {r['distinct_types']:.2f} | {r['likeness']:.3f} | {r['ms_per_query']:.2f} |")
    result = {"machine": machine, "index": str(args.index), "products": len(rec), "queries": len(queries),
              "k": args.k, "step": args.step, "same": args.same, "command": " ".join(["python", *sys.argv]),
              "settings": out, "table": "\n".join(lines)}
    print(result["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.doc:
        write_section(args.doc, result)
    return 0


HEADING = "## Diversity (issue 21)"


def write_section(doc: Path, r: dict[str, Any]) -> None:
    """The section of ``doc`` that shows this run, replaced if there."""
    s, m = r["settings"], r["machine"]
    base, mild, strong = s["diversity 0"], s["diversity 0.3"], s["diversity 0.7"]
    colour = s.get("max_per Colour=2")
    text = f"""
{HEADING}

What a more varied list costs in precision, on the reference catalogue ({r['products']:,} products,
{'each' if r['step'] == 1 else f"every {r['step']}th"} product as a query, top {r['k']}, same {', '.join(r['same']) or '–'};
{m['cpu']}, {m['cores']} cores). `--diversity δ` re-ranks the best 100 products by maximal marginal
relevance (each next result the one with the most `(1 − δ)·score − δ·likeness to those already
chosen`); `--max-per COL=N` keeps at most N of a value. P@{r['k']} same type is the share of the
{r['k']} with the query's ProductType (δ = 0, the plain ranking, is the baseline of the same run);
"shape likeness" is the mean cosine between the shape vectors of a list's results.

{r['table']}

A little diversity is nearly free: δ = 0.3 costs {base['p_type'] - mild['p_type']:.3f} of P@{r['k']} same type
({base['p_type']:.3f} → {mild['p_type']:.3f}) and brings the shape likeness within a list from
{base['likeness']:.3f} to {mild['likeness']:.3f}; past 0.3 the cost climbs fast (δ = 0.7:
{base['p_type'] - strong['p_type']:.3f}, with {strong['distinct_types']:.1f} product types in a list of {r['k']}).
""" + ("" if colour is None else f"""A cap does what it says at its own price: `--max-per Colour=2` lifts the colours in a list from
{base['distinct_colours']:.2f} to {colour['distinct_colours']:.2f} while P@{r['k']} same type goes {base['p_type']:.3f} → {colour['p_type']:.3f} (its cost falls on
type + colour, {base['p_type_colour']:.3f} → {colour['p_type_colour']:.3f}, as it must).
""") + f"""
```
lookalike build ../shared/datasets/fashion-images/fashion.csv --images ../shared/datasets/fashion-images/images --out {r['index']}
{r['command']}
```
"""
    put_section(doc, HEADING, text, before=None)


if __name__ == "__main__":
    raise SystemExit(main())
