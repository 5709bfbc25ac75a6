"""What "less like this" does (issue 21, item 1): with a negative example of another colour (or
product type), how much of a result list is still like the negative, before and after.

For each query product (every ``--step``-th of the index): its top ``k`` without a negative; the
negative is the best-ranked result whose ``--label`` value differs from the query's; then the
top ``k`` with ``negative_ids=[that product]``. Reported per label: the share of the ``k``
results (the negative itself left out of the first list) that share the negative's value, before
and after, and the share that share the query's own value (what the shopper asked for).

    python benchmarks/negatives_study.py INDEX --label Colour --label ProductType \\
        --out benchmarks/results/negatives.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import print_machine  # noqa: E402  # benchmarks/ is the script's folder

from lookalike import Recommender  # noqa: E402


def study(rec: Recommender, label: str, k: int, step: int, same: list[str]) -> dict[str, float | int]:
    like_neg_before, like_neg_after, own_before, own_after = [], [], [], []
    for pid in rec.products[::step]:
        mine = rec.product(pid)[label]
        before = rec.similar(pid, k=k + 1, same=same)
        other = next((r for r in before if r.metadata[label] != mine), None)
        if other is None:
            continue
        theirs = other.metadata[label]
        plain = [r for r in before if r.id != other.id][:k]
        after = rec.similar(pid, k=k, same=same, negative_ids=[other.id])
        like_neg_before.append(np.mean([r.metadata[label] == theirs for r in plain]))
        like_neg_after.append(np.mean([r.metadata[label] == theirs for r in after]))
        own_before.append(np.mean([r.metadata[label] == mine for r in plain]))
        own_after.append(np.mean([r.metadata[label] == mine for r in after]))
    return {"queries": len(like_neg_before), "like_negative_before": float(np.mean(like_neg_before)),
            "like_negative_after": float(np.mean(like_neg_after)), "own_before": float(np.mean(own_before)),
            "own_after": float(np.mean(own_after))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--label", action="append", required=True)
    parser.add_argument("--same", action="append", default=[])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    machine = print_machine()
    rec = Recommender.load(args.index)
    result = {"machine": machine, "index": str(args.index), "products": len(rec), "k": args.k, "step": args.step, "same": args.same,
              "labels": {label: study(rec, label, args.k, args.step, args.same) for label in args.label}}
    lines = ["| negative of another | queries | results like the negative: before | after | "
             "results like the query: before | after |", "|---|---|---|---|---|---|"]
    for label, r in result["labels"].items():
        lines.append(f"| {label} | {r['queries']} | {r['like_negative_before']:.1%} | {r['like_negative_after']:.1%} "
                     f"| {r['own_before']:.1%} | {r['own_after']:.1%} |")
    result["table"] = "\n".join(lines)
    print(result["table"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
