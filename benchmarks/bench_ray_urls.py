"""Photo URLs on the ray engine: fetched by the Ray actors, fetched by the driver, or local files.

The same real photos (default: the 200 of fashion-images-fullres, 1080x1440 to 1800x2400 JPEGs;
``--data store-demos``: 25 products, 97 photos), built with ``engine="ray"`` three ways, each a
whole process of its own (its private Ray started and stopped inside, as ``build --engine ray``
does), alternating, ``--rounds`` rounds:

  (a) ``files``   photos as local paths (``--images DIR``): nothing fetched;
  (b) ``actors``  photos as ``http://127.0.0.1:PORT/…`` URLs: the Ray actors fetch them
                  (what ``build --engine ray`` does now);
  (c) ``driver``  the same URLs fetched by the driver first (``load_catalog`` fetching, as
                  every build did before), then the ray engine on the local files;

each with an empty photo cache. Then, the cache warm, (d) ``update``: the URL catalogue built
again with ``update=True``, the actors asking for each photo conditionally. The photos are
served by ``python -m http.server`` bound to 127.0.0.1, a process of its own (its request log
gives the count of 200 and 304 answers per build). Wall time around each child, its CPU time
from ``os.wait4`` (Ray's workers are not all the child's: the wall time is the figure).
Prints the machine first; the indexes of (a), (b) and (c) are compared (ids and vectors).

    python benchmarks/bench_ray_urls.py --rounds 3 --out benchmarks/results/ray_urls.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from machine import print_machine  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lookalike, here and (PYTHONPATH) in the children
SHARED = Path(os.environ.get("LOOKALIKE_SHARED", ROOT.parent / "shared")) / "datasets"
DATA = {  # name: (catalogue, images folder, id column, image column)
    "fullres": (SHARED / "fashion-images-fullres" / "fashion.csv", SHARED / "fashion-images-fullres" / "images",
                "ProductId", "Image"),
    "store-demos": (SHARED / "store-demos" / "catalog.csv", SHARED / "store-demos" / "images", "product_id", "images"),
}
MODES = ("files", "actors", "driver")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    return env


def child(mode: str, csv: str, images: str, id_column: str, image_column: str, out: str, cache: str,
          update: bool) -> None:
    """One build (run in a process of its own): prints its report as JSON."""
    from lookalike import build, load_catalog

    kw = dict(id_column=id_column, image_column=image_column, images=images, photo_cache=cache)
    catalog: Any = csv
    if mode == "driver":  # fetched here first, as every build did before the actors fetched
        catalog = load_catalog(csv, show_progress_bar=False, **kw)
        kw = {}
    report = build(catalog, out, engine="ray", update=update, show_progress_bar=False, **kw)
    print(json.dumps({"indexed": report.indexed, "photos": report.photos, "reused": report.reused,
                      "problems": len(report.problems)}))


def run(args: list[str]) -> dict[str, Any]:
    """Run this script as a child build: wall and CPU seconds, and its report."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", *args], cwd=ROOT, env=child_env(),
                                stdout=out, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        err.seek(0)
        out.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"child {args} failed:\n{err.read()[-3000:]}")
        report = json.loads(out.read().strip().splitlines()[-1])
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "load": load, **report}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def url_catalogue(csv: Path, image_column: str, base: str, to: Path) -> int:
    """The catalogue with each photo as a URL of the server; the number of photos."""
    import pandas as pd

    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table[image_column] = ["|".join(base + urllib.parse.quote(ref) for ref in cell.split("|"))
                           for cell in table[image_column]]
    table.to_csv(to, index=False)
    return sum(len(cell.split("|")) for cell in table[image_column])


def answers(log: Path, since: int) -> tuple[dict[str, int], int]:
    """The server's answers (status -> count) logged after byte ``since``, and the log's end."""
    text = log.read_text(errors="replace")
    counts: dict[str, int] = {}
    for code in re.findall(r'"GET [^"]*" (\d{3})', text[since:]):
        counts[code] = counts.get(code, 0) + 1
    return counts, len(text)


def compare(a: Path, b: Path) -> dict[str, Any]:
    import numpy as np

    from lookalike.folder.store import Store

    sa, sb = Store(a).snapshot(), Store(b).snapshot()
    (va, _, ma), (vb, _, mb) = sa.dense(), sb.dense()
    same = list(ma[sa.id_column]) == list(mb[sb.id_column])
    return {"same_ids": same, "max_abs_diff": float(np.abs(va - vb).max()) if same else None}


def summary(runs: list[dict[str, Any]], key: str = "wall") -> dict[str, float]:
    vals = [r[key] for r in runs]
    return {"median": round(statistics.median(vals), 2), "min": round(min(vals), 2), "max": round(max(vals), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=sorted(DATA), default="fullres")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--child", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        *rest, update = args.child
        child(*rest, update=update == "1")
        return

    machine = print_machine()
    csv, images, id_column, image_column = DATA[args.data]
    for p in images.rglob("*"):  # into the page cache before timing
        if p.is_file():
            p.read_bytes()
    import ray

    print(f"\n{args.data}: {csv}; {len(os.sched_getaffinity(0))} usable cores; python {sys.version.split()[0]}; "
          f"ray {ray.__version__}\n")
    times: dict[str, list[dict[str, Any]]] = {m: [] for m in (*MODES, "update")}
    with tempfile.TemporaryDirectory(prefix="bench-ray-urls-") as tmp_name:
        tmp = Path(tmp_name)
        port, log = free_port(), tmp / "server.log"
        with open(log, "w") as log_file:
            server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                       "--directory", str(images)], stdout=log_file, stderr=subprocess.STDOUT)
        try:
            time.sleep(1.0)
            urls = tmp / "urls.csv"
            photos = url_catalogue(csv, image_column, f"http://127.0.0.1:{port}/", urls)
            seen = 0
            for r in range(args.rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    out, cache = tmp / mode, tmp / f"cache-{mode}-{r}"
                    src = str(csv) if mode == "files" else str(urls)
                    res = run([mode, src, str(images), id_column, image_column, str(out), str(cache), "0"])
                    res["answers"], seen = answers(log, seen)
                    times[mode].append(res)
                    print(f"round {r + 1} {mode:7s} {res['wall']:6.2f} s  cpu {res['cpu']:6.2f} s  "
                          f"{res['photos']} photos  server {res['answers']}  load {res['load']:.2f}", flush=True)
                    if mode == "actors":
                        res = run(["actors", str(urls), str(images), id_column, image_column, str(out), str(cache), "1"])
                        res["answers"], seen = answers(log, seen)
                        times["update"].append(res)
                        print(f"round {r + 1} update  {res['wall']:6.2f} s  cpu {res['cpu']:6.2f} s  "
                              f"reused {res['reused']}/{res['photos']}  server {res['answers']}", flush=True)
            same = {m: compare(tmp / "files", tmp / m) for m in ("actors", "driver")}
        finally:
            server.terminate()
            server.wait(timeout=10)
    result = {"machine": machine, "data": args.data, "photos": photos, "rounds": args.rounds,
              "wall": {m: summary(v) for m, v in times.items()}, "cpu": {m: summary(v, "cpu") for m, v in times.items()},
              "answers": {m: [r["answers"] for r in v] for m, v in times.items()},
              "reused": [r["reused"] for r in times["update"]], "vs_files": same,
              "load": [round(r["load"], 2) for v in times.values() for r in v], "runs": times}
    print()
    for m in (*MODES, "update"):
        w = result["wall"][m]
        print(f"{m:7s} wall median {w['median']:6.2f} s ({w['min']:.2f}-{w['max']:.2f})  "
              f"{photos / w['median']:5.1f} photos/s")
    print(f"actors / driver wall: {result['wall']['actors']['median'] / result['wall']['driver']['median']:.2f}x; "
          f"vs files: {same}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
