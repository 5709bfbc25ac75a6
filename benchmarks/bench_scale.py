"""Issue 11's scale benchmark: exact, HNSW and Milvus (Lite, and the standalone server) at 1,000,000 products.

Synthetic products of the real stored width: shape 256-d (unit) + colour 53-d (unit, non-negative),
searched as ``hstack([shape, colour])`` by inner product with the query ``[(1-w) shape_q, w colour_q]``
(w = 0.15). Vectors are clustered (2,000 centres + noise) and a Gender column (4 values) follows the
cluster 80 % of the time. For each back end: build/insert time, memory (RSS growth), bytes per product,
recall@10 against exact with and without the gender filter, and queries per second with p50/p99 latency
at 1 and 8 clients (threads issuing one query at a time).

    python benchmarks/bench_scale.py                       # exact, hnsw, milvus-lite; 1,000,000 rows
    scripts/run-in-netns.sh .venv/bin/python benchmarks/bench_scale.py --only milvus-server --rows 250000

The standalone server listens on all interfaces, so ``--only milvus-server`` refuses to run outside a
private network namespace. Each run merges its parts into ``--out`` (benchmarks/results/scale.json).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import descendants  # noqa: E402
from machine import describe, print_machine  # noqa: E402

SHAPE_DIM, COLOUR_DIM, W = 256, 53, 0.15
DIM = SHAPE_DIM + COLOUR_DIM
GENDERS = np.array(["Men", "Women", "Boys", "Girls"])
K = 10
PARTS = ("exact", "hnsw", "milvus-lite", "milvus-server")


# -- data ---------------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic(rows: int, seed: int = 0, centres: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Stored rows (rows, 309) float32 and their genders (index into GENDERS)."""
    rng = np.random.default_rng(seed)
    sc = rng.standard_normal((centres, SHAPE_DIM)).astype(np.float32)
    cc = np.abs(rng.standard_normal((centres, COLOUR_DIM))).astype(np.float32) * 2
    cluster_gender = rng.integers(0, 4, centres)
    vectors = np.empty((rows, DIM), np.float32)
    genders = np.empty(rows, np.int8)
    for start in range(0, rows, 100_000):  # blocks: bounded temporaries
        stop = min(rows, start + 100_000)
        a = rng.integers(0, centres, stop - start)
        s = sc[a] + 0.6 * rng.standard_normal((stop - start, SHAPE_DIM)).astype(np.float32)
        c = np.abs(cc[a] + rng.standard_normal((stop - start, COLOUR_DIM)).astype(np.float32))
        vectors[start:stop, :SHAPE_DIM] = unit(s)
        vectors[start:stop, SHAPE_DIM:] = unit(c)
        g = cluster_gender[a]
        flip = rng.random(stop - start) < 0.2
        g[flip] = rng.integers(0, 4, int(flip.sum()))
        genders[start:stop] = g
    return vectors, genders


def make_queries(vectors: np.ndarray, genders: np.ndarray, n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Noisy copies of stored rows, weighted [(1-w) shape, w colour]; each with its row's gender."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), n, replace=False)
    s = unit(vectors[rows, :SHAPE_DIM] + 0.03 * rng.standard_normal((n, SHAPE_DIM)).astype(np.float32))
    c = unit(np.abs(vectors[rows, SHAPE_DIM:] + 0.03 * rng.standard_normal((n, COLOUR_DIM)).astype(np.float32)))
    return np.hstack([(1 - W) * s, W * c]).astype(np.float32), genders[rows]


# -- measuring ----------------------------------------------------------------------------
def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children_rss_mib() -> float:
    total = 0.0
    for pid in descendants(os.getpid()):
        try:
            total += rss_mib(pid)
        except OSError:
            pass
    return total


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def recall(found: list[list[int]] | np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits, empty, short = 0, 0, 0
    for f, t in zip(found, truth):
        f = [int(x) for x in f if int(x) >= 0]
        hits += len(set(f[:K]) & set(int(x) for x in t))
        empty += not f
        short += len(f) < K
    return {"recall@10": round(hits / truth.size, 4), "empty": empty, "short": short}


def load_test(one: Callable[[int], Any], n_queries: int, clients: int, seconds: float, max_queries: int) -> dict[str, Any]:
    """``clients`` threads, each calling ``one(i)`` (one query) until ``seconds`` or ``max_queries`` pass."""
    lat: list[float] = []
    lock = threading.Lock()
    counter = iter(range(10**9))
    t_end = time.perf_counter() + seconds
    errors: list[str] = []

    def worker() -> None:
        mine = []
        while time.perf_counter() < t_end:
            with lock:
                i = next(counter)
            if i >= max_queries:
                break
            t0 = time.perf_counter()
            try:
                one(i % n_queries)
            except Exception as exc:  # noqa: BLE001 - report, don't hang the run
                errors.append(repr(exc)[:200])
                break
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"clients": clients, "queries": len(lat), "seconds": round(wall, 2),
            "qps": round(len(lat) / wall, 2) if wall else 0.0,
            "p50_ms": round(float(np.percentile(a, 50)), 2) if len(a) else None,
            "p99_ms": round(float(np.percentile(a, 99)), 2) if len(a) else None,
            **({"errors": errors[:3]} if errors else {})}


def load_tests(name: str, one_plain: Callable[[int], Any], one_filtered: Callable[[int], Any], nq: int,
               seconds: float, max_queries: int) -> list[dict[str, Any]]:
    out = []
    for filt, fn in (("none", one_plain), ("gender", one_filtered)):
        for clients in (1, 8):
            r = {"filter": filt, **load_test(fn, nq, clients, seconds, max_queries)}
            print(f"  {name} filter={filt} clients={clients}: {r}", flush=True)
            out.append(r)
    return out


# -- parts --------------------------------------------------------------------------------
def run_exact(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from lookalike.search.backends import ExactIndex, Filter

    vectors, q, qg = ctx["vectors"], ctx["queries"], ctx["qgenders"]
    r0 = rss_mib()
    t0 = time.perf_counter()
    index = ExactIndex(vectors, metric="cosine")
    build_s = time.perf_counter() - t0
    masks = ctx["masks"]
    t0 = time.perf_counter()
    _, truth = index.search(q, K)
    truth_f = np.empty((len(q), K), np.int64)
    for g in range(4):
        sel = qg == g
        if sel.any():
            _, truth_f[sel] = index.search(q[sel], K, filter=Filter.of_mask(masks[g]))
    gt_s = time.perf_counter() - t0
    ctx["truth"], ctx["truth_f"] = truth, truth_f
    print(f"  ground truth for {len(q)} queries x 2 in {gt_s:.1f} s", flush=True)
    qps = load_tests("exact", lambda i: index.search(q[i], K), lambda i: index.search(q[i], K, filter=Filter.of_mask(masks[qg[i]])),
                     len(q), args.seconds, args.max_queries)
    return {"backend": "exact", "rows": len(vectors), "build_s": round(build_s, 2),
            "rss_growth_mib": round(rss_mib() - r0, 1), "bytes_per_product": vectors.shape[1] * 4,
            "recall": {"none": {"recall@10": 1.0}, "gender": {"recall@10": 1.0}}, "load": qps,
            "ground_truth_s": round(gt_s, 1)}


def run_hnsw(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from lookalike.search.backends import Filter
    from lookalike.search.backends.hnsw import HNSWIndex

    vectors, q, qg, masks = ctx["vectors"], ctx["queries"], ctx["qgenders"], ctx["masks"]
    n = len(vectors)
    m, efc = args.m, args.ef_construction
    probe = {}
    if n > 100_000 and not args.no_probe:  # build rate first, on 100k rows
        t0 = time.perf_counter()
        small = HNSWIndex(vectors[:100_000], metric="cosine", m=m, ef_construction=efc)
        probe_s = time.perf_counter() - t0
        del small
        gc.collect()
        projected = probe_s * (n / 100_000) * 1.25  # n log n, roughly
        probe = {"rows": 100_000, "build_s": round(probe_s, 1), "projected_s": round(projected, 0)}
        print(f"  hnsw probe: 100k rows M={m} efC={efc} in {probe_s:.1f} s, 1M projected ~{projected:.0f} s", flush=True)
        if projected > args.max_build_s and efc > 40:
            efc = max(40, int(efc * args.max_build_s / projected))
            print(f"  -> efConstruction lowered to {efc}", flush=True)
    r0 = rss_mib()
    t0 = time.perf_counter()
    index = HNSWIndex(vectors, metric="cosine", m=m, ef_construction=efc, ef_search=16)
    build_s = time.perf_counter() - t0
    rss_growth = rss_mib() - r0
    h = index.index.hnsw
    graph_bytes = h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8
    print(f"  hnsw build {n} rows in {build_s:.1f} s, RSS +{rss_growth:.0f} MiB", flush=True)
    truth, truth_f = ctx["truth"], ctx["truth_f"]

    def run_recall(ef: int) -> tuple[dict, dict]:
        index.ef_search = ef
        _, r = index.search(q, K)
        found_f = []
        for i in range(len(q)):  # one query at a time: the graph walk (a batch > 32 goes exact)
            _, rf = index.search(q[i], K, filter=Filter.of_mask(masks[qg[i]]))
            found_f.append(rf[0])
        return recall(r, truth), recall(found_f, truth_f)

    sweep = []
    chosen = None
    for ef in args.ef_sweep:
        t0 = time.perf_counter()
        rn, rf = run_recall(ef)
        sweep.append({"ef_search": ef, "none": rn, "gender": rf, "s": round(time.perf_counter() - t0, 1)})
        print(f"  hnsw ef_search={ef}: {sweep[-1]}", flush=True)
        if rf["recall@10"] >= 0.95 and rn["recall@10"] >= 0.95:
            chosen = ef
            break
    if chosen is None:
        chosen = args.ef_sweep[-1]
    index.ef_search = chosen
    final = next(s for s in sweep if s["ef_search"] == chosen)
    qps = load_tests("hnsw", lambda i: index.search(q[i], K), lambda i: index.search(q[i], K, filter=Filter.of_mask(masks[qg[i]])),
                     len(q), args.seconds, args.max_queries)
    return {"backend": "hnsw", "rows": n, "params": {"M": m, "efConstruction": efc, "ef_search": chosen,
            "filtered_efSearch": f"ef_search * n / allowed (~{chosen * 4})"},
            "probe": probe, "build_s": round(build_s, 1), "rss_growth_mib": round(rss_growth, 1),
            "bytes_per_product": round((n * vectors.shape[1] * 4 + graph_bytes) / n, 1),
            "graph_bytes_per_product": round(graph_bytes / n, 1),
            "note": "FAISS keeps its own copy of the vectors besides lookalike's array (RSS counts both)",
            "recall": {"none": final["none"], "gender": final["gender"]}, "ef_sweep": sweep, "load": qps}


def milvus_common(store: Any, ctx: dict[str, Any], args: argparse.Namespace, name: str, rows: int,
                  ef: int | None, rss_fn: Callable[[], float]) -> dict[str, Any]:
    from lookalike.search.backends.milvus import filter_expression

    vectors, q, qg = ctx["vectors"], ctx["queries"], ctx["qgenders"]
    exprs = [filter_expression({"Gender": [str(g)]}, fields=store.fields) for g in GENDERS]
    keys = np.array([f"p{i}" for i in range(len(vectors))])

    def ids(res: list[list[tuple[str, float]]]) -> list[list[int]]:
        return [[int(k[1:]) for k, _ in hits] for hits in res]

    rn = recall(ids(store.search(q, K, ef=ef)), ctx["truth"])
    found_f = [None] * len(q)
    for g in range(4):
        sel = np.flatnonzero(qg == g)
        if len(sel):
            for j, hits in zip(sel, ids(store.search(q[sel], K, expr=exprs[g], ef=ef))):
                found_f[j] = hits
    rf = recall(found_f, ctx["truth_f"])
    print(f"  {name} recall: none {rn} gender {rf}", flush=True)
    qps = load_tests(name, lambda i: store.search(q[i], K, ef=ef),
                     lambda i: store.search(q[i], K, expr=exprs[qg[i]], ef=ef), len(q), args.seconds, args.max_queries)
    del keys
    return {"recall": {"none": rn, "gender": rf}, "load": qps}


def insert(store: Any, vectors: np.ndarray, genders: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    n = len(vectors)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        store.upsert([f"p{i}" for i in range(start, stop)], vectors[start:stop],
                     {"Gender": list(GENDERS[genders[start:stop]])})
        if (start // batch) % 50 == 0:
            print(f"    inserted {stop} rows, {time.perf_counter() - t0:.0f} s", flush=True)
    return time.perf_counter() - t0


def run_milvus_lite(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from lookalike.search.backends.milvus import MilvusStore

    vectors, genders = ctx["vectors"], ctx["genders"]
    n = len(vectors)
    tmp = Path(tempfile.mkdtemp(prefix="scale-lite-", dir=args.tmp))
    try:
        store = MilvusStore(tmp / "scale.db", batch_rows=args.milvus_batch)
        try:
            store.create("scale", dim=DIM, columns=["Gender"])
            r0 = children_rss_mib()
            insert_s = insert(store, vectors, genders, args.milvus_batch)
            t0 = time.perf_counter()
            store.flush()
            flush_s = time.perf_counter() - t0
            count = store.count()
            disk = dir_bytes(tmp)
            out = {"backend": "milvus-lite (FLAT)", "rows": count, "insert_s": round(insert_s, 1),
                   "flush_s": round(flush_s, 1), "rows_per_s": round(n / insert_s, 0),
                   "server_rss_mib": round(children_rss_mib(), 1), "server_rss_growth_mib": round(children_rss_mib() - r0, 1),
                   "bytes_per_product": round(disk / n, 1), "bytes_per_product_what": "on disk (.db folder)"}
            print(f"  milvus-lite: {out}", flush=True)
            out.update(milvus_common(store, ctx, args, "milvus-lite", n, None, children_rss_mib))
            out["server_rss_mib_after_queries"] = round(children_rss_mib(), 1)
            return out
        finally:
            store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_milvus_server(ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from milvus_server import in_private_netns, running_server

    from lookalike.search.backends.milvus import IndexSpec, MilvusStore

    if not in_private_netns():
        raise SystemExit("the Milvus server listens on all interfaces: run this under scripts/run-in-netns.sh")
    vectors, genders = ctx["vectors"], ctx["genders"]
    n = len(vectors)
    spec = IndexSpec("HNSW", {"M": 16, "efConstruction": 100})
    tmp = Path(tempfile.mkdtemp(prefix="scale-milvus-", dir=args.tmp))
    try:
        with running_server(tmp) as server:
            print(f"  {server}", flush=True)
            r0 = rss_mib(server.pid) + sum(rss_mib(p) for p in descendants(server.pid))
            store = MilvusStore(server.uri, batch_rows=args.milvus_batch, timeout=600)
            try:
                store.create("scale", dim=DIM, columns=["Gender"], index=spec)
                insert_s = insert(store, vectors, genders, args.milvus_batch)
                t0 = time.perf_counter()
                store.flush(wait_s=args.flush_wait_s)
                index_s = time.perf_counter() - t0
            finally:
                store.close()
            rss = rss_mib(server.pid) + sum(rss_mib(p) for p in descendants(server.pid))
            store = MilvusStore(server.uri, batch_rows=args.milvus_batch, timeout=600, consistency="Bounded")
            try:
                store.open("scale")
                count = store.count()
                disk = dir_bytes(tmp / "data") if (tmp / "data").exists() else dir_bytes(tmp)
                out = {"backend": "milvus-server (HNSW)", "rows": count, "params": {**spec.params, "ef": args.milvus_ef},
                       "server_start_s": round(server.start_s, 1), "insert_s": round(insert_s, 1),
                       "flush_and_index_s": round(index_s, 1), "rows_per_s": round(n / insert_s, 0),
                       "server_rss_mib": round(rss, 1), "server_rss_growth_mib": round(rss - r0, 1),
                       "bytes_per_product": round(disk / n, 1),
                       "bytes_per_product_what": "on disk under the server's base dir (data + index files, incl. logs)",
                       "consistency": "Bounded (query phase)"}
                print(f"  milvus-server: {out}", flush=True)
                out.update(milvus_common(store, ctx, args, "milvus-server", n, args.milvus_ef, lambda: 0.0))
                return out
            finally:
                store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


RUNNERS = {"exact": run_exact, "hnsw": run_hnsw, "milvus-lite": run_milvus_lite, "milvus-server": run_milvus_server}


# -- report -------------------------------------------------------------------------------
def table(results: list[dict[str, Any]]) -> str:
    lines = ["| back end | rows | build/insert s | RSS growth MiB | bytes/product | recall@10 | recall@10 gender "
             "| filter | 1 client QPS (p50/p99 ms) | 8 clients QPS (p50/p99 ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        build = r.get("build_s", r.get("insert_s"))
        if "flush_and_index_s" in r:
            build = f"{r['insert_s']} + index {r['flush_and_index_s']}"
        rss = r.get("rss_growth_mib", r.get("server_rss_growth_mib"))
        rn = r["recall"]["none"]
        rf = r["recall"]["gender"]

        def rec(x: dict) -> str:
            s = f"{x['recall@10']:.3f}"
            if x.get("empty"):
                s += f" ({x['empty']} empty)"
            elif x.get("short"):
                s += f" ({x['short']} short)"
            return s

        for filt in ("none", "gender"):
            loads = {x["clients"]: x for x in r["load"] if x["filter"] == filt}

            def fmt(c: int, loads: dict = loads) -> str:
                x = loads.get(c)
                return f"{x['qps']:.1f} ({x['p50_ms']}/{x['p99_ms']})" if x and x["queries"] else "-"

            lines.append(f"| {r['backend']} | {r['rows']:,} | {build} | {rss} | {r['bytes_per_product']} | {rec(rn)} "
                         f"| {rec(rf)} | {filt} | {fmt(1)} | {fmt(8)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--only", default="exact,hnsw,milvus-lite", help=f"comma-separated parts of {', '.join(PARTS)}")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0, help="per load test (one filter, one client count)")
    ap.add_argument("--max-queries", type=int, default=5000, help="per load test")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--max-build-s", type=float, default=480, help="lower efConstruction if the probe projects more")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--ef-sweep", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128, 256])
    ap.add_argument("--milvus-batch", type=int, default=2000)
    ap.add_argument("--milvus-ef", type=int, default=64)
    ap.add_argument("--flush-wait-s", type=float, default=900)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "scale.json"))
    args = ap.parse_args()
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    for p in parts:
        if p not in PARTS:
            raise SystemExit(f"unknown part {p!r}; choose from {', '.join(PARTS)}")

    print_machine()
    t0 = time.perf_counter()
    vectors, genders = synthetic(args.rows)
    q, qg = make_queries(vectors, genders, args.queries)
    masks = [genders == g for g in range(4)]
    ctx = {"vectors": vectors, "genders": genders, "queries": q, "qgenders": qg, "masks": masks}
    print(f"data: {args.rows:,} x {DIM} in {time.perf_counter() - t0:.1f} s; gender shares "
          f"{[round(float(m.mean()), 3) for m in masks]}; RSS {rss_mib():.0f} MiB", flush=True)
    if "exact" not in parts:  # ground truth is still exact's
        from lookalike.search.backends import ExactIndex, Filter

        ix = ExactIndex(vectors, metric="cosine")
        _, ctx["truth"] = ix.search(q, K)
        ctx["truth_f"] = np.empty((len(q), K), np.int64)
        for g in range(4):
            sel = qg == g
            if sel.any():
                _, ctx["truth_f"][sel] = ix.search(q[sel], K, filter=Filter.of_mask(masks[g]))
        del ix

    results, errors = [], {}
    for p in parts:
        print(f"== {p}", flush=True)
        t1 = time.perf_counter()
        try:
            r = RUNNERS[p](ctx, args)
            r["part_wall_s"] = round(time.perf_counter() - t1, 1)
            results.append(r)
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            errors[p] = repr(exc)[:500]
            print(f"  {p} failed: {exc!r}", flush=True)
        gc.collect()
        # write after each part: a cut run still leaves its numbers
        save(args, results, errors, parts)

    print()
    print(table(results))
    exact = next((r for r in results if r["backend"] == "exact"), None)
    if exact:
        ex = {x["clients"]: x["qps"] for x in exact["load"] if x["filter"] == "gender"}
        for r in results:
            if r is exact:
                continue
            mine = {x["clients"]: x["qps"] for x in r["load"] if x["filter"] == "gender"}
            rf = r["recall"]["gender"]["recall@10"]
            for c in (1, 8):
                if c in ex and c in mine and ex[c]:
                    ok = rf >= 0.95 and mine[c] >= 10 * ex[c]
                    print(f"target at {r['rows']:,} rows, {c} client(s): {r['backend']} gender recall {rf:.3f}, "
                          f"{mine[c] / ex[c]:.1f}x exact's QPS -> {'MET' if ok else 'not met'}")
    print(f"total {time.perf_counter() - t0:.0f} s")


def save(args: argparse.Namespace, results: list, errors: dict, parts: list[str]) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    data.setdefault("runs", {})
    key = ",".join(parts)
    data["runs"][key] = {"rows": args.rows, "queries": args.queries, "colour_weight": W, "dim": DIM,
                         "data": "2,000 clustered centres + noise; Gender follows the cluster 80 % of the time",
                         "machine": describe(), "results": results, "errors": errors,
                         "argv": sys.argv[1:], "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
