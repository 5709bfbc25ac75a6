"""lookalike against a peer, side by side (issue 12): the same similar-by-id workload on the
2,906-product index, served by ``lookalike serve`` and by a Milvus standalone server holding the
same vectors, at 1, 8 and 32 clients, interleaved, in one run.

- **lookalike**: ``lookalike serve INDEX --workers 2 --result-cache 0`` on 127.0.0.1 (so every
  request searches); keep-alive HTTP clients send ``GET /products/{id}/similar?k=5&same=Gender``
  (``bench_server.load``).
- **Milvus 2.3.5 standalone** (PyPI ``milvus``): one collection with the index's stored rows
  (``[shape, colour]``, the rows lookalike's exact back end searches; queries weighted by the
  colour weight as lookalike weights them, so inner product = our score) and ``Gender`` as a scalar field, FLAT (exact, as ours; its HNSW also returned no rows
  for ~1 in 5 filtered queries at this size, docs/milvus-notes.md), consistency ``Bounded``
  (``Strong`` waits ~200 ms per call). Client threads (pymilvus, gRPC) each send one search per
  query: the query product's vector, ``k = 6``, filter ``Gender == its gender and id != itself``,
  as an application holding the vectors would (Milvus has no search-by-id).

Both get the same random query ids. Reported per engine and client count: queries/s, p50/p99
latency, and the server's CPU per query (``/proc``, server process tree), which is fairer than
latency here since the clients share the same 2 cores. The result sets differ slightly on
purpose: lookalike also hides byte-identical photos and collapses near-duplicates.

The Milvus server listens on all interfaces, so this runs only in a private network namespace:

    scripts/run-in-netns.sh .venv/bin/python benchmarks/bench_peer.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import bench_server as bs
import isa
import numpy as np
from bench_scale import load_test
from machine import print_machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def milvus_rows(index: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Ids, stored rows ``[shape, colour]``, query rows ``[(1 - w) shape, w colour]`` (unit parts,
    ``w`` the index's colour weight: what lookalike searches with) and genders of the live products."""
    from lookalike.encoders import l2_normalize
    from lookalike.folder.store import Store
    from lookalike.search.backends.segmented import physical_rows

    snap = Store(index).snapshot()
    rows = np.concatenate([physical_rows(seg, "cosine") for seg in snap.segments])[snap.live].astype(np.float32)
    dim, w = int(snap.manifest["dim"]), float(snap.manifest.get("colour_weight", 0.0))
    queries = np.hstack([(1.0 - w) * l2_normalize(rows[:, :dim]), w * l2_normalize(rows[:, dim:])]).astype(np.float32)
    meta = snap.dense_columns()
    return [str(i) for i in meta[snap.id_column]], rows, queries, [str(g) for g in meta["Gender"]]


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def _unmasked_peer(running_server: Any, base: Path) -> Iterator[Any]:
    """Start the peer on the CPU as it is, even under ``LOOKALIKE_BENCH_ISA``: Milvus' Go runtime
    installs its own SIGSEGV handler, which the CPUID mask needs. The peer keeps AVX-512 then,
    which can only favour it; lookalike's server, started afterwards, runs masked."""
    with contextlib.ExitStack() as stack:
        with isa.unmasked():
            server = stack.enter_context(running_server(base))
        yield server


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=bs.DEFAULT_INDEX)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer.json")
    args = ap.parse_args(argv)

    from milvus_server import in_private_netns, running_server

    from lookalike.search.backends.milvus import IndexSpec, MilvusStore, exclusion_expression, filter_expression

    if not in_private_netns():
        raise SystemExit("the Milvus server listens on all interfaces: run this under scripts/run-in-netns.sh")
    machine = print_machine()
    source = bs.ensure_index(args.index)
    ids, rows, qrows, genders = milvus_rows(source)
    print(f"{len(ids)} products, rows of {rows.shape[1]} floats", flush=True)
    rng = random.Random(0)
    queries = [rng.randrange(len(ids)) for _ in range(20_000)]
    result: dict = {"machine": machine, "products": len(ids), "k": 5, "seconds": args.seconds, "runs": [],
                    "peer_isa": "native (AVX-512 kept: see _unmasked)" if isa.active() else "native"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    try:
        with _unmasked_peer(running_server, tmp / "milvus") as server:
            print(f"milvus: {server}", flush=True)
            store = MilvusStore(server.uri, timeout=60, consistency="Bounded")
            store.create("peer", dim=rows.shape[1], columns=["Gender"], index=IndexSpec("FLAT", {}))
            store.upsert(ids, rows, {"Gender": genders})
            store.flush()
            fields = store.fields
            exprs = [f"{filter_expression({'Gender': genders[q]}, fields=fields)} and {exclusion_expression([ids[q]])}"
                     for q in range(len(ids))]

            def milvus_one(i: int) -> None:
                q = queries[i]
                found = store.search(qrows[q], 6, expr=exprs[q])[0]
                if len(found) != 6:
                    raise RuntimeError(f"Milvus answered {len(found)} rows for {ids[q]}")

            port = bs.free_port()
            bs.WORKERS = 2
            proc = bs.start_server(source, port, extra=["--result-cache", "0"])
            try:
                # same answers? the top 5 of both, over 50 queries (lookalike also collapses duplicates)
                overlap = []
                for q in queries[:50]:
                    mine = [r["id"] for r in get_json(port, f"/products/{ids[q]}/similar?k=5&same=Gender")["results"]]
                    theirs = [pid for pid, _ in store.search(qrows[q], 5, expr=exprs[q])[0]]
                    overlap.append(len(set(mine) & set(theirs)) / 5)
                result["top5_overlap"] = round(statistics.mean(overlap), 3)
                print(f"top-5 overlap lookalike / Milvus over 50 queries: {result['top5_overlap']}", flush=True)
                milvus_one(0)
                asyncio.run(bs.load(port, ids, 8, 500, 10.0, seed=99))  # warm-up
                for clients in args.clients:
                    for engine in ("lookalike", "milvus"):
                        pid = proc.pid if engine == "lookalike" else server.pid
                        cpu0 = bs.tree_cpu_seconds(pid)
                        if engine == "lookalike":
                            run = asyncio.run(bs.load(port, ids, clients, 10**7, args.seconds, seed=clients))
                            done, qps = run["requests"], run["throughput_rps"]
                            p50, p99 = run["p50_ms"], run["p99_ms"]
                        else:
                            run = load_test(milvus_one, len(queries), clients, args.seconds, 10**7)
                            done, qps, p50, p99 = run["queries"], run["qps"], run["p50_ms"], run["p99_ms"]
                        cpu = bs.tree_cpu_seconds(pid) - cpu0
                        row = {"engine": engine, "clients": clients, "queries": done, "qps": round(qps, 1),
                               "p50_ms": p50, "p99_ms": p99,
                               "server_cpu_ms_per_query": round(cpu / max(done, 1) * 1000, 3),
                               "errors": run.get("errors") or {}}
                        result["runs"].append(row)
                        print(json.dumps(row), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| clients | lookalike q/s | Milvus q/s | ratio | lookalike p50 / p99 ms | Milvus p50 / p99 ms "
          "| server CPU ms/query: lookalike / Milvus |\n| --- | --- | --- | --- | --- | --- | --- |")
    for clients in args.clients:
        a = next(r for r in result["runs"] if r["engine"] == "lookalike" and r["clients"] == clients)
        b = next(r for r in result["runs"] if r["engine"] == "milvus" and r["clients"] == clients)
        print(f"| {clients} | {a['qps']:,.0f} | {b['qps']:,.0f} | {a['qps'] / max(b['qps'], 1e-9):.2f}x | "
              f"{a['p50_ms']} / {a['p99_ms']} | {b['p50_ms']} / {b['p99_ms']} | "
              f"{a['server_cpu_ms_per_query']} / {b['server_cpu_ms_per_query']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
