"""Live changes: how long a change takes to become searchable, and what a nightly sync saves.

(c) ``sync`` vs ``build``: the 2,906-product catalogue (photos copied to a temp folder) is built,
    then 1% of it changes (8 products re-shot: new photo bytes; 10 new titles; 5 removed; 6
    added with photos of their own) and ``Index.sync`` brings the index in line; a full
    ``build`` of the changed catalogue into a new folder (and ``build --update`` into a copy of
    the old index) is timed against it. Target: sync >= 20x faster than the full build.
(a) one upsert on that 2,906-product index: from the call until ``Recommender.load`` (in the
    same process, loaded segments reused as a server worker does) finds the new product; a
    full-resolution photo each time; the first (cold: ONNX Runtime session) reported apart.
(b) 100 upserts (real photos) into a 100,000-product index, as one call and as 100 calls. The
    index is synthetic (clustered 256-d unit vectors, 4 genders, catalogue columns as the real
    one) but carries the real index's projection and settings, so real photos embed as in
    production; its back end is exact (no 100k graph to build).

    python benchmarks/bench_live.py [--upserts 10] [--rows 100000] [--out results.json]

Prints the CPU first (``lscpu`` model and kernel flags).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import print_machine  # benchmarks/ is the script's folder
from PIL import Image, ImageOps

from lookalike import Recommender, build, get_encoder
from lookalike.folder.store import Store
from lookalike.writing.writer import Index

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOOKALIKE_SHARED", ROOT.parent / "shared")) / "datasets"  # as tests/conftest.py
FASHION = SHARED / "fashion-images"
FULLRES = SHARED / "fashion-images-fullres"


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


# -- (c) sync vs build ---------------------------------------------------------------------------
def change_one_percent(shop: Path, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, int]]:
    """Re-shoot 8, retitle 10, remove 5, add 6 (29 rows, 1% of 2,906); returns the new catalogue."""
    table = pd.read_csv(shop / "fashion.csv", dtype=str, keep_default_na=False)
    picks = rng.choice(len(table), 23, replace=False)
    reshoot, retitle, remove = picks[:8], picks[8:18], picks[18:23]
    for i in reshoot:  # the same product photographed again: new bytes, a different picture
        path = shop / "images" / table["Image"].iat[i]
        with Image.open(path) as im:
            ImageOps.mirror(im.convert("RGB")).rotate(3, fillcolor=(255, 255, 255)).save(path, quality=90)
    for i in retitle:
        table.loc[table.index[i], "ProductTitle"] += " (new season)"
    full = pd.read_csv(FULLRES / "fashion.csv", dtype=str, keep_default_na=False).iloc[:6]
    added = []
    for j, (_, r) in enumerate(full.iterrows()):
        name = f"new-{j}.jpg"
        with Image.open(FULLRES / "images" / r["Image"]) as im:  # a new product: its own, new photo
            ImageOps.flip(im.convert("RGB")).save(shop / "images" / name, quality=90)
        added.append({**r.to_dict(), "ProductId": f"new-{j}", "Image": name})
    table = pd.concat([table.drop(table.index[remove]), pd.DataFrame(added)[table.columns]], ignore_index=True)
    table.to_csv(shop / "fashion.csv", index=False)
    return table, {"re-embedded": 8, "metadata": 10, "removed": 5, "added": 6}


def bench_sync(work: Path, encoder, rng: np.random.Generator) -> tuple[dict, Path]:
    shop = work / "shop"
    shutil.copytree(FASHION / "images", shop / "images")
    shutil.copy(FASHION / "fashion.csv", shop / "fashion.csv")
    index = work / "index-2906"
    first, t_first = timed(build, shop / "fashion.csv", index, encoder=encoder, show_progress_bar=False)
    print(f"(c) build of the 2,906 products: {t_first:.1f} s ({first.indexed} indexed)")
    shutil.copytree(index, work / "index-before")
    _, expected = change_one_percent(shop, rng)
    report, t_sync = timed(Index.open(index, encoder=encoder).sync, shop / "fashion.csv", show_progress_bar=False)
    counts = report.counts()
    print(f"    sync after 1% changed: {t_sync:.2f} s: {report.summary().splitlines()[0]}")
    assert all(counts[k] == v for k, v in expected.items()), (counts, expected)
    _, t_full = timed(build, shop / "fashion.csv", work / "index-fresh", encoder=encoder, show_progress_bar=False)
    print(f"    full build of the changed catalogue: {t_full:.1f} s")
    upd, t_update = timed(build, shop / "fashion.csv", work / "index-before", encoder=encoder, update=True,
                          show_progress_bar=False)
    print(f"    build --update of the changed catalogue: {t_update:.1f} s ({upd.reused} reused)")
    same = sorted(Recommender.load(index).ids) == sorted(Recommender.load(work / "index-fresh").ids)
    result = {"rows": first.indexed, "first_build_s": round(t_first, 2), "sync_s": round(t_sync, 3),
              "full_build_s": round(t_full, 2), "build_update_s": round(t_update, 2),
              "speedup_vs_full_build": round(t_full / t_sync, 1), "speedup_vs_build_update": round(t_update / t_sync, 1),
              "counts": {k: v for k, v in counts.items() if v}, "same_products_as_the_build": same}
    print(f"    sync is {t_full / t_sync:.1f}x faster than a full build, {t_update / t_sync:.1f}x faster than "
          f"build --update (target >= 20x the full build)")
    return result, index


# -- (a) one upsert until searchable ---------------------------------------------------------------
def bench_one_upsert(index: Path, n: int) -> dict:
    full = pd.read_csv(FULLRES / "fashion.csv", dtype=str, keep_default_na=False).iloc[10 : 10 + n + 1]
    ix = Index.open(index, encoder=get_encoder())  # a fresh encoder: the first call pays its start
    Recommender.load(index)  # a worker that is already serving: segments loaded
    calls, visible = [], []
    for j, (_, r) in enumerate(full.iterrows()):
        row = {**r.to_dict(), "ProductId": f"live-{j}"}
        t0 = time.perf_counter()
        report = ix.upsert([row], images=FULLRES / "images")
        t1 = time.perf_counter()
        rec = Recommender.load(index)
        while f"live-{j}" not in rec:  # never loops: a returned upsert is committed
            rec = Recommender.load(index)
        t2 = time.perf_counter()
        assert report.counts()["added"] == 1 and rec.similar(f"live-{j}", k=5).ids
        calls.append(t1 - t0)
        visible.append(t2 - t0)
    warm_calls, warm_visible = calls[1:], visible[1:]
    result = {
        "index_rows": len(Recommender.load(index)) - len(full),
        "photo": "full-resolution JPEG (fashion-images-fullres)",
        "cold_first_s": round(visible[0], 3),
        "upsert_call_median_s": round(statistics.median(warm_calls), 3),
        "searchable_median_s": round(statistics.median(warm_visible), 3),
        "searchable_max_s": round(max(warm_visible), 3),
        "load_after_commit_median_s": round(statistics.median(v - c for v, c in zip(warm_visible, warm_calls)), 3),
        "upserts": len(warm_calls),
    }
    print(f"(a) one upsert into {result['index_rows']:,} products, photo -> searchable: median "
          f"{result['searchable_median_s'] * 1000:.0f} ms (call {result['upsert_call_median_s'] * 1000:.0f} ms + "
          f"load {result['load_after_commit_median_s'] * 1000:.0f} ms), max {result['searchable_max_s'] * 1000:.0f} ms "
          f"over {len(warm_calls)}; the first (cold encoder) {result['cold_first_s'] * 1000:.0f} ms")
    return result


# -- (b) 100 upserts into 100,000 products -----------------------------------------------------------
def synthetic_index(folder: Path, rows: int, real: Path, seed: int = 0) -> None:
    """A base segment of ``rows`` products with the real index's projection and settings."""
    snap = Store(real).snapshot()
    dim = snap.manifest["dim"]
    from bench_query import synthetic_vectors  # benchmarks/ is the script's folder

    vectors, colour, assign = synthetic_vectors(rows, dim, seed)
    rng = np.random.default_rng(seed + 1)  # hashes
    columns = snap.manifest["catalog"]["columns"]
    ids = [str(1_000_000 + i) for i in range(rows)]
    values = {
        "ProductId": ids,
        "Gender": np.array(["Men", "Women", "Boys", "Girls"])[assign % 4],
        "Category": np.array(["Apparel", "Footwear"])[assign % 2],
        "SubCategory": [f"sub{a % 9}" for a in assign],
        "ProductType": [f"type{a % 31}" for a in assign],
        "Colour": [f"colour{a % 23}" for a in assign],
        "Usage": np.array(["Casual", "Formal", "Sports"])[assign % 3],
        "ProductTitle": [f"Synthetic product {i} of cluster {a}" for i, a in enumerate(assign)],
        "Image": [f"{pid}.jpg" for pid in ids],
    }
    meta = pd.DataFrame({c: values.get(c, [""] * rows) for c in columns})
    meta["_image"] = [f"/nowhere/{pid}.jpg" for pid in ids]
    meta["_row"] = np.arange(1, rows + 1)
    meta["_sha1"] = [f"{h:040x}" for h in rng.integers(0, 2**62, rows)]
    meta["_dhash"] = rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)
    settings = {k: v for k, v in snap.manifest.items()}
    settings["catalog"] = {**settings["catalog"], "rows_total": rows, "path": None, "sha256": ""}
    settings["index"] = {"backend": "exact"}
    settings["duplicates"] = {**settings.get("duplicates", {}), "groups": 0, "rows": 0}
    with Store(folder).writer(create=True) as w:
        seg = w.add_segment(vectors, colour, meta, projection=snap.projection)
        w.commit(settings=settings, segments=[seg], live=np.ones(rows, bool), dup_exact=np.full(rows, -1),
                 dup_near=np.full(rows, -1), report=pd.DataFrame(columns=["row", "id", "image", "status", "reason"]),
                 operation={"kind": "build", "synthetic": True}, projection_segment=seg["name"])


def bench_100k(work: Path, real: Path, rows: int, encoder) -> dict:
    table = pd.read_csv(FASHION / "fashion.csv", dtype=str, keep_default_na=False).iloc[:100]
    new = [{**r.to_dict(), "ProductId": f"n{r['ProductId']}"} for _, r in table.iterrows()]
    encoder.encode_pixels(np.zeros((1, encoder.preprocess.size, encoder.preprocess.size, 3), np.uint8))  # warm
    out: dict = {"index_rows": rows, "upserts": len(new)}
    one = work / "synthetic-one-call"
    _, t_make = timed(synthetic_index, one, rows, real)
    print(f"(b) synthetic {rows:,}-product index written in {t_make:.1f} s")
    many = work / "synthetic-100-calls"
    shutil.copytree(one, many)
    report, t_one = timed(Index.open(one, encoder=encoder).upsert, new, images=FASHION / "images",
                          show_progress_bar=False)
    assert report.counts()["added"] == len(new), report.summary()
    out["one_call_s"] = round(t_one, 2)
    print(f"    {len(new)} upserts as one call: {t_one:.2f} s ({t_one / len(new) * 1000:.0f} ms per product)")
    ix = Index.open(many, encoder=encoder)
    per_call = []
    for r in new:
        rep, t = timed(ix.upsert, [r], images=FASHION / "images", show_progress_bar=False)
        assert rep.counts()["added"] == 1
        per_call.append(t)
    total = sum(per_call)
    out.update(hundred_calls_s=round(total, 2), per_call_median_s=round(statistics.median(per_call), 3),
               per_call_p95_s=round(float(np.percentile(per_call, 95)), 3), per_call_max_s=round(max(per_call), 3),
               segments_after=len(Store(many).snapshot().segments))
    print(f"    {len(new)} upserts as {len(new)} calls: {total:.2f} s (median {out['per_call_median_s'] * 1000:.0f} ms, "
          f"p95 {out['per_call_p95_s'] * 1000:.0f} ms, max {out['per_call_max_s'] * 1000:.0f} ms per call); "
          f"{total / t_one:.1f}x the one call")
    a, b = Recommender.load(one), Recommender.load(many)
    assert len(a) == len(b) == rows + len(new)
    probe = new[0]["ProductId"]
    assert a.similar(probe, k=10).ids == b.similar(probe, k=10).ids
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upserts", type=int, default=10, help="(a): single upserts timed (after a cold first one)")
    ap.add_argument("--rows", type=int, default=100_000, help="(b): products in the synthetic index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    machine = print_machine()
    encoder = get_encoder()
    rng = np.random.default_rng(args.seed)
    results: dict = {"machine": machine}
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        work = Path(tmp)
        results["sync_vs_build"], index = bench_sync(work, encoder, rng)
        results["one_upsert_2906"] = bench_one_upsert(index, args.upserts)
        results["upserts_100k"] = bench_100k(work, index, args.rows, encoder)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
