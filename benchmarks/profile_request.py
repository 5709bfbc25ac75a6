"""Where one HTTP request's CPU goes: similar-by-id through the whole ASGI app, in process (issue 12).

Sends ``--requests`` ``GET /products/{id}/similar?k=5&same=Gender`` through the FastAPI app
(no sockets: the ASGI app is called directly, as uvicorn would) under cProfile, with the result
cache off so every request searches, and sums the time spent in each layer by the module a
function belongs to: the search and its result rows (lookalike), FastAPI and Starlette
(routing, dependencies), pydantic (query validation), JSON, NumPy. Prints the CPU first, and
the per-request cost next to the in-process ``Recommender.similar`` alone.

    python benchmarks/profile_request.py [--index DIR] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import time
from pathlib import Path

import bench_server as bs
from machine import print_machine  # benchmarks/ is the script's folder

LAYERS = (("lookalike.search.recommender", "search + result rows"), ("lookalike.search.backends", "vector index"),
          ("lookalike.server", "lookalike endpoint"), ("fastapi", "FastAPI routing and dependencies"),
          ("starlette", "Starlette"), ("pydantic", "pydantic validation"), ("json", "JSON"),
          ("numpy", "NumPy"), ("asyncio", "asyncio"), ("anyio", "thread pool (anyio)"))


async def _call(app, path: str, query: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "root_path": ""}
    status = 0

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=bs.DEFAULT_INDEX)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=bs.ROOT / "benchmarks" / "results" / "profile_request.json")
    args = ap.parse_args(argv)
    machine = print_machine()
    index = bs.ensure_index(args.index)
    from threadpoolctl import threadpool_limits

    from lookalike import Recommender
    from lookalike.server import create_app

    threadpool_limits(limits=1, user_api="blas")  # as lookalike serve
    rec = Recommender.load(index)
    app = create_app(rec, result_cache=0)
    rng = random.Random(0)
    paths = [f"/products/{rng.choice(rec.ids)}/similar" for _ in range(args.requests)]

    async def run(n: int) -> float:
        t0 = time.perf_counter()
        for p in paths[:n]:
            assert await _call(app, p, "k=5&same=Gender") == 200
        return time.perf_counter() - t0

    def per_request(make_path, query: str, n: int) -> float:
        async def go() -> float:
            for p in paths[:200]:
                await _call(app, make_path(p), query)  # warm-up
            t0 = time.perf_counter()
            for p in paths[:n]:
                assert await _call(app, make_path(p), query) == 200
            return (time.perf_counter() - t0) / n
        return asyncio.run(go())

    n = args.requests
    full = per_request(lambda p: p, "k=5&same=Gender", n)
    product = per_request(lambda p: p.rsplit("/", 1)[0], "", n)
    health = per_request(lambda p: "/health", "", n)
    t0 = time.perf_counter()
    for p in paths[:n]:
        rec.similar(p.split("/")[2], k=5, same="Gender")
    library = (time.perf_counter() - t0) / n
    rows = {
        "Recommender.similar (search, filters, result rows)": library,
        "query parsing, ETag, JSON (similar − product − search)": max(0.0, full - product - library),
        "GET /products/{id} over /health (a FastAPI route)": max(0.0, product - health),
        "ASGI + routing + a response (GET /health)": health,
    }
    print(f"\nsimilar-by-id through the ASGI app, in process, result cache off: {1000 * full:.3f} ms a request "
          f"(n={n}); by subtraction:")
    print(f"{'part':<52} {'ms/request':>10} {'share':>7}")
    for name, seconds in rows.items():
        print(f"{name:<52} {1000 * seconds:10.3f} {seconds / full:7.1%}")

    prof = cProfile.Profile()
    prof.enable()
    per_request(lambda p: p, "k=5&same=Gender", min(n, 500))
    prof.disable()
    print("\nthe event-loop thread's own time, by package (the endpoint itself runs in the thread pool):")
    stats = pstats.Stats(prof)
    layers: dict[str, float] = {}
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        name = next((label for key, label in LAYERS if f"/{key.replace('.', '/')}" in filename), "other")
        layers[name] = layers.get(name, 0.0) + tottime
    total = sum(layers.values()) or 1.0
    for name, seconds in sorted(layers.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name:<36} {seconds / total:7.1%}")
    result = {"machine": machine, "requests": n, "ms_per_request": round(1000 * full, 3),
              "parts_ms": {k: round(1000 * v, 4) for k, v in rows.items()},
              "event_loop_shares": {k: round(v / total, 4) for k, v in layers.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
