"""Products with several photos (issue 20): build over loopback HTTP against local files, and
similar-by-id at 100,000 products x 3 photos against 1 photo.

**build** — the same real photos built once from local paths and once as
``http://127.0.0.1:PORT/...`` URLs, served by a loopback HTTP server this script starts and stops
(bound to 127.0.0.1; ``ETag`` and ``Last-Modified`` on every photo, 304 on a matching
``If-None-Match``), alternating for ``--rounds`` rounds. Each build is a whole
``python -m lookalike -q build`` process with an empty ``--photo-cache``, timed with
``time.perf_counter`` around the child, its CPU time and max RSS read from ``os.wait4``
(``bench_build.run``). After each build, one ``sync`` of the unchanged catalogue and one
``build --update`` with the warm photo cache: over HTTP every photo is a conditional re-fetch
(the server counts the 200s and 304s it sent) and nothing is embedded again. Data sets:
``store-demos`` (25 products, 97 photos, ``images`` ``|``-separated) and
``fashion-images-fullres`` (200 full-resolution photos, one a product).

**similar** — synthetic index folders in lookalike's own layout, written without a model the
way ``writing/build._commit`` writes them (hidden ``_ref``/``_photo`` columns, one segment, the
HNSW graph as the segment's ``index.faiss``): ``--products`` products, each a point of one of
2,000 clusters, and its photos that point plus noise (photos of one product are correlated:
cosine ~0.9 between them, ~0.65 to other products of the cluster). The 1-photo index holds
photo 0 of each product of the 3-photo one. ``Recommender.similar(id, k=10)`` is timed
in-process over ``--queries`` random ids (the same for every index) after 20 warm-up queries,
for {1 photo, 3 photos} x {exact, hnsw}: ``--rounds`` rounds, each in chunks of ``--chunk`` ids
that visit the four indexes in an order rotated every chunk. The folders are kept in ``--work``
and reused by later runs with the same settings (the HNSW graphs take minutes on 2 cores).

    python benchmarks/bench_products.py                      # both parts -> benchmarks/results/products.json
    python benchmarks/bench_products.py --only build --rounds 3
    python benchmarks/bench_products.py --only similar --products 100000 --queries 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_build import run  # noqa: E402
from machine import print_machine  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("LOOKALIKE_SHARED", HERE.parents[1] / "shared"))
DATASETS = {
    # name: (catalogue, images folder, id column, photo column)
    "store-demos": (SHARED / "datasets" / "store-demos" / "catalog.csv", SHARED / "datasets" / "store-demos" / "images",
                    "product_id", "images"),
    "fullres": (SHARED / "datasets" / "fashion-images-fullres" / "fashion.csv",
                SHARED / "datasets" / "fashion-images-fullres" / "images", "ProductId", "Image"),
}
SEPARATOR = "|"


# -- the loopback photo server ------------------------------------------------------------
class PhotoServer:
    """Files below ``root`` over HTTP/1.1 on 127.0.0.1 (a CDN stand-in), counting answers by status."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.counts: Counter[int] = Counter()
        self.bytes_sent = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(body)
                with server._lock:
                    server.counts[status] += 1
                    server.bytes_sent += len(body)

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
                path = (server.root / rel).resolve()
                if not path.is_relative_to(server.root) or not path.is_file():
                    self._answer(404, {"Content-Length": "0"})
                    return
                st = path.stat()
                etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
                tags = {t.strip() for t in self.headers.get("If-None-Match", "").split(",")}
                common = {"ETag": etag, "Last-Modified": formatdate(st.st_mtime, usegmt=True),
                          "Cache-Control": "max-age=0"}
                if etag in tags:
                    self._answer(304, {**common, "Content-Length": "0"})
                    return
                body = path.read_bytes()
                ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self._answer(200, {**common, "Content-Type": ctype, "Content-Length": str(len(body))}, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PhotoServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    def take_counts(self) -> dict[str, int]:
        """Answers since the last call, by status, and the body bytes sent."""
        with self._lock:
            out = {str(k): v for k, v in sorted(self.counts.items())}
            out["bytes"] = self.bytes_sent
            self.counts.clear()
            self.bytes_sent = 0
        return out


def url_catalogue(csv: Path, photo_column: str, base: str, out: Path) -> int:
    """``csv`` with each photo of ``photo_column`` as a URL below ``base``; the photos it names."""
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    n = 0

    def urls(cell: str) -> str:
        nonlocal n
        parts = [p.strip() for p in cell.split(SEPARATOR) if p.strip()]
        n += len(parts)
        return SEPARATOR.join(base + urllib.parse.quote(p) for p in parts)

    table[photo_column] = table[photo_column].map(urls)
    table.to_csv(out, index=False)
    return n


# -- part 1: build --------------------------------------------------------------------------
def lookalike(*args: str) -> list[str]:
    return [sys.executable, "-m", "lookalike", "-q", *args]


def index_rows(folder: Path, id_column: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    from lookalike.folder.store import Store

    snap = Store(folder).snapshot()
    ids = snap.dense_columns()[id_column]
    vectors, colour = snap.dense_arrays()
    return len(ids), len(set(map(str, ids))), np.asarray(vectors), np.asarray(colour)


def reused_photos(folder: Path) -> int:
    """The photos the last build of ``folder`` took from the previous index instead of embedding."""
    from lookalike.folder.store import Store

    return int(Store(folder).snapshot().settings.build.get("reused", -1))


def build_part(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / "build"
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"rounds": args.rounds, "datasets": {}}
    for name in args.datasets:
        csv, images, id_col, photo_col = DATASETS[name]
        common = ["--id-column", id_col, "--image-column", photo_col, "--image-separator", SEPARATOR]
        with PhotoServer(images) as server:
            base = f"http://127.0.0.1:{server.port}/"
            url_csv = work / f"{name}-urls.csv"
            photos_named = url_catalogue(csv, photo_col, base, url_csv)
            variants = {
                "local": {"csv": csv, "extra": ["--images", str(images)]},
                "http": {"csv": url_csv, "extra": []},
            }
            runs: dict[str, dict[str, list[dict[str, Any]]]] = {v: {"build": [], "sync": [], "update": []}
                                                              for v in variants}
            print(f"[build] {name}: {photos_named} photos named, server on {base}", file=sys.stderr, flush=True)
            # one untimed build of each: the model and its calibration are in LOOKALIKE_CACHE_DIR
            for v, spec in variants.items():
                with tempfile.TemporaryDirectory(dir=work) as cache:
                    run(lookalike("build", str(spec["csv"]), "--out", str(work / f"{name}-{v}"), *common,
                                  *spec["extra"], "--photo-cache", cache))
            server.take_counts()
            same_vectors = None
            for r in range(args.rounds):
                order = list(variants) if r % 2 == 0 else list(variants)[::-1]
                for v in order:
                    spec = variants[v]
                    folder = work / f"{name}-{v}"
                    shutil.rmtree(folder, ignore_errors=True)
                    cache = Path(tempfile.mkdtemp(dir=work, prefix="photo-cache-"))
                    try:
                        res = run(lookalike("build", str(spec["csv"]), "--out", str(folder), *common, *spec["extra"],
                                            "--photo-cache", str(cache)))
                        res.pop("stdout")
                        res["server"] = server.take_counts()
                        runs[v]["build"].append(res)
                        # the same catalogue again, the photo cache warm: conditional re-fetches only
                        res = run(lookalike("sync", str(folder), str(spec["csv"]), *spec["extra"], "--format", "json"))
                        report = json.loads(res.pop("stdout"))
                        res["counts"] = {k: n for k, n in report["counts"].items() if n}
                        res["server"] = server.take_counts()
                        runs[v]["sync"].append(res)
                        res = run(lookalike("build", str(spec["csv"]), "--out", str(folder), *common, *spec["extra"],
                                            "--photo-cache", str(cache), "--update"))
                        res.pop("stdout")
                        res["server"] = server.take_counts()
                        res["reused"] = reused_photos(folder)
                        runs[v]["update"].append(res)
                    finally:
                        shutil.rmtree(cache, ignore_errors=True)
                    b = runs[v]["build"][-1]
                    print(f"  round {r + 1} {v:5s}: build {b['wall_s']:.2f} s, max RSS {b['max_rss_mib']:.0f} MiB, "
                          f"server {b['server']}; sync {runs[v]['sync'][-1]['wall_s']:.2f} s "
                          f"{runs[v]['sync'][-1]['counts']} server {runs[v]['sync'][-1]['server']}; "
                          f"update {runs[v]['update'][-1]['wall_s']:.2f} s (load {b['loadavg_before'][0]})",
                          file=sys.stderr, flush=True)
                if r == 0:
                    rows_l, products_l, vec_l, col_l = index_rows(work / f"{name}-local", id_col)
                    rows_h, products_h, vec_h, col_h = index_rows(work / f"{name}-http", id_col)
                    same_vectors = bool(rows_l == rows_h and np.array_equal(vec_l, vec_h) and np.array_equal(col_l, col_h))
                    photos, products = rows_l, products_l
        ds: dict[str, Any] = {
            "catalogue": str(csv), "photos": photos, "products": products, "photos_named": photos_named,
            "identical_vectors_local_vs_http": same_vectors,
            "commands": {
                "local": " ".join(lookalike("build", str(csv), "--out", "OUT", *common, "--images", str(images),
                                            "--photo-cache", "EMPTY_DIR")),
                "http": " ".join(lookalike("build", "URLS.csv", "--out", "OUT", *common, "--photo-cache", "EMPTY_DIR")),
                "sync": "python -m lookalike -q sync OUT CSV [--images DIR] --format json",
                "update": "python -m lookalike -q build CSV --out OUT ... --photo-cache WARM_DIR --update",
            },
        }
        for v in variants:
            ds[v] = {kind: {**summary(rs, photos), "runs": rs} for kind, rs in runs[v].items()}
        ds["http_over_local_build_wall"] = {
            "median": round(ds["http"]["build"]["median_wall_s"] / ds["local"]["build"]["median_wall_s"], 3),
            "per_round": [round(h["wall_s"] / loc["wall_s"], 3)
                          for h, loc in zip(runs["http"]["build"], runs["local"]["build"], strict=True)],
        }
        out["datasets"][name] = ds
    return out


def summary(runs: list[dict[str, Any]], photos: int) -> dict[str, Any]:
    walls = [r["wall_s"] for r in runs]
    wall = statistics.median(walls)
    return {
        "median_wall_s": round(wall, 3), "min_wall_s": min(walls), "max_wall_s": max(walls),
        "photos_per_s": round(photos / wall, 1),
        "photos_per_s_range": [round(photos / max(walls), 1), round(photos / min(walls), 1)],
        "median_cpu_s": round(statistics.median(r["user_s"] + r["sys_s"] for r in runs), 3),
        "median_max_rss_mib": round(statistics.median(r["max_rss_mib"] for r in runs), 1),
        "max_rss_mib_range": [min(r["max_rss_mib"] for r in runs), max(r["max_rss_mib"] for r in runs)],
        "loadavg_1min": [r["loadavg_before"][0] for r in runs],
    }


# -- part 2: similar-by-id on synthetic products ----------------------------------------------
SHAPE_DIM = 256
CLUSTERS = 2000
GENDERS = np.array(["Men", "Women", "Boys", "Girls"])


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_photos(products: int, photos: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows product-major (a product's photos together, in photo order): unit shape vectors,
    unit non-negative colour, and each product's cluster. Photo j of a product is the same
    whatever ``photos`` is (its noise is drawn per photo slot), so the 1-photo index holds
    photo 0 of the products of the 3-photo one."""
    from lookalike.reading.images import COLOUR_DIM

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, SHAPE_DIM)).astype(np.float32)
    ccentres = np.abs(rng.standard_normal((CLUSTERS, COLOUR_DIM))).astype(np.float32) * 2
    cluster = rng.integers(0, CLUSTERS, products)
    vectors = np.empty((products, photos, SHAPE_DIM), np.float32)
    colour = np.empty((products, photos, COLOUR_DIM), np.float32)
    block = 50_000
    for start in range(0, products, block):
        stop = min(products, start + block)
        sub = np.random.default_rng([seed, start])
        a = cluster[start:stop]
        point = centres[a] + 0.6 * sub.standard_normal((stop - start, SHAPE_DIM)).astype(np.float32)
        cpoint = ccentres[a] + 0.6 * sub.standard_normal((stop - start, COLOUR_DIM)).astype(np.float32)
        for j in range(3):  # always draw 3 slots: photo j is the same in every index
            view = point + 0.4 * sub.standard_normal(point.shape).astype(np.float32)
            cview = np.abs(cpoint + 0.4 * sub.standard_normal(cpoint.shape).astype(np.float32))
            if j < photos:
                vectors[start:stop, j] = _unit(view)
                colour[start:stop, j] = _unit(cview)
    return vectors.reshape(-1, SHAPE_DIM), colour.reshape(-1, COLOUR_DIM), cluster


def write_index(folder: Path, products: int, photos: int, backend: str, seed: int, m: int, efc: int) -> dict[str, Any]:
    """A synthetic index folder, committed as ``writing/build._commit`` commits a build."""
    from lookalike.config import DEFAULT_COLOUR_WEIGHT
    from lookalike.folder.manifest import BackendSettings, CatalogSettings, Manifest, ModelSettings
    from lookalike.folder.rows import hidden_columns, searchable
    from lookalike.folder.store import Store
    from lookalike.reading.images import COLOUR_DIM
    from lookalike.search.backends import make_index
    from lookalike.writing.build import report_table

    t0 = time.perf_counter()
    vectors, colour, cluster = synthetic_photos(products, photos, seed)
    pids = np.array([str(100000 + i) for i in range(products)], dtype=object)
    refs = [f"p{pid}_{j}.jpg" for pid in pids for j in range(photos)]
    cells = [SEPARATOR.join(refs[i * photos:(i + 1) * photos]) for i in range(products)]
    prod = np.repeat(np.arange(products), photos)
    rows_n = products * photos
    table = pd.DataFrame({
        "ProductId": pids, "Gender": GENDERS[cluster % 4], "ProductType": [f"type{c % 31}" for c in cluster],
        "ProductTitle": [f"synthetic product {i}" for i in range(products)], "Image": cells,
    })
    meta = table.iloc[prod].reset_index(drop=True).astype(str)  # each photo's row carries its product's cells
    sha1s = [hashlib.sha1(r.encode()).hexdigest() for r in refs]
    dhashes = np.random.default_rng(seed + 1).integers(0, 2**63, rows_n, dtype=np.int64).astype(np.uint64)
    for col, values in hidden_columns([f"/synthetic/{r}" for r in refs], (prod + 2).tolist(), sha1s, dhashes, refs,
                                      np.tile(np.arange(photos), products).tolist()).items():
        meta[col] = values
    report = report_table([{"row": int(prod[i]) + 2, "id": pids[prod[i]], "image": refs[i], "status": "indexed",
                            "reason": ""} for i in range(rows_n)])
    manifest = Manifest(
        model=ModelSettings(name="efficientnet-lite0", pooling="grid2", dim=5120, resize="pad", trim=True,
                            input_size=256, precision="int8", projection_dim=SHAPE_DIM),
        dim=SHAPE_DIM, projection=None, colour_dim=COLOUR_DIM, metric="cosine", index=BackendSettings(backend),
        colour_weight=DEFAULT_COLOUR_WEIGHT,
        duplicates={"groups": 0, "rows": 0},
        catalog=CatalogSettings(path=None, sha256="", rows_total=products, id_column="ProductId",
                                image_column="Image", image_columns=("Image",), image_separator=SEPARATOR,
                                columns=tuple(table.columns)),
        build={"synthetic": True, "photos_per_product": photos, "seed": seed,
               **({"hnsw": {"m": m, "ef_construction": efc}} if backend == "hnsw" else {})},
        report={"indexed": products, "skipped": 0, **({"photos": rows_n} if photos > 1 else {})},
    )
    prep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    options = {"m": m, "ef_construction": efc} if backend == "hnsw" else {}
    extra = make_index(backend, searchable(vectors, colour, "cosine"), metric="cosine", **options).serialize()
    graph_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    with Store(folder).writer(create=True) as w:
        seg = w.add_segment(vectors, colour, meta, projection=None, extra=extra)
        w.commit(settings=manifest.to_json(), segments=[seg], live=np.ones(rows_n, bool),
                 dup_exact=np.full(rows_n, -1), dup_near=np.full(rows_n, -1), report=report,
                 operation={"kind": "build"}, projection_segment=None)
    info = {"rows": rows_n, "products": products, "photos_per_product": photos, "backend": backend,
            "prepare_s": round(prep_s, 2), "index_build_s": round(graph_s, 2),
            "write_s": round(time.perf_counter() - t0, 2),
            "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (folder.parent / f"{folder.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def ensure_index(work: Path, products: int, photos: int, backend: str, seed: int, m: int, efc: int,
                 fresh: bool) -> tuple[Path, dict[str, Any]]:
    graph = f"-m{m}-efc{efc}" if backend == "hnsw" else ""
    folder = work / f"{products}p-{photos}x-{backend}{graph}-seed{seed}"
    record = folder.parent / f"{folder.name}.json"
    if not fresh and record.exists() and (folder / "CURRENT").exists():
        info = json.loads(record.read_text())
        info["reused"] = True
        return folder, info
    print(f"[similar] writing {folder.name} ...", file=sys.stderr, flush=True)
    info = write_index(folder, products, photos, backend, seed, m, efc)
    info["reused"] = False
    print(f"  {info}", file=sys.stderr, flush=True)
    return folder, info


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def loaded_ram(folder: Path, tiny: Path, warm: list[str], k: int) -> dict[str, float]:
    """What one loaded index costs in RAM, in a process of its own: VmRSS after a 100-product
    index of the same kind was loaded and searched (imports, pyarrow's and BLAS's pools), then
    after ``Recommender.load`` and after the warm-up queries (the growth is the index's)."""
    code = f"""
import gc, json, time, sys
sys.path.insert(0, {str(HERE)!r})
from bench_products import rss_mib
from lookalike import Recommender
small = Recommender.load({str(tiny)!r})
for pid in small.products[:20]:
    small.similar(pid, k={k})
del small
gc.collect(); base = rss_mib()
t = time.perf_counter(); rec = Recommender.load({str(folder)!r}); load_s = time.perf_counter() - t
gc.collect(); loaded = rss_mib()
for pid in {warm!r}:
    rec.similar(pid, k={k})
gc.collect()
print(json.dumps({{"load_s": round(load_s, 2), "base_rss_mib": round(base, 1),
                   "rss_growth_after_load_mib": round(loaded - base, 1),
                   "rss_growth_after_warmup_mib": round(rss_mib() - base, 1)}}))
"""
    res = run([sys.executable, "-c", code])
    out = json.loads(res["stdout"])
    out["process_max_rss_mib"] = res["max_rss_mib"]
    return out


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def similar_part(args: argparse.Namespace) -> dict[str, Any]:
    from lookalike import Recommender

    work = args.work / "similar"
    work.mkdir(parents=True, exist_ok=True)
    names = [f"{b}/{p} photo{'s' if p > 1 else ''}" for b in ("exact", "hnsw") for p in (1, 3)]
    specs = {f"{b}/{p} photo{'s' if p > 1 else ''}": (b, p) for b in ("exact", "hnsw") for p in (1, 3)}
    folders, infos = {}, {}
    for name, (backend, photos) in specs.items():
        folders[name], infos[name] = ensure_index(work, args.products, photos, backend, args.seed, args.m,
                                                  args.ef_construction, args.fresh)
    rng = np.random.default_rng(args.seed + 7)
    ids = [str(100000 + int(i)) for i in rng.choice(args.products, args.queries + 20, replace=False)]
    warm, ids = ids[:20], ids[20:]
    if args.prepare:
        return {"prepared": infos}
    blas = "left alone"
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.blas_threads, user_api="blas")  # as `lookalike serve` does (blas_threads=1)
        blas = args.blas_threads
    ram = {name: loaded_ram(folders[name], ensure_index(work, 100, specs[name][1], specs[name][0], args.seed, args.m,
                                                        args.ef_construction, args.fresh)[0], warm, args.k)
           for name in names}
    recs: dict[str, Any] = {}
    for name in names:
        recs[name] = Recommender.load(folders[name])
        for pid in warm:
            recs[name].similar(pid, k=args.k)
        print(f"[similar] {name}: {recs[name]!r}, {ram[name]}", file=sys.stderr, flush=True)
    lat: dict[str, list[list[float]]] = {n: [[] for _ in range(args.rounds)] for n in names}
    answers: dict[str, dict[str, list[str]]] = {n: {} for n in names}
    loads = []
    chunks = [ids[i:i + args.chunk] for i in range(0, len(ids), args.chunk)]
    visit = 0
    for r in range(args.rounds):
        loads.append(round(os.getloadavg()[0], 2))
        t_round = time.perf_counter()
        for chunk in chunks:
            order = names[visit % len(names):] + names[:visit % len(names)]
            visit += 1
            for name in order:
                rec, out = recs[name], lat[name][r]
                for pid in chunk:
                    t0 = time.perf_counter()
                    res = rec.similar(pid, k=args.k)
                    out.append((time.perf_counter() - t0) * 1000)
                    if r == 0:
                        answers[name][pid] = res.ids
        print(f"  round {r + 1}: {time.perf_counter() - t_round:.1f} s, load {loads[-1]}; "
              + ", ".join(f"{n} p50 {np.median(lat[n][r]):.2f} ms" for n in names), file=sys.stderr, flush=True)
    results: dict[str, Any] = {}
    for name in names:
        pooled = [x for rr in lat[name] for x in rr]
        per_round = [percentiles(rr) for rr in lat[name]]
        backend, photos = specs[name]
        results[name] = {
            "backend": backend, "photos_per_product": photos, "rows": infos[name]["rows"],
            "queries": len(pooled), **percentiles(pooled),
            "qps": round(1000 * len(pooled) / sum(pooled), 1),
            "p50_ms_per_round": [x["p50_ms"] for x in per_round], "p99_ms_per_round": [x["p99_ms"] for x in per_round],
            "index": infos[name], "ram": ram[name],
        }
    for name in names:
        short = [pid for pid, got in answers[name].items() if len(got) != args.k or len(set(got)) != len(got)]
        results[name]["short_or_repeated_lists"] = len(short)
    for p in (1, 3):
        e, h = names[p != 1], names[2 + (p != 1)]
        hits = [len(set(answers[e][pid]) & set(answers[h][pid])) / args.k for pid in ids]
        results[h]["recall@10_vs_exact"] = round(float(np.mean(hits)), 4)
    ratios = {}
    for b in ("exact", "hnsw"):
        one, three = f"{b}/1 photo", f"{b}/3 photos"
        ratios[b] = {
            "p50": round(results[three]["p50_ms"] / results[one]["p50_ms"], 2),
            "p99": round(results[three]["p99_ms"] / results[one]["p99_ms"], 2),
            "p50_per_round": [round(a / b_, 2) for a, b_ in zip(results[three]["p50_ms_per_round"],
                                                                 results[one]["p50_ms_per_round"], strict=True)],
        }
    breakdown = {name: where_time_goes(recs[name], ids[: min(100, len(ids))], args.k) for name in names}
    return {"products": args.products, "k": args.k, "queries_per_round": len(ids), "rounds": args.rounds,
            "chunk": args.chunk, "warmup_queries": len(warm), "seed": args.seed,
            "hnsw_graph": {"m": args.m, "ef_construction": args.ef_construction,
                           "ef_search": "the back end's default (64), widened by n/allowed under a filter"},
            "blas_threads": blas, "loadavg_1min_per_round": loads, "indexes": results, "three_over_one_photo": ratios,
            "breakdown_ms": breakdown}


def where_time_goes(rec: Any, ids: list[str], k: int) -> dict[str, float]:
    """Medians, in ms, of the parts of one similar(id): the filter and its row mask, the back
    end's search of the over-fetched rows, and the grouping of its hits by product (as
    ``Recommender.similar``/``_search`` do them, one fetch)."""
    parts: dict[str, list[float]] = {"filter_and_mask": [], "backend_search": [], "group_by_product": [], "whole": []}
    for pid in ids:
        t0 = time.perf_counter()
        rows = [int(r) for r in rec.rows(pid)]
        w = rec.colour_weight_for(None)
        q = rec._product_queries([rec.rows(pid)], w)
        f = rec._filters.filter(rows, (), None, siblings=False)
        f.mask()
        t1 = time.perf_counter()
        per_product = max(1, min(4, rec._filters.max_photos))
        fetch = min(rec.n_rows, k * per_product + 8)
        scores, found = rec.index.search(q, fetch, filter=f)
        t2 = time.perf_counter()
        rec._pick([(scores[j], found[j]) for j in range(len(q))], k, True, False)
        t3 = time.perf_counter()
        rec.similar(pid, k=k)
        t4 = time.perf_counter()
        for key, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[key].append(v * 1000)
    return {key: round(float(np.median(v)), 3) for key, v in parts.items()}


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("build", "similar"), default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=list(DATASETS))
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300, help="random product ids timed per round")
    ap.add_argument("--chunk", type=int, default=25, help="ids per visit of one index (the order rotates)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--m", type=int, default=16, help="HNSW graph degree of the synthetic indexes")
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="BLAS threads for the timed searches (default 1, as `lookalike serve`; 0: leave alone)")
    ap.add_argument("--prepare", action="store_true", help="only write the synthetic folders (similar part)")
    ap.add_argument("--fresh", action="store_true", help="write the synthetic folders again even if kept")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-products")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "products.json")
    args = ap.parse_args(argv)
    machine = print_machine()
    if args.prepare:
        print(json.dumps(similar_part(args), indent=2))
        return {}
    result: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    result["machine"] = machine
    t0 = time.perf_counter()
    parts = ("build", "similar") if args.only is None else (args.only,)
    for part in parts:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        load = round(os.getloadavg()[0], 2)
        t = time.perf_counter()
        got = build_part(args) if part == "build" else similar_part(args)
        result[part] = {"started": started, "loadavg_1min_at_start": load,
                        "command": " ".join(["python", "benchmarks/bench_products.py", *(argv or sys.argv[1:])]),
                        "seconds": round(time.perf_counter() - t, 1), **got}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result, parts)
    print(f"\n{time.perf_counter() - t0:.0f} s in all; results in {args.out}")
    return result


def print_tables(result: dict[str, Any], parts: tuple[str, ...]) -> None:
    if "build" in parts:
        b = result["build"]
        print(f"\nBuild: local files vs loopback HTTP, median of {b['rounds']} alternating rounds (whole process, "
              "empty photo cache; sync and --update with the cache warm)\n")
        print("| data set | photos | source | build s (min–max) | photos/s | CPU s | max RSS MiB (min–max) "
              "| sync s, warm cache | build --update s, warm cache | HTTP answers: build / sync / update |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
        for name, ds in b["datasets"].items():
            for v in ("local", "http"):
                s, sy, up = ds[v]["build"], ds[v]["sync"], ds[v]["update"]
                answers = (" / ".join(fmt_counts(x["runs"][-1]["server"]) for x in (s, sy, up))
                           if v == "http" else "–")
                print(f"| {name} | {ds['photos']} | {v} | {s['median_wall_s']:.2f} ({s['min_wall_s']:.2f}–"
                      f"{s['max_wall_s']:.2f}) | {s['photos_per_s']:.1f} | {s['median_cpu_s']:.2f} "
                      f"| {s['median_max_rss_mib']:.0f} ({s['max_rss_mib_range'][0]:.0f}–{s['max_rss_mib_range'][1]:.0f}) "
                      f"| {sy['median_wall_s']:.2f} | {up['median_wall_s']:.2f} | {answers} |")
            r = ds["http_over_local_build_wall"]
            print(f"\n{name}: HTTP / local build wall {r['median']:.2f}x (per round {r['per_round']}); "
                  f"identical vectors: {ds['identical_vectors_local_vs_http']}; sync counts "
                  f"{ds['http']['sync']['runs'][-1]['counts']}; --update reused "
                  f"{[r['reused'] for r in ds['http']['update']['runs']]} photos; loads {ds['http']['build']['loadavg_1min']}\n")
    if "similar" in parts:
        s = result["similar"]
        print(f"\nsimilar(id, k={s['k']}) at {s['products']:,} products, {s['queries_per_round']} ids x "
              f"{s['rounds']} interleaved rounds (load {s['loadavg_1min_per_round']})\n")
        print("| back end | photos a product | rows | p50 ms | p99 ms | queries/s | p50 per round | recall@10 vs exact "
              "| RSS MiB | on disk MiB |")
        print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for r in s["indexes"].values():
            print(f"| {r['backend']} | {r['photos_per_product']} | {r['rows']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                  f"| {r['qps']:.0f} | {', '.join(f'{x:.2f}' for x in r['p50_ms_per_round'])} "
                  f"| {r.get('recall@10_vs_exact', '–')} | {r['ram']['rss_growth_after_warmup_mib']:.0f} "
                  f"| {r['index']['bytes'] / 2**20:.0f} |")
        print(f"\n3 photos / 1 photo: {s['three_over_one_photo']}")
        print("\nwhere one query's time goes (medians, ms):")
        for name, parts_ms in s["breakdown_ms"].items():
            print(f"  {name}: {parts_ms}")


def fmt_counts(c: dict[str, int]) -> str:
    return " ".join(f"{n}×{k}" for k, n in c.items() if k != "bytes") or "none"


if __name__ == "__main__":
    main()
