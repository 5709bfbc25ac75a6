"""How the default shape features were chosen: P@5 of pooling / projection / resize variants.

Builds the reference catalogue once per variant with lookalike itself (colour weight 0,
duplicates not collapsed, so only the shape features differ) and evaluates P@5 against
ProductType and Colour within the query's Gender, identical photos excluded.

    python benchmarks/pooling_study.py ../shared/datasets/fashion-images/fashion.csv \
        --out benchmarks/results/pooling.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from machine import print_machine  # benchmarks/ is the script's folder

from lookalike import Recommender, build, get_encoder
from lookalike.analysis.evaluate import evaluate

VARIANTS = [  # name, pooling, projection dims (0: none), resize
    ("unpooled map (the reference's features), cosine", "none", 0, "squash"),
    ("GeM pooled", "gem", 0, "squash"),
    ("average pooled", "avg", 0, "squash"),
    ("2x2 regional average (grid2)", "grid2", 0, "squash"),
    ("grid2 + PCA 256 (default)", "grid2", 256, "squash"),
    ("grid2 + PCA 256, padded instead of squashed", "grid2", 256, "pad"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalog", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, pooling, dims, resize in VARIANTS:
            t0 = time.perf_counter()
            enc = get_encoder(pooling=pooling, resize=resize)
            idx = Path(tmp) / f"{pooling}-{dims}-{resize}"
            build(args.catalog, idx, encoder=enc, projection_dim=dims or None, colour_weight=0.0,
                  show_progress_bar=False)
            rec = Recommender.load(idx)
            s = evaluate(rec, ["ProductType", "Colour"], k=5, same="Gender", colour_weight=0.0,
                         collapse_duplicates=False, show_progress_bar=False)
            row = {"features": name, "dims": rec.vectors.shape[1], "p@5_ProductType": round(s["p@5_ProductType"], 4),
                   "p@5_Colour": round(s["p@5_Colour"], 4), "p@5_all": round(s["p@5_all"], 4),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| features | dims | ProductType | Colour | both |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['features']} | {r['dims']:,} | {r['p@5_ProductType']:.3f} | {r['p@5_Colour']:.3f} "
              f"| {r['p@5_all']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
