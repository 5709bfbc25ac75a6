"""Search latency while the catalogue changes: 8 clients of similar-by-id, with and without a
stream of writes (issue 10: read p99 under 10 writes/s within 1.5x of p99 without writes).

1. Copies the 2,906-product index (built by bench_server.py's ``ensure_index``) to a temp
   folder, and starts ``lookalike serve COPY --workers 2 --write-token-file …`` on 127.0.0.1.
2. Alternates rounds without and with writes (``--rounds`` each): ``--clients`` keep-alive
   clients send ``GET /products/{id}/similar?k=5&same=Gender`` for ``--seconds``; in the write
   rounds a separate thread sends ``--writes-per-s`` writes on its own connection: 4 of 5 are
   metadata changes (``PUT`` JSON), 1 of 5 a photo upload of a new product (``PUT``
   multipart: embedding, duplicate regrouping, a new segment), each committed before it answers.
3. Prints medians of p50/p99/throughput per mode and the ratio of p99s, with the CPU first.

Loopback only, bounded in time and count.

    python benchmarks/bench_reads_under_writes.py [--rounds 3] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import bench_server as bs
from machine import print_machine  # benchmarks/ is the script's folder


def writer(port: int, token: str, ids: list[str], photos: list[Path], rate: float, stop: threading.Event,
           out: dict, prefix: str = "", photo_every: int = 5) -> None:
    """Bounded stream of writes at ``rate`` per second until ``stop``; records latencies and statuses."""
    rng = random.Random(7)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    auth = {"Authorization": f"Bearer {token}"}
    n = 0
    start = time.perf_counter()
    while not stop.is_set() and n < 10_000:
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
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
        out.setdefault("latency_ms", []).append((time.perf_counter() - t0) * 1000)
        out.setdefault("status", {}).setdefault(str(status), 0)
        out["status"][str(status)] += 1
        n += 1
    out["writes"] = n
    out["rate"] = n / (time.perf_counter() - start)
    conn.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=bs.DEFAULT_INDEX)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--writes-per-s", type=float, default=10.0)
    ap.add_argument("--photo-every", type=int, default=5, help="one write in N uploads a photo (0: none)")
    ap.add_argument("--result-cache", type=int, default=0,
                    help="the server's result cache (default 0: off, so both modes search every request)")
    ap.add_argument("--out", type=Path, default=bs.ROOT / "benchmarks" / "results" / "reads_under_writes.json")
    args = ap.parse_args(argv)
    machine = print_machine()
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
                    stop, wout = threading.Event(), {}
                    t = None
                    if mode == "reads+writes":
                        t = threading.Thread(target=writer, args=(port, token, ids, photos, args.writes_per_s, stop,
                                                                  wout, f"r{r}-", args.photo_every), daemon=True)
                        t.start()
                    run = asyncio.run(bs.load(port, ids, args.clients, 10**7, args.seconds, seed=r))
                    stop.set()
                    if t is not None:
                        t.join(timeout=60)
                        lat = sorted(wout.get("latency_ms", [0.0]))
                        run["writes"] = {"count": wout.get("writes", 0), "rate": round(wout.get("rate", 0.0), 2),
                                         "status": wout.get("status", {}),
                                         "p50_ms": round(lat[len(lat) // 2], 1),
                                         "p99_ms": round(lat[int(0.99 * (len(lat) - 1))], 1)}
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
        summary[mode] = {k: statistics.median(x[k] for x in runs) for k in ("p50_ms", "p99_ms", "throughput_rps")}
    summary["p99_ratio"] = round(summary["reads+writes"]["p99_ms"] / summary["reads"]["p99_ms"], 2)
    summary["final_generation"] = gen
    result["summary"] = summary
    print("\n| mode | p50 ms | p99 ms | req/s |\n| --- | --- | --- | --- |")
    for mode in ("reads", "reads+writes"):
        s = summary[mode]
        print(f"| {mode} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['throughput_rps']:.0f} |")
    print(f"p99 with writes / without: {summary['p99_ratio']}x (target <= 1.5); generations committed: {gen}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
