"""Search-by-photo latency: decode + embed + search for one uploaded photo, in-process.

Builds the catalogue once per model setting (the defaults, int8 at 320 px, and the earlier
defaults, fp32 at 224 px) and times ``Recommender.similar(image=PATH, k=5)`` for every photo
of a query set, the settings alternating photo by photo so machine load hits both alike.
The query photos default to the full-resolution set (1080x1440 to 1800x2400 JPEGs, like a
phone upload); each is read from disk inside the timing.

    python benchmarks/bench_photo_query.py ../shared/datasets/fashion-images/fashion.csv \
        --photos ../shared/datasets/fashion-images-fullres/images \
        --out benchmarks/results/photo_query.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from machine import print_machine  # benchmarks/ is the script's folder

from lookalike import Recommender, build

SETTINGS = {  # name -> build keyword arguments
    "default (int8, 320 px)": {},
    "earlier default (fp32, 224 px)": {"size": 224, "precision": "fp32"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalog", type=Path)
    ap.add_argument("--photos", type=Path, required=True, help="folder of query photos (*.jpg)")
    ap.add_argument("--limit", type=int, default=100, help="how many query photos")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    machine = print_machine()
    photos = sorted(args.photos.glob("*.jpg"))[: args.limit]
    if not photos:
        raise SystemExit(f"no .jpg photos in {args.photos}")
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        recs = {}
        for i, (name, kw) in enumerate(SETTINGS.items()):
            build(args.catalog, Path(tmp) / f"idx{i}", show_progress_bar=False, **kw)
            recs[name] = Recommender.load(Path(tmp) / f"idx{i}")
            recs[name].similar(image=photos[0], k=5)  # warm up: model session, first allocation
        for photo in photos:
            for name, rec in recs.items():
                t0 = time.perf_counter()
                rec.similar(image=photo, k=5)
                times[name].append((time.perf_counter() - t0) * 1000)
    rows = {name: {"median_ms": round(statistics.median(t), 1),
                   "p90_ms": round(sorted(t)[int(0.9 * (len(t) - 1))], 1), "queries": len(t)}
            for name, t in times.items()}
    result = {"machine": machine, "catalog": str(args.catalog), "photos": str(args.photos), "loadavg_end": os.getloadavg(),
              "settings": rows}
    print(json.dumps(result, indent=2))
    print("\n| model setting | median ms | p90 ms |\n|---|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['median_ms']} | {r['p90_ms']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
