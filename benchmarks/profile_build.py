"""Where a build's CPU goes, per photo and per stage, on one thread (issue 12).

Runs each stage of the photo path serially over a catalogue's photos and reports CPU
milliseconds per photo (``time.thread_time``: this thread's CPU, not wall time), so stages
can be compared across machines. The model is timed in batches of 32 on one intra-op thread,
on each installed runtime (ONNX Runtime with its NumPy normalisation, OpenVINO with it folded
in); the total counts the faster. Prints the CPU model and flags first.

    python benchmarks/profile_build.py ../shared/datasets/fashion-images-fullres/fashion.csv
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from machine import print_machine  # benchmarks/ is the script's folder
from PIL import Image, ImageOps

from lookalike.encoders import get_encoder
from lookalike.encoders.runtimes import ENGINES, engine_available, normalise, open_session
from lookalike.reading.catalog import load_catalog
from lookalike.reading.images import _lean_eighth_scale, colour_descriptor, dhash, prepare, trim_background


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("catalog", type=Path)
    ap.add_argument("--limit", type=int, default=200, help="photos to profile")
    ap.add_argument("--precision", default=None, choices=("int8", "fp32"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--full-scans", action="store_true",
                    help="decode every scan of progressive JPEGs (before lookalike.reading.jpeg), for comparison")
    args = ap.parse_args(argv)
    machine = print_machine()
    cat = load_catalog(args.catalog)
    paths = cat.image_paths[: args.limit]
    enc = get_encoder(precision=args.precision, threads=1, runtime="onnx")
    path = enc.export()
    pre = enc.preprocess
    cpu: dict[str, list[float]] = {k: [] for k in ("read", "sha1", "decode", "orient_rgb", "trim", "resize",
                                                   "colour", "dhash")}
    untrimmed = dataclasses.replace(pre, trim=False)
    pixels = []
    for p in paths:
        t = time.thread_time()
        data = p.read_bytes()
        t1 = time.thread_time()
        hashlib.sha1(data).hexdigest()
        t2 = time.thread_time()
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft("RGB", (pre.draft, pre.draft))
            if not args.full_scans:  # as the library does: progressive 1/8-scale JPEGs skip scans
                img = _lean_eighth_scale(img, pre.draft, len(data))
        img.load()
        t3 = time.thread_time()
        img = ImageOps.exif_transpose(img) or img
        img = img.convert("RGB") if img.mode != "RGB" else img
        t4 = time.thread_time()
        if pre.trim:
            img = trim_background(img)
        t4b = time.thread_time()
        px = prepare(img, untrimmed)
        t5 = time.thread_time()
        colour_descriptor(px)
        t6 = time.thread_time()
        dhash(px)
        t7 = time.thread_time()
        for key, a, b in (("read", t, t1), ("sha1", t1, t2), ("decode", t2, t3), ("orient_rgb", t3, t4),
                          ("trim", t4, t4b), ("resize", t4b, t5), ("colour", t5, t6), ("dhash", t6, t7)):
            cpu[key].append(b - a)
        pixels.append(px)
    batch = np.stack(pixels)
    mean, std = enc.spec.mean, enc.spec.std
    norm = []
    for s in range(0, len(batch), 32):
        t = time.thread_time()
        normalise(batch[s : s + 32], mean, std)
        norm.append((time.thread_time() - t) / len(batch[s : s + 32]))
    model: dict[str, float] = {}
    for engine in (e for e in ENGINES if engine_available(e)):
        session = open_session(engine, path, 1, mean, std)
        session.run(batch[:32])  # warm-up
        t = time.thread_time()
        for s in range(0, len(batch), 32):
            session.run(batch[s : s + 32])
        model[engine] = 1000 * (time.thread_time() - t) / len(batch)  # onnx: normalisation included
    rows = {k: 1000 * statistics.mean(v) for k, v in cpu.items()}
    rows["normalise"] = 1000 * statistics.mean(norm)  # part of onnx's model time below
    best = min(model, key=model.get)
    for engine, ms in model.items():
        rows[f"model[{engine}]"] = ms
    total = sum(v for k, v in rows.items() if not k.startswith("model") and k != "normalise") + model[best]
    print(f"\n{len(paths)} photos from {args.catalog} ({enc.precision}, {pre.size} px, 1 thread)")
    print(f"{'stage':<12} {'CPU ms/photo':>12} {'share':>7}")
    for k, v in rows.items():
        print(f"{k:<12} {v:12.2f} {v / total:7.1%}")
    print(f"{'total':<12} {total:12.2f}  (with model[{best}]; normalise is inside model[onnx])")
    result = {"machine": machine, "photos": len(paths), "precision": enc.precision, "size": pre.size, "fastest": best,
              "cpu_ms_per_photo": {k: round(v, 3) for k, v in rows.items()}, "total_ms": round(total, 2)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
