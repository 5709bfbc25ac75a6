"""Where one HTTP request's CPU goes: similar-by-id, layer by layer, in process (issues 12 and 19).

``GET /products/{id}/similar?k=5&same=Gender`` with random ids, result cache off so every
request searches, timed through four nested layers, each on one thread and without sockets:

1. the search: ``Recommender.similar`` (filters, the index, the result rows);
2. the endpoint: the route's handler as lookalike wrote it (parameters, ETag, JSON, the
   response object), called with a ready ``Request``;
3. the ASGI app: FastAPI/Starlette's middleware, routing and sending the response;
4. the protocol: uvicorn's h11 protocol as ``lookalike serve`` runs it (with the header
   deadline), fed the request's bytes and writing the answer to a transport that keeps it.

Each layer's own cost is its time minus the layer inside it. Layers alternate over
``--rounds`` rounds and each figure is the median of the rounds (the machine is shared). What a
real server pays on top (sockets, the kernel, the event loop waiting) is the server CPU per
request of ``bench_server.py`` minus layer 4. Then a cProfile of layer 4, by package.

    python benchmarks/profile_request.py [--index DIR] [--requests 1000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import random
import statistics
import time
from pathlib import Path
from typing import Any

import bench_server as bs
from machine import print_machine  # benchmarks/ is the script's folder

LAYERS = (("lookalike/recommender", "search + result rows"), ("lookalike/index", "vector index"),
          ("lookalike/store", "vector index"), ("lookalike/filters", "search + result rows"),
          ("lookalike/server", "lookalike endpoint"), ("fastapi", "FastAPI"), ("starlette", "Starlette"),
          ("uvicorn", "uvicorn"), ("h11", "h11 (HTTP/1.1 parsing and writing)"), ("json", "JSON"),
          ("numpy", "NumPy"), ("asyncio", "asyncio"), ("hashlib", "ETag"))
QUERY = "k=5&same=Gender"


def _scope(path: str, query: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
            "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
            "root_path": "", "path_params": {"product_id": path.split("/")[2]}}


async def _call(app: Any, path: str, query: str) -> int:
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(path, query), receive, send)
    return status


class _Transport(asyncio.Transport):
    """A connection that keeps what is written to it (no socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.out: list[bytes] = []
        self.writes = 0
        self._closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.out.append(bytes(data))
        self.writes += 1

    def writelines(self, chunks: Any) -> None:  # type: ignore[override]
        self.write(b"".join(chunks))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _protocol(app: Any) -> tuple[Any, _Transport]:
    """uvicorn's protocol as ``lookalike serve`` configures it, on one kept connection."""
    import uvicorn
    from uvicorn.server import ServerState

    try:
        from lookalike.server.serve import uvicorn_options
    except ImportError:  # the code before the server package
        from lookalike.server import _uvicorn_options as uvicorn_options  # type: ignore[attr-defined,no-redef]
    config = uvicorn.Config(app, lifespan="off", **uvicorn_options(access_log=False, timeout_keep_alive=5,
                                                                    timeout_headers=10))
    config.load()
    proto = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},
                                       _loop=asyncio.get_running_loop())
    transport = _Transport()
    proto.connection_made(transport)
    return proto, transport


async def _through_protocol(proto: Any, transport: _Transport, path: str) -> None:
    transport.out.clear()
    proto.data_received(f"GET {path}?{QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    while not (proto.cycle is not None and proto.cycle.response_complete):
        await asyncio.sleep(0)
    head = b"".join(transport.out)
    assert head.startswith(b"HTTP/1.1 200"), head[:200]


def _layers(app: Any, rec: Any, paths: list[str]) -> dict[str, Any]:
    """One round: seconds per request of each layer, and the writes the protocol made per answer."""
    from starlette.requests import Request

    endpoint = app.router.routes[0].endpoint  # the hand-parsed route, in front of the documented one
    ids = [p.split("/")[2] for p in paths]
    t0 = time.perf_counter()
    for pid in ids:
        rec.similar(pid, k=5, same="Gender")
    search = (time.perf_counter() - t0) / len(ids)

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {"search": search}
        t0 = time.perf_counter()
        for p in paths:
            assert (await endpoint(Request(_scope(p, QUERY)))).status_code == 200
        out["endpoint"] = (time.perf_counter() - t0) / len(paths)
        t0 = time.perf_counter()
        for p in paths:
            assert await _call(app, p, QUERY) == 200
        out["app"] = (time.perf_counter() - t0) / len(paths)
        proto, transport = _protocol(app)
        writes = transport.writes
        t0 = time.perf_counter()
        for p in paths:
            await _through_protocol(proto, transport, p)
        out["protocol"] = (time.perf_counter() - t0) / len(paths)
        out["writes_per_answer"] = (transport.writes - writes) / len(paths)
        return out

    return asyncio.run(go())


def _profile(app: Any, paths: list[str]) -> dict[str, float]:
    async def go() -> None:
        proto, transport = _protocol(app)
        for p in paths:
            await _through_protocol(proto, transport, p)

    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(go())
    prof.disable()
    layers: dict[str, float] = {}
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        name = next((label for key, label in LAYERS if f"/{key}" in filename), "other")
        layers[name] = layers.get(name, 0.0) + tottime
    total = sum(layers.values()) or 1.0
    return {k: v / total for k, v in sorted(layers.items(), key=lambda kv: -kv[1])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=bs.DEFAULT_INDEX)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
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
    _layers(app, rec, paths[:200])  # warm-up
    rounds = [_layers(app, rec, paths) for _ in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    own = {
        "search: Recommender.similar (filters, index, result rows)": med["search"],
        "endpoint: parameters, ETag, JSON, response object": med["endpoint"] - med["search"],
        "ASGI app: FastAPI/Starlette middleware, routing, sending": med["app"] - med["endpoint"],
        "protocol: uvicorn h11 parsing and writing, header deadline": med["protocol"] - med["app"],
    }
    total = med["protocol"]
    print(f"\nsimilar-by-id in process, result cache off, n={args.requests}, median of {args.rounds} rounds: "
          f"{1000 * total:.3f} ms a request through the protocol, {med['writes_per_answer']:.1f} writes an answer")
    print(f"{'layer':<62} {'ms/request':>10} {'share':>7}")
    for name, seconds in own.items():
        print(f"{name:<62} {1000 * seconds:10.3f} {seconds / total:7.1%}")
    print(f"{'HTTP layer (all but the search)':<62} {1000 * (total - med['search']):10.3f} "
          f"{(total - med['search']) / total:7.1%}")
    shares = _profile(app, paths[: min(len(paths), 500)])
    print("\ncProfile of the protocol layer, own time by package:")
    for name, share in list(shares.items())[:10]:
        print(f"  {name:<40} {share:7.1%}")
    result = {"machine": machine, "requests": args.requests, "rounds": args.rounds,
              "ms_per_request": {k: round(1000 * v, 4) for k, v in med.items() if k != "writes_per_answer"},
              "writes_per_answer": med["writes_per_answer"],
              "own_ms": {k: round(1000 * v, 4) for k, v in own.items()},
              "rounds_ms": [{k: round(1000 * v, 4) for k, v in r.items() if k != "writes_per_answer"} for r in rounds],
              "profile_shares": {k: round(v, 4) for k, v in shares.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
