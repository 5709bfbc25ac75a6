"""Hostile photo uploads against ``lookalike serve`` on loopback: memory, errors and latency.

1. Prints the CPU (``lscpu`` model name and flags) and builds the bundled demo index into a
   temporary folder (or uses ``--index``).
2. Starts ``python -m lookalike serve INDEX --host 127.0.0.1 --port P`` (default workers)
   and warms it up with a few ordinary photo queries, so the model is loaded in every worker
   before the baseline memory is read.
3. Sends ``--uploads`` hostile uploads from as many threads at once, drawn in turn from
   ``--kinds``: ``png40`` a 40-megapixel RGB PNG (6320x6320, 150 kB on the wire, under both
   the byte and the pixel limit), ``png40a`` the same with an alpha channel, ``bomb`` a
   68-byte PNG that claims 20000x20000, ``lying`` a 16-px JPEG whose header claims
   6000x6000, ``cut`` a real JPEG cut to 30% with its end marker back. Meanwhile
   ``--clients`` threads send ``GET /products/{id}/similar`` in a loop.
4. Samples the resident memory (VmRSS) of the server and its workers every 20 ms, and
   reports: the baseline, the peak, the memory ``--settle`` seconds after the last
   upload, p50/p99 of the ordinary requests while the uploads ran, and status counts
   (every 5xx is a failure).

Everything stays on 127.0.0.1, bounded in count (``--uploads``, ``--clients``) and time
(``--max-seconds``); the server is stopped at the end. Results go to
``benchmarks/results/hostile_uploads.json`` (``--json`` to choose).

Usage::

    python benchmarks/bench_hostile_uploads.py [--uploads 16] [--kinds png40,bomb,lying,cut] [--clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]  # lookalike, hostile files, machine

from hostile import cut_jpeg, lying_jpeg, png  # noqa: E402
from machine import print_machine  # noqa: E402 - benchmarks/ is the script's folder

RESULTS = ROOT / "benchmarks" / "results" / "hostile_uploads.json"
KINDS: dict[str, Callable[[bytes], bytes]] = {
    "png40": lambda photo: png(6320, 6320),
    "png40a": lambda photo: png(6320, 6320, channels=4),
    "bomb": lambda photo: png(20_000, 20_000, rows=b""),
    "lying": lambda photo: lying_jpeg(6000, 6000),
    "cut": lambda photo: cut_jpeg(photo, 0.3),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and its children (the pre-forked workers), in MB."""
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def request(port: int, method: str, path: str, body: bytes = b"", ctype: str = "") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def upload(port: int, data: bytes, name: str = "photo") -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return request(port, "POST", "/similar?k=5", body, f"multipart/form-data; boundary={boundary}")


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            time.sleep(0.02)


def start_server(index: Path, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", str(index), "--host", "127.0.0.1",
                             "--port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if request(port, "GET", "/health")[0] == 200:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit("server did not start in 120 s")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lookalike import Recommender, build, demo_catalog

    with tempfile.TemporaryDirectory() as tmp:
        index = args.index
        if index is None:
            index = Path(tmp) / "demo-index"
            build(demo_catalog(), index, show_progress_bar=False)
        rec = Recommender.load(index)
        ids = rec.ids
        photo = rec.image_path(ids[0]).read_bytes()
        payloads = {kind: KINDS[kind](photo) for kind in args.kinds}
        port = free_port()
        proc = start_server(index, port, args.serve_args)
        try:
            cold = tree_rss_mb(proc.pid)
            for i in range(8):  # load the model in every worker before reading the baseline
                upload(port, rec.image_path(ids[i]).read_bytes())
            time.sleep(1.0)
            base = tree_rss_mb(proc.pid)
            sampler = Sampler(proc.pid)
            sampler.start()
            statuses: dict[str, dict[int, int]] = {kind: {} for kind in args.kinds}
            normal: list[float] = []
            normal_status: dict[int, int] = {}
            lock = threading.Lock()
            uploading = threading.Event()
            uploading.set()
            t_end = time.monotonic() + args.max_seconds

            def hostile(i: int) -> None:
                kind = args.kinds[i % len(args.kinds)]
                try:
                    status = upload(port, payloads[kind], name=kind)[0]
                except OSError:
                    status = 599  # the connection broke: counted as a server failure
                with lock:
                    statuses[kind][status] = statuses[kind].get(status, 0) + 1

            def ordinary(seed: int) -> None:
                rng = random.Random(seed)
                while uploading.is_set() and time.monotonic() < t_end:
                    t0 = time.perf_counter()
                    try:
                        status = request(port, "GET", f"/products/{rng.choice(ids)}/similar?k=5&same=Gender")[0]
                    except OSError:
                        status = 599
                    with lock:
                        normal.append((time.perf_counter() - t0) * 1000)
                        normal_status[status] = normal_status.get(status, 0) + 1

            clients = [threading.Thread(target=ordinary, args=(s,)) for s in range(args.clients)]
            uploads = [threading.Thread(target=hostile, args=(i,)) for i in range(args.uploads)]
            t0 = time.monotonic()
            for t in clients + uploads:
                t.start()
            for t in uploads:
                t.join(timeout=max(1.0, t_end - time.monotonic()))
            upload_seconds = time.monotonic() - t0
            uploading.clear()
            for t in clients:
                t.join(timeout=30)
            time.sleep(args.settle)
            sampler.stop.set()
            sampler.join()
            after = tree_rss_mb(proc.pid)
        finally:
            stop_server(proc)

    errors_5xx = sum(n for s in statuses.values() for code, n in s.items() if code >= 500)
    errors_5xx += sum(n for code, n in normal_status.items() if code >= 500)
    q = statistics.quantiles(normal, n=100) if len(normal) >= 2 else [float("nan")] * 99
    return {
        "uploads": args.uploads, "kinds": args.kinds, "clients": args.clients, "serve_args": args.serve_args,
        "rss_mb": {"cold": round(cold), "baseline": round(base), "peak": round(sampler.peak), "after": round(after),
                   "growth": round(sampler.peak - base), "after_minus_baseline": round(after - base)},
        "upload_seconds": round(upload_seconds, 2),
        "upload_status": {k: {str(c): n for c, n in sorted(v.items())} for k, v in statuses.items()},
        "normal": {"requests": len(normal), "p50_ms": round(statistics.median(normal), 1) if normal else None,
                   "p99_ms": round(q[98], 1) if normal else None,
                   "status": {str(c): n for c, n in sorted(normal_status.items())}},
        "errors_5xx": errors_5xx,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, default=None, help="index folder (default: the demo, built now)")
    parser.add_argument("--uploads", type=int, default=16, help="hostile uploads, all at once")
    parser.add_argument("--kinds", default="png40,png40a,bomb,lying,cut",
                        help=f"comma-separated, from {', '.join(KINDS)}")
    parser.add_argument("--clients", type=int, default=4, help="threads sending similar-by-id meanwhile")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS after")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("serve_args", nargs="*", help="extra `lookalike serve` arguments, after --")
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if not 1 <= args.uploads <= 256 or not 0 <= args.clients <= 64:
        parser.error("keep it bounded: 1..256 uploads, 0..64 clients")
    result = {"machine": print_machine(), **run(args)}
    rss = result["rss_mb"]
    print(f"{args.uploads} concurrent uploads of {', '.join(args.kinds)} with {args.clients} similar-by-id clients:")
    print(f"  server RSS (all processes): cold {rss['cold']} MB, baseline {rss['baseline']} MB, "
          f"peak {rss['peak']} MB (+{rss['growth']}), after {rss['after']} MB ({rss['after_minus_baseline']:+d})")
    print(f"  uploads took {result['upload_seconds']} s; status per kind: {json.dumps(result['upload_status'])}")
    n = result["normal"]
    print(f"  similar-by-id meanwhile: {n['requests']} requests, p50 {n['p50_ms']} ms, p99 {n['p99_ms']} ms, "
          f"status {json.dumps(n['status'])}")
    print(f"  5xx: {result['errors_5xx']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
