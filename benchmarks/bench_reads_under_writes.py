"""Search latency while the catalogue changes: 8 clients of similar-by-id, with and without a
stream of writes (issue 10: read p99 under 10 writes/s within 1.5x of p99 without writes).

1. Copies the 2,906-product index (built by bench_server.py's ``ensure_index``) to a temp
   folder, and starts ``lookalike serve COPY --workers 2 --write-token-file …`` on 127.0.0.1.
2. Alternates rounds without and with writes (``--rounds`` each): ``--clients`` keep-alive
   clients send ``GET /products/{id}/similar?k=5&same=Gender`` for ``--seconds``; in the write
   rounds an open-loop stream sends ``--writes-per-s`` writes (each due at its time, on one of
   ``--write-connections`` connections, so one slow write does not slow the stream): 4 of 5 are
   metadata changes (``PUT`` JSON), 1 of 5 a photo upload of a new product (``PUT``
   multipart: embedding, duplicate regrouping, a new segment), each committed before it answers.
   The write stream runs in a process of its own, so its threads never take the interpreter
   lock from the measured clients.
3. Prints medians of p50/p99/throughput per mode, the ratio of p99s, the writes' rate and
   latency, and the server's CPU seconds per round (parent, workers and writer processes), with
   the CPU model first.

Loopback only, bounded in time and count.

    python benchmarks/bench_reads_under_writes.py [--rounds 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import random
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_server as bs
from machine import print_machine  # benchmarks/ is the script's folder


def writer(port: int, token: str, ids: list[str], photos: list[Path], rate: float, stop: Any,
           out: dict, prefix: str = "", photo_every: int = 5, connections: int = 4) -> None:
    """An open-loop stream of writes: write ``n`` is due at ``start + n / rate``, sent on whichever
    of ``connections`` keep-alive connections is free (a slow write does not hold back the next
    one, as with several sources writing). Records latencies, statuses and how late writes left."""
    lock = threading.Lock()
    slot = [0]
    start = time.perf_counter()

    def one_connection(k: int) -> None:
        rng = random.Random(7 + k)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        auth = {"Authorization": f"Bearer {token}"}
        while not stop.is_set():
            with lock:
                n = slot[0]
                slot[0] += 1
            if n >= 10_000:
                break
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0 and stop.wait(delay):
                break
            t0 = time.perf_counter()
            if photo_every and n % photo_every == photo_every - 1:
                photo = photos[n % len(photos)]
                boundary = secrets.token_hex(8)
                body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"Gender\"\r\n\r\nMen\r\n"
                        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
                        f"Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
                headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
                path = f"/products/bench-new-{prefix}{n}"
            else:
                body = json.dumps({"ProductTitle": f"title {n}"}).encode()
                headers = {**auth, "Content-Type": "application/json"}
                path = f"/products/{rng.choice(ids)}"
            try:
                conn.request("PUT", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except OSError as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                out.setdefault("latency_ms", []).append((time.perf_counter() - t0) * 1000)
                out.setdefault("late_ms", []).append(max(0.0, t0 - due) * 1000)
                out.setdefault("status", {}).setdefault(str(status), 0)
                out["status"][str(status)] += 1
                out["writes"] = out.get("writes", 0) + 1
        conn.close()

    threads = [threading.Thread(target=one_connection, args=(k,), daemon=True) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["rate"] = out.get("writes", 0) / (time.perf_counter() - start)


def _writer_process(send: Any, *args: Any) -> None:
    out: dict = {}
    writer(*args[:6], out, *args[6:])
    send.send(out)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=bs.DEFAULT_INDEX)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writes-per-s", type=float, default=10.0)
    ap.add_argument("--photo-every", type=int, default=5, help="one write in N uploads a photo (0: none)")
    ap.add_argument("--write-connections", type=int, default=16,
                    help="connections the open-loop write stream may use at once")
    ap.add_argument("--result-cache", type=int, default=0,
                    help="the server's result cache (default 0: off, so both modes search every request)")
    ap.add_argument("--out", type=Path, default=bs.ROOT / "benchmarks" / "results" / "reads_under_writes.json")
    args = ap.parse_args(argv)
    machine = print_machine()
    mp = multiprocessing.get_context("fork")
    source = bs.ensure_index(args.index)
    photos = sorted((bs.SHARED / "datasets" / "fashion-images" / "images").glob("*.jpg"))[:200]
    result: dict = {"machine": machine, "clients": args.clients, "seconds": args.seconds,
                    "result_cache": args.result_cache, "photo_every": args.photo_every,
                    "writes_per_s": args.writes_per_s, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        shutil.copytree(source, index)
        token = secrets.token_hex(16)
        (Path(tmp) / "token").write_text(token)
        port = bs.free_port()
        bs.WORKERS = 2
        proc = bs.start_server(index, port, extra=["--write-token-file", str(Path(tmp) / "token"),
                                                   "--result-cache", str(args.result_cache)])
        try:
            from lookalike import Recommender

            ids = Recommender.load(index).ids
            asyncio.run(bs.load(port, ids, args.clients, 500, 10.0, seed=0))  # warm-up
            for r in range(args.rounds):
                for mode in ("reads", "reads+writes"):
                    stop, wout = mp.Event(), {}
                    t = None
                    if mode == "reads+writes":
                        # a process of its own: the write stream's threads must not take the
                        # interpreter lock from the clients whose latency is measured
                        receive, send = mp.Pipe(duplex=False)
                        t = mp.Process(target=_writer_process, args=(send, port, token, ids, photos,
                                                                     args.writes_per_s, stop, f"r{r}-",
                                                                     args.photo_every, args.write_connections))
                        t.start()
                    cpu0 = bs.tree_cpu_seconds(proc.pid)
                    run = asyncio.run(bs.load(port, ids, args.clients, 10**7, args.seconds, seed=r))
                    stop.set()
                    if t is not None:
                        wout = receive.recv() if receive.poll(60) else {}
                        t.join(timeout=30)
                        lat = sorted(wout.get("latency_ms", [0.0]))
                        late = sorted(wout.get("late_ms", [0.0]))
                        run["writes"] = {"count": wout.get("writes", 0), "rate": round(wout.get("rate", 0.0), 2),
                                         "status": wout.get("status", {}),
                                         "p50_ms": round(lat[len(lat) // 2], 1),
                                         "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 1),
                                         "late_p99_ms": round(late[int(0.99 * (len(late) - 1))], 1)}
                    run["server_cpu_s"] = round(bs.tree_cpu_seconds(proc.pid) - cpu0, 2)
                    run["mode"], run["round"] = mode, r
                    result["runs"].append(run)
                    print(json.dumps(run), flush=True)
            gen = bs.health(port).get("generation")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    summary = {}
    for mode in ("reads", "reads+writes"):
        runs = [x for x in result["runs"] if x["mode"] == mode]
        summary[mode] = {k: statistics.median(x[k] for x in runs)
                         for k in ("p50_ms", "p99_ms", "throughput_rps", "server_cpu_s")}
        if mode == "reads+writes":
            summary["writes"] = {k: statistics.median(x["writes"][k] for x in runs)
                                 for k in ("rate", "p50_ms", "p99_ms")}
    summary["p99_ratio"] = round(summary["reads+writes"]["p99_ms"] / summary["reads"]["p99_ms"], 2)
    summary["final_generation"] = gen
    result["summary"] = summary
    print("\n| mode | p50 ms | p99 ms | req/s | server CPU s per round |\n| --- | --- | --- | --- | --- |")
    for mode in ("reads", "reads+writes"):
        s = summary[mode]
        print(f"| {mode} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['throughput_rps']:.0f} | {s['server_cpu_s']:.1f} |")
    w = summary["writes"]
    print(f"writes: {w['rate']:.2f}/s, p50 {w['p50_ms']:.0f} ms, p99 {w['p99_ms']:.0f} ms (medians of rounds)")
    print(f"p99 with writes / without: {summary['p99_ratio']}x (target <= 1.5); generations committed: {gen}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
