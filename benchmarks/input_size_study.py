"""How the default input size was chosen: P@5 for model inputs of 192 to 352 pixels.

EfficientNet-Lite0 was trained on 224-px crops, but training crops are zoomed in (random
resized crops), so at test time the network sees products smaller than it learned them; a
larger input undoes that. This study builds the reference catalogue once per input size with
lookalike itself (everything else at its default) and reports P@5 against ProductType, Colour
and both within the query's Gender: shape only (colour weight 0) and at the default colour
weight, duplicates collapsed as in `lookalike export`. ``--low-res`` repeats chosen sizes on
copies of the photos cut down to at most ``--cut`` px (80: catalogue thumbnails), to check
that a larger input is not a trick of these 512-px photos. ``--fp32`` repeats chosen sizes
with the fp32 export instead of the default int8 one. ``--framings`` repeats everything per
framing: ``squash`` (the reference's), ``pad`` or ``crop``, each with ``trim+`` in front to cut
the studio background around the product first (the default since issue 12: ``trim+pad``).

    python benchmarks/input_size_study.py ../shared/datasets/fashion-images/fashion.csv \
        --out benchmarks/results/input_size.json
    python benchmarks/input_size_study.py ../shared/datasets/fashion-images/fashion.csv \
        --sizes 256 288 320 --framings squash trim+squash trim+pad --fp32 --low-res 288 320 \
        --out benchmarks/results/framing.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from machine import print_machine  # benchmarks/ is the script's folder
from PIL import Image

from lookalike import DEFAULT_COLOUR_WEIGHT, Recommender, build
from lookalike.analysis.evaluate import evaluate

LABELS = ["ProductType", "Colour"]


def _shrunk_copy(catalog: Path, folder: Path, side: int) -> Path:
    """The catalogue with every photo cut down to at most ``side`` px (JPEG quality 90)."""
    table = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    src = catalog.parent / "images"
    (folder / "images").mkdir(parents=True, exist_ok=True)

    def shrink(name: str) -> None:
        with Image.open(src / name) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side), Image.LANCZOS)
            im.save(folder / "images" / name, quality=90)

    with ThreadPoolExecutor(2) as ex:
        list(ex.map(shrink, table["Image"]))
    table.to_csv(folder / "catalog.csv", index=False)
    return folder / "catalog.csv"


def _row(rec: Recommender, photos: str, size: int, seconds: float) -> dict:
    m = rec.manifest["model"]
    row: dict = {"photos": photos, "size": size, "precision": m["precision"],
                 "framing": ("trim+" if m.get("trim") else "") + m["resize"], "build_s": round(seconds, 1)}
    for tag, weight in (("shape", 0.0), ("default", DEFAULT_COLOUR_WEIGHT)):
        s = evaluate(rec, LABELS, k=5, same="Gender", colour_weight=weight, show_progress_bar=False)
        for key in ("p@5_ProductType", "p@5_Colour", "p@5_all"):
            row[f"{tag}_{key}"] = round(s[key], 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalog", type=Path)
    ap.add_argument("--sizes", type=int, nargs="*", default=[192, 224, 256, 288, 320, 352])
    ap.add_argument("--low-res", type=int, nargs="*", default=[224, 320], metavar="SIZE",
                    help="sizes to repeat on cut-down copies of the photos (none: skip)")
    ap.add_argument("--cut", type=int, default=80, metavar="PX", help="long side of the cut-down copies")
    ap.add_argument("--fp32", type=int, nargs="*", default=[320], metavar="SIZE",
                    help="sizes to repeat in fp32 (none: skip)")
    ap.add_argument("--framings", nargs="*", default=["trim+pad"],
                    help="how photos become the input: squash, pad or crop, with trim+ to cut the background first")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(args.catalog, "as given", s, None, f) for f in args.framings for s in args.sizes]
        runs += [(args.catalog, "as given", s, "fp32", f) for f in args.framings for s in args.fp32]
        if args.low_res:
            small = _shrunk_copy(args.catalog, Path(tmp) / "small", args.cut)
            runs += [(small, f"cut to {args.cut} px", s, None, f) for f in args.framings for s in args.low_res]
        for catalog, photos, size, precision, framing in runs:
            idx = Path(tmp) / f"idx-{size}-{len(rows)}"
            t0 = time.perf_counter()
            build(catalog, idx, size=size, precision=precision, resize=framing.removeprefix("trim+"),
                  trim=framing.startswith("trim+"), show_progress_bar=False)
            row = _row(Recommender.load(idx), photos, size, time.perf_counter() - t0)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nP@5 within Gender, k=5, duplicates collapsed; colour weight 0 | {DEFAULT_COLOUR_WEIGHT}")
    print("| photos | framing | input px | precision | ProductType | both | ProductType (w) | Colour (w) "
          "| both (w) | build s |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['photos']} | {r['framing']} | {r['size']} | {r['precision']} | {r['shape_p@5_ProductType']:.3f} "
              f"| {r['shape_p@5_all']:.3f} "
              f"| {r['default_p@5_ProductType']:.3f} | {r['default_p@5_Colour']:.3f} "
              f"| {r['default_p@5_all']:.3f} | {r['build_s']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
