"""Bounded load test of ``lookalike serve`` on loopback: similar-by-id at 1, 8 and 32 clients.

1. Builds the index of the 2,906-product catalogue (or reuses ``--index`` if it holds one).
2. Starts ``lookalike serve INDEX --host 127.0.0.1 --port P`` in a subprocess.
3. For each concurrency level, ``--requests`` requests (or ``--max-seconds``, whichever
   comes first) of ``GET /products/{id}/similar?k=5&same=Gender`` with random ids, each
   client on its own keep-alive connection, after a warm-up. Repeated ``--runs`` times.
4. Prints a markdown table (medians over runs) and writes every run to
   ``benchmarks/results/server.json``.

``--queries plain,steered`` (issue 21) measures a steered query beside the plain one, in the same
run against the same server, alternating level by level: ``steered`` is the same
similar-by-id with a numeric filter (``where=price<120``), a boost by a numeric column
(``boost=popularity:*0.005``), a cap (``max_per=SubCategory=2``) and the index's rules (100 pinned
pairs and one product blocked everywhere); ``plain`` sets ``defaults=false&rules=false``. The
catalogue has no prices, so this index is built from a copy of it with two synthetic columns
(``price`` 5–200 and ``popularity`` 0–100, drawn from a hash of the id: the same every time),
at ``.cache/bench/fashion-priced-index``.

The client is a minimal HTTP/1.1 client on asyncio streams (one event loop, a few tens of
microseconds per request) so that, on a small machine, the load generator takes as little
CPU as possible away from the server it measures. Every response's status is checked and
a sample of bodies is parsed. Loopback only: nothing leaves the machine.

Each level also records the CPU the server's processes (the supervisor and every worker) and
the client spent per request, and the same search in process (``Recommender.similar``, CPU
per search), so what the HTTP layer costs beside the search reads off one table.

``--code DIR`` (repeatable) compares source trees, e.g. two git worktrees: the server runs
with ``PYTHONPATH=DIR`` (that tree's ``lookalike``), the client and the index stay the same,
and the runs alternate between the trees, a fresh server for each run.

Usage::

    python benchmarks/bench_server.py [--index DIR] [--requests 2000] [--runs 3]
    python benchmarks/bench_server.py --levels 32 --runs 3 --code ../wt-before --code .
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from machine import print_machine  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOOKALIKE_SHARED", ROOT.parent / "shared"))
CATALOG = SHARED / "datasets" / "fashion-images" / "fashion.csv"
DEFAULT_INDEX = ROOT / ".cache" / "bench" / "fashion-index"
PRICED_INDEX = ROOT / ".cache" / "bench" / "fashion-priced-index"
#: each kind of query: the path's parameters after the product id
QUERIES = {
    "plain": "k=5&same=Gender",
    "plain, no defaults or rules": "k=5&same=Gender&defaults=false&rules=false",
    "steered": "k=5&same=Gender&where=price%3C120&boost=popularity%3A%2A0.005&max_per=SubCategory%3D2",
}
#: what `--queries` names: each kind's parameters, and the same query in process
KINDS = {
    "plain": (QUERIES["plain, no defaults or rules"], {"k": 5, "same": "Gender", "defaults": False, "rules": False}),
    "steered": (QUERIES["steered"], {"k": 5, "same": "Gender", "where": "price<120", "boost": "popularity:*0.005",
                                     "max_per": "SubCategory=2"}),
}
RULES_PINNED = 100
RESULTS = ROOT / "benchmarks" / "results" / "server.json"
LEVELS = (1, 8, 32)
TARGET_P99_MS = 50.0


# -- index and server ----------------------------------------------------------------------
WORKERS = 1


def ensure_index(index: Path) -> Path:
    if (index / "CURRENT").is_file() or (index / "manifest.json").is_file():
        print(f"reusing index {index}", file=sys.stderr)
        return index
    print(f"building {index} from {CATALOG} …", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "lookalike", "build", str(CATALOG), "--out", str(index)],
        check=True, stdout=sys.stderr,
    )
    return index


def ensure_priced_index(index: Path) -> Path:
    """The catalogue with synthetic ``price`` and ``popularity`` columns (from a hash of each id,
    so every build is the same), built once, with 100 pinned pairs and one product blocked."""
    if (index / "CURRENT").is_file():
        print(f"reusing index {index}", file=sys.stderr)
        return index
    import hashlib

    import pandas as pd

    table = pd.read_csv(CATALOG, dtype=str)
    digest = [hashlib.sha256(str(p).encode()).digest() for p in table["ProductId"]]
    table["price"] = [5 + int.from_bytes(d[:4], "big") % 19600 / 100 for d in digest]
    table["popularity"] = [int.from_bytes(d[4:8], "big") % 101 for d in digest]
    index.parent.mkdir(parents=True, exist_ok=True)
    priced = index.parent / "fashion-priced.csv"
    table.to_csv(priced, index=False)
    print(f"building {index} from {priced} …", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "lookalike", "build", str(priced), "--images",
                    str(CATALOG.parent / "images"), "--image-column", "Image", "--out", str(index)],
                   check=True, stdout=sys.stderr)
    from lookalike import IndexWriter, Recommender, Rule

    ids = Recommender.load(index).ids  # the products the build kept
    rng = random.Random(7)
    pins = [Rule("pin", rng.choice([i for i in ids if i != for_id]), for_id, 1) for for_id in rng.sample(ids, RULES_PINNED)]
    IndexWriter.open(index).change_rules(add=[*pins, Rule("block", rng.choice(ids), None, 1)])
    return index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(index: Path, port: int, extra: list[str] | None = None, code: Path | None = None) -> subprocess.Popen:
    """``lookalike serve`` on loopback; ``code``: the source tree whose ``lookalike`` it runs."""
    cmd = [sys.executable, "-m", "lookalike", "serve", str(index), "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(WORKERS), *(extra or [])]
    env = None
    if code is not None:  # run from the tree too: `python -m` puts the working folder first on sys.path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
        cmd[cmd.index(str(index))] = str(Path(index).resolve())
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty server must never block on it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not answer /health within 120 s")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process ``root`` and all its descendants: a server's parent,
    its workers and their writer processes."""
    return sum(cpu_seconds(pid) or 0.0 for pid in [root, *descendants(root)])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux), to show the server's cost per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        return json.loads(resp.read())


# -- the client ----------------------------------------------------------------------------
class Conn:
    """One keep-alive HTTP/1.1 connection; GET only; Content-Length bodies only."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        body = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None


async def load(port: int, ids: list[str], clients: int, requests: int, max_seconds: float,
               seed: int, query: str = QUERIES["plain"]) -> dict[str, Any]:
    rng = random.Random(seed)
    paths = [f"/products/{rng.choice(ids)}/similar?{query}" for _ in range(requests)]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_i = 0
    stop_at = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal next_i
        conn = Conn(port)
        try:
            while next_i < len(paths) and time.perf_counter() < stop_at:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                try:
                    status, body = await conn.get(paths[i])
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    await conn.close()
                    continue
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                elif i % 50 == 0 and len(json.loads(body)["results"]) != 5:
                    errors["short"] = errors.get("short", 0) + 1
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))] if ms else float("nan")

    return {
        "clients": clients,
        "requests": len(ms),
        "seconds": round(wall, 3),
        "throughput_rps": round(len(ms) / wall, 1) if wall else 0.0,
        "p50_ms": round(pct(50), 2),
        "p90_ms": round(pct(90), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(ms[-1], 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
        "errors": errors,
        "capped": len(ms) < requests,
    }


_LOADED: dict[str, Any] = {}


def library_latency(index: Path, ids: list[str], n: int = 300, seed: int = 1,
                    query: dict[str, Any] | None = None) -> dict[str, float]:
    """The same query in-process, for comparison: what the HTTP layer adds."""
    query = query or {"k": 5, "same": "Gender"}
    from lookalike import Recommender

    if str(index) not in _LOADED:
        try:  # as `lookalike serve` does: one BLAS thread per search
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1, user_api="blas")
        except ImportError:
            pass
        _LOADED[str(index)] = Recommender.load(index)
    rec = _LOADED[str(index)]
    rng = random.Random(seed)
    for _ in range(20):
        rec.similar(rng.choice(ids), **query)
    ms = []
    cpu0 = time.thread_time()  # this thread's CPU: what a worker's event loop pays for a search
    for _ in range(n):
        t0 = time.perf_counter()
        rec.similar(rng.choice(ids), **query)
        ms.append((time.perf_counter() - t0) * 1000)
    cpu = (time.thread_time() - cpu0) / n * 1000
    ms.sort()
    return {"p50_ms": round(ms[len(ms) // 2], 2), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 2),
            "cpu_ms_per_search": round(cpu, 3)}


# -- main ----------------------------------------------------------------------------------
def measure(port: int, proc: subprocess.Popen, index: Path, ids: list[str], levels: list[int],
            args: argparse.Namespace, r: int) -> dict[str, list[dict[str, Any]]]:
    """One run: every level against one server, with the CPU its processes and the client spent,
    and the CPU of the same search in process, measured right after (the machine's speed drifts).
    With several query kinds, each level runs each kind in turn (the order flips every run)."""
    kinds = args.queries[:: 1 if r % 2 == 0 else -1]
    run: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.queries}
    for c in levels:
        for kind in kinds:
            query, in_process = KINDS[kind] if kind in KINDS else (QUERIES["plain"], None)
            before, client0 = tree_cpu_seconds(proc.pid), time.process_time()
            stats = asyncio.run(load(port, ids, c, args.requests, args.max_seconds, seed=100 * r + c, query=query))
            after, client = tree_cpu_seconds(proc.pid), time.process_time() - client0
            if stats["requests"]:
                stats["server_cpu_ms_per_request"] = round((after - before) / stats["requests"] * 1000, 3)
                stats["client_cpu_ms_per_request"] = round(client / stats["requests"] * 1000, 3)
                search = library_latency(index, ids, n=300, seed=100 * r + c, query=in_process)["cpu_ms_per_search"]
                stats["search_cpu_ms_in_process"] = search
                stats["http_cpu_ms_per_request"] = round(stats["server_cpu_ms_per_request"] - search, 3)
            run[kind].append(stats)
    return run


def serve_and_measure(index: Path, ids: list[str], levels: list[int], args: argparse.Namespace, code: Path | None,
                      rounds: list[int]) -> tuple[dict[str, list[list[dict[str, Any]]]], dict[str, Any]]:
    """The runs numbered ``rounds`` against one server (of ``code``), started here after a
    warm-up: for each query kind, its runs."""
    port = free_port()
    proc = start_server(index, port, extra=["--result-cache", "0"] if args.no_result_cache else None, code=code)
    runs: dict[str, list[list[dict[str, Any]]]] = {kind: [] for kind in args.queries}
    try:
        info = health(port)
        for kind in args.queries:
            query = KINDS[kind][0] if kind in KINDS else QUERIES["plain"]
            asyncio.run(load(port, ids, 8, args.warmup, 30.0, seed=0, query=query))
        for r in rounds:
            for kind, run in measure(port, proc, index, ids, levels, args, r).items():
                runs[kind].append(run)
                label = " ".join(x for x in (str(code) if code is not None else "", kind if kind in KINDS else "") if x)
                print(f"{label + ' ' if label else ''}run {r + 1}: " + ", ".join(
                    f"{x['clients']}c {x['throughput_rps']:.0f} req/s p99 {x['p99_ms']} ms" for x in run),
                    file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return runs, info


def summarise(runs: list[list[dict[str, Any]]], levels: list[int]) -> list[dict[str, Any]]:
    summary = []
    for j, c in enumerate(levels):
        per = [run[j] for run in runs]
        row = {"clients": c, **{key: round(statistics.median(x[key] for x in per), 2)
                                for key in ("throughput_rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")}}
        for key in ("server_cpu_ms_per_request", "client_cpu_ms_per_request", "search_cpu_ms_in_process",
                    "http_cpu_ms_per_request"):
            row[key] = round(statistics.median(x[key] for x in per), 3) if all(key in x for x in per) else None
        row["throughput_spread"] = [min(x["throughput_rps"] for x in per), max(x["throughput_rps"] for x in per)]
        row["p99_spread"] = [min(x["p99_ms"] for x in per), max(x["p99_ms"] for x in per)]
        row["requests"] = sum(x["requests"] for x in per)
        row["errors"] = sum(sum(x["errors"].values()) for x in per)
        summary.append(row)
    return summary


def compare(plain: list[list[dict[str, Any]]], steered: list[list[dict[str, Any]]],
            levels: list[int]) -> list[dict[str, Any]]:
    """Steered over plain, run by run (the two ran back to back in each run), per level."""
    out = []
    for j, c in enumerate(levels):
        row: dict[str, Any] = {"clients": c}
        for key, name in (("p50_ms", "p50_ratio"), ("p99_ms", "p99_ratio"), ("throughput_rps", "throughput_ratio")):
            ratios = [s[j][key] / p[j][key] for p, s in zip(plain, steered) if p[j][key]]
            row[name] = round(statistics.median(ratios), 2) if ratios else None
            row[f"{name}_spread"] = [round(min(ratios), 2), round(max(ratios), 2)] if ratios else None
        out.append(row)
    return out


def print_table(summary: list[dict[str, Any]], cache_off: bool) -> None:
    print("| clients | throughput (req/s) | p50 (ms) | p90 (ms) | p99 (ms) | server CPU (ms/req) | "
          "client CPU (ms/req) | errors |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in summary:
        cpu = "–" if s["server_cpu_ms_per_request"] is None else f"{s['server_cpu_ms_per_request']:.2f}"
        client = "–" if s["client_cpu_ms_per_request"] is None else f"{s['client_cpu_ms_per_request']:.2f}"
        print(f"| {s['clients']} | {s['throughput_rps']:.0f} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | "
              f"{s['p99_ms']:.1f} | {cpu} | {client} | {s['errors']} |")
    at32 = next((s for s in summary if s["clients"] == 32), None)
    if at32:
        verdict = "met" if at32["p99_ms"] <= TARGET_P99_MS else "MISSED"
        print(f"target p99 ≤ {TARGET_P99_MS:.0f} ms at 32 clients: {verdict} ({at32['p99_ms']:.1f} ms; runs "
              f"{at32['throughput_spread'][0]:.0f}–{at32['throughput_spread'][1]:.0f} req/s, p99 "
              f"{at32['p99_spread'][0]:.1f}–{at32['p99_spread'][1]:.1f} ms)")
        if at32["http_cpu_ms_per_request"] is not None and cache_off:  # with the cache, many answers skip the search
            print(f"server CPU per request {at32['server_cpu_ms_per_request']:.3f} ms; the same search in "
                  f"process {at32['search_cpu_ms_in_process']:.3f} ms; the HTTP layer (the difference, median "
                  f"of the runs) {at32['http_cpu_ms_per_request']:.3f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=DEFAULT_INDEX, help="index folder to reuse, or to build into")
    ap.add_argument("--requests", type=int, default=2000, help="requests per level and run")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time cap per level and run")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrent clients, comma-separated")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--workers", type=int, default=2, help="`lookalike serve --workers` (its default on 2 cores)")
    ap.add_argument("--no-result-cache", action="store_true",
                    help="serve with --result-cache 0, so every request searches (issue 12's target)")
    ap.add_argument("--queries", default="default",
                    help="query kinds, comma-separated: default (the plain query), or plain,steered (issue 21: "
                         "a filter, a boost, a cap and rules beside the plain query, on a priced index)")
    ap.add_argument("--code", type=Path, action="append", default=None, metavar="DIR",
                    help="a source tree to serve from (PYTHONPATH=DIR); repeat to alternate runs between trees")
    args = ap.parse_args(argv)
    machine = print_machine()
    global WORKERS
    WORKERS = args.workers
    levels = [int(x) for x in args.levels.split(",")]
    args.queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    unknown = [q for q in args.queries if q != "default" and q not in KINDS]
    if unknown or not args.queries:
        ap.error(f"--queries: unknown kind {unknown}; choose from default, {', '.join(KINDS)}")
    steered = any(q in KINDS for q in args.queries)
    index = ensure_priced_index(PRICED_INDEX if args.index == DEFAULT_INDEX else args.index) if steered \
        else ensure_index(args.index)

    from lookalike import Recommender

    ids = Recommender.load(index).ids
    load_before = os.getloadavg()
    codes: list[Path | None] = [c.resolve() for c in args.code] if args.code else [None]
    runs: dict[str, list[list[dict[str, Any]]]] = {}

    def key(code: Path | None, kind: str) -> str:  # "None" for the one plain series
        return " · ".join(x for x in (str(code) if len(codes) > 1 else "", kind if kind in KINDS else "") if x) or "None"

    rounds = [list(range(args.runs))] if len(codes) == 1 else [[r] for r in range(args.runs)]
    for r in rounds:  # with several trees, alternating: a fresh server of each tree for each run
        for code in codes:
            got, info = serve_and_measure(index, ids, levels, args, code, r)
            for kind, kind_runs in got.items():
                runs.setdefault(key(code, kind), []).extend(kind_runs)
    load_after = os.getloadavg()
    lib = library_latency(index, ids)
    write_results(args, machine, index, info, lib, codes, runs, levels, load_before, load_after)
    return 0


def write_results(args: argparse.Namespace, machine: dict[str, Any], index: Path, info: dict[str, Any],
                  lib: dict[str, float], codes: list[Path | None], runs: dict[str, list[list[dict[str, Any]]]],
                  levels: list[int], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    import fastapi
    import uvicorn

    summaries = {key: summarise(value, levels) for key, value in runs.items()}
    result = {
        "command": " ".join(["python", "benchmarks/bench_server.py", *sys.argv[1:]]),
        "query": "GET /products/{id}/similar?k=5&same=Gender, random ids",
        "index": {"path": str(index), "rows": info["rows"], "model": info["model"], "backend": info["backend"]},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "versions": {"fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__},
        "settings": {"requests": args.requests, "max_seconds": args.max_seconds, "runs": args.runs,
                     "warmup": args.warmup, "result_cache": not args.no_result_cache, "workers": args.workers,
                     "alternating": len(codes) > 1},
        "target_p99_ms_at_32": TARGET_P99_MS,
        "library_in_process": lib,
        "machine": machine,
    }
    if list(runs) == ["None"]:
        result["summary_median_of_runs"], result["runs"] = summaries["None"], runs["None"]
    elif len(codes) > 1:
        result["code"] = {key: {"summary_median_of_runs": summaries[key], "runs": runs[key]} for key in runs}
    else:  # query kinds (issue 21)
        result["query"] = {kind: "GET /products/{id}/similar?" + KINDS[kind][0] for kind in args.queries}
        result["rules"] = {"pinned": RULES_PINNED, "blocked_everywhere": 1}
        result["queries"] = {key: {"summary_median_of_runs": summaries[key], "runs": runs[key]} for key in runs}
    if "plain" in runs and "steered" in runs:
        result["steered_vs_plain"] = compare(runs["plain"], runs["steered"], levels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    cache = "off" if args.no_result_cache else "on"
    print(f"similar-by-id over HTTP, {info['rows']} products ({info['model']}, {info['backend']}), "
          f"{os.cpu_count()} CPUs, {args.workers} workers, result cache {cache}, median of {args.runs} runs; "
          f"load average {load_before[0]:.1f} → {load_after[0]:.1f}")
    for key, summary in summaries.items():
        print(f"\n{'' if key == 'None' else key}")
        print_table(summary, args.no_result_cache)
    for row in result.get("steered_vs_plain", []):
        print(f"\nsteered against plain at {row['clients']} clients, run by run in the same server (median, "
              f"spread): p50 ×{row['p50_ratio']} ({row['p50_ratio_spread'][0]}–{row['p50_ratio_spread'][1]}), "
              f"p99 ×{row['p99_ratio']} ({row['p99_ratio_spread'][0]}–{row['p99_ratio_spread'][1]}), "
              f"req/s ×{row['throughput_ratio']} ({row['throughput_ratio_spread'][0]}–"
              f"{row['throughput_ratio_spread'][1]})")
    print(f"\nin-process `Recommender.similar`: p50 {lib['p50_ms']} ms, p99 {lib['p99_ms']} ms, "
          f"CPU {lib['cpu_ms_per_search']} ms a search")
    print(f"\nwritten: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
