"""Similar-by-id latency and bytes per product at catalogue scale (synthetic vectors).

Writes a synthetic index folder in lookalike's own layout (clustered unit vectors of the
default model's stored size, a Gender-like column with 4 values, real-looking metadata),
then times ``Recommender.similar(id, k=5, same="Gender")`` in-process for the exact and the
HNSW back ends, checks HNSW against the exact oracle (recall@5), and compares with the
reference recipe's query (sklearn ``pairwise_distances`` over the query's gender, at the
reference's 62,720-d unpooled size, on a subset that fits in RAM, scaled).

    python benchmarks/bench_query.py --rows 100000 --out benchmarks/results/query.json

With ``--index DIR`` it times the same query on a real index instead (e.g. the 2,906
products); run it once as is and once with ``OPENBLAS_NUM_THREADS=1`` to see what BLAS
threading costs a single small query on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import print_machine  # benchmarks/ is the script's folder

from lookalike import Recommender
from lookalike.folder.store import Store
from lookalike.reading.images import COLOUR_DIM
from lookalike.search.backends import make_index


def synthetic_vectors(rows: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit shape vectors, unit colour descriptors, and each row's cluster (512 of them)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((512, dim)).astype(np.float32)
    assign = rng.integers(0, len(centres), rows)
    vectors = centres[assign] + 0.6 * rng.standard_normal((rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    colour = np.abs(rng.standard_normal((rows, COLOUR_DIM))).astype(np.float32)
    colour /= np.linalg.norm(colour, axis=1, keepdims=True)
    return vectors, colour, assign


def synthetic_index(folder: Path, rows: int, dim: int, backend: str, seed: int = 0) -> float:
    vectors, colour, assign = synthetic_vectors(rows, dim, seed)
    genders = np.array(["Men", "Women", "Boys", "Girls"])[assign % 4]
    meta = pd.DataFrame({
        "ProductId": [str(100000 + i) for i in range(rows)],
        "Gender": genders,
        "ProductType": [f"type{a % 31}" for a in assign],
        "ProductTitle": [f"synthetic product {i}" for i in range(rows)],
        "Image": [f"{100000 + i}.jpg" for i in range(rows)],
        "_image": "", "_row": np.arange(1, rows + 1), "_sha1": "", "_dhash": np.zeros(rows, np.int64),
    })
    t0 = time.perf_counter()
    extra = make_index(backend, np.hstack([vectors, colour]), metric="cosine").serialize()
    build_s = time.perf_counter() - t0
    settings = {
        "model": {"name": "efficientnet-lite0", "pooling": "grid2", "resize": "squash", "input_size": 224,
                  "dim": 5120, "projection_dim": dim},
        "dim": dim, "colour_dim": COLOUR_DIM, "metric": "cosine",
        "index": {"backend": backend}, "colour_weight": 0.0,
        "duplicates": {"groups": 0, "rows": 0},
        "catalog": {"path": None, "sha256": "", "rows_total": rows, "id_column": "ProductId",
                    "image_column": "Image", "columns": list(meta.columns[:5])},
        "build": {"synthetic": True}, "report": {"indexed": rows, "skipped": 0},
    }
    with Store(folder).writer(create=True) as w:
        seg = w.add_segment(vectors, colour, meta, extra=extra)
        w.commit(settings=settings, segments=[seg], live=np.ones(rows, bool), dup_exact=np.full(rows, -1),
                 dup_near=np.full(rows, -1), report=pd.DataFrame(columns=["row", "id", "image", "status", "reason"]),
                 operation={"kind": "build"}, projection_segment=None)
    return build_s


def time_queries(rec: Recommender, ids: list[str], **kw) -> tuple[float, list[list[str]]]:
    out, times = [], []
    for pid in ids:
        t0 = time.perf_counter()
        res = rec.similar(pid, **kw)
        times.append(time.perf_counter() - t0)
        out.append(res.ids)
    return statistics.median(times), out


def reference_query_ms(rows: int, n_queries: int = 20) -> float:
    """The reference recipe's query at its unpooled size: pairwise_distances over one gender."""
    from sklearn.metrics import pairwise_distances

    dim = 62720
    sub = 4000  # rows held in RAM for the timing; the cost is linear in rows
    rng = np.random.default_rng(1)
    feats = rng.random((sub, dim), dtype=np.float32)
    times = []
    for q in rng.integers(0, sub, n_queries):
        t0 = time.perf_counter()
        d = pairwise_distances(feats[q : q + 1], feats, metric="euclidean")[0]
        np.argsort(d)[:6]
        times.append(time.perf_counter() - t0)
    per_row = statistics.median(times) / sub
    return per_row * (rows / 4) * 1000  # one gender is a quarter of the catalogue


def real_index(path: Path, queries: int, out: Path | None) -> None:
    import os

    rec = Recommender.load(path)
    rng = np.random.default_rng(3)
    picks = [rec.ids[int(i)] for i in rng.integers(0, len(rec), queries)]
    time_queries(rec, picks[:20], k=5, same="Gender")  # warm up
    times = []
    for pid in picks:
        t0 = time.perf_counter()
        rec.similar(pid, k=5, same="Gender")
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    result = {
        "index": str(path), "rows": len(rec), "queries": queries,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average": round(os.getloadavg()[0], 2),
        "median_ms": round(float(np.median(ms)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
    }
    print(json.dumps(result, indent=2))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256, help="stored dimensions (the default model's: 256)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None, help="time a real index instead of a synthetic one")
    args = ap.parse_args()
    machine = print_machine()
    if args.index is not None:
        real_index(args.index, args.queries, args.out)
        return
    results: dict = {"rows": args.rows, "dim": args.dim, "queries": args.queries}
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(2)
        picks = [str(100000 + int(i)) for i in rng.integers(0, args.rows, args.queries)]
        answers = {}
        for backend in ("exact", "hnsw"):
            folder = Path(tmp) / backend
            build_s = synthetic_index(folder, args.rows, args.dim, backend)
            rec = Recommender.load(folder)
            time_queries(rec, picks[:20], k=5, same="Gender")  # warm up
            med, ans = time_queries(rec, picks, k=5, same="Gender")
            med_nf, _ = time_queries(rec, picks, k=5)
            answers[backend] = ans
            files = [f for f in folder.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            results[backend] = {
                "index_build_s": round(build_s, 2),
                "median_ms_same_gender": round(med * 1000, 3),
                "median_ms_no_filter": round(med_nf * 1000, 3),
                "bytes_per_product": round(size / args.rows),
                "files": {str(f.relative_to(folder)): f.stat().st_size for f in files},
            }
            print(backend, results[backend], flush=True)
        hits = [len(set(a) & set(b)) / 5 for a, b in zip(answers["exact"], answers["hnsw"])]
        results["hnsw_recall@5_vs_exact"] = round(float(np.mean(hits)), 4)
    ref_bytes = 100352 * 4
    results["reference"] = {
        "bytes_per_product_resnet50_unpooled": ref_bytes,
        "bytes_per_product_lite0_unpooled": 62720 * 4,
        "estimated_query_ms_at_rows": round(reference_query_ms(args.rows), 1),
    }
    for backend in ("exact", "hnsw"):
        results[backend]["bytes_ratio_vs_resnet50_unpooled"] = round(ref_bytes / results[backend]["bytes_per_product"], 1)
        results[backend]["bytes_ratio_vs_lite0_unpooled"] = round(62720 * 4 / results[backend]["bytes_per_product"], 1)
    results["machine"] = machine
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
