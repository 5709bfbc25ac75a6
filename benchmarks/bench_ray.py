"""The ray build engine vs the local one: wall time, identical vectors, and a projection to 10M photos.

On the 2,906-product set this runs, alternating, ``--rounds`` rounds of

  (a) ``lookalike -q build CSV --out OUT``                  (the local engine) and
  (b) ``lookalike -q build CSV --out OUT --engine ray``      (a private Ray started and stopped
                                                             by the build: start-up included)

as whole processes, timing each around the child and reading the child's CPU time from
``os.wait4`` (for (b) that misses Ray workers that the raylet did not reap, so only (a)'s CPU
time is used as the per-photo cost). The 1-minute load average is printed before each run: on
a shared machine compare medians and their ratio, not single runs. Then it checks that the two
indexes hold the same ids, vectors (max abs difference) and duplicate groups, times a bare
Ray start and stop, and projects the build time of ``--photos`` photos on N Ray nodes.

The model export is cached (``LOOKALIKE_CACHE_DIR``); the photos are read once before timing.

    python benchmarks/bench_ray.py --rounds 3 --out benchmarks/results/ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from machine import print_machine  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lookalike, in this process and (PYTHONPATH) in the builds
DATASET = Path(os.environ.get("LOOKALIKE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "datasets" / \
    "fashion-images" / "fashion.csv"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd`` to completion: wall seconds and the child's CPU seconds (``os.wait4``)."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "load": load}


def compare(a: Path, b: Path) -> dict[str, Any]:
    import numpy as np

    from lookalike.folder.store import Store

    sa, sb = Store(a).snapshot(), Store(b).snapshot()
    (va, _, ma), (vb, _, mb) = sa.dense(), sb.dense()
    return {
        "same_ids": list(ma[sa.id_column]) == list(mb[sb.id_column]),
        "rows": len(ma),
        "max_abs_diff": float(np.abs(va - vb).max()),
        "same_duplicates": bool((sa.dup_exact == sb.dup_exact).all() and (sa.dup_near == sb.dup_near).all()),
        "engines": (sa.manifest["build"]["engine"], sb.manifest["build"]["engine"]),
    }


def ray_start_stop() -> tuple[float, float]:
    code = ("import time; t=time.perf_counter(); from lookalike.engines.ray import local_ray; import ray\n"
            "cm = local_ray(); cm.__enter__(); up=time.perf_counter()-t; t=time.perf_counter()\n"
            "cm.__exit__(None, None, None); print(up, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", type=Path, default=DATASET)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--photos", type=float, default=10e6, help="catalogue size to project to")
    ap.add_argument("--cores-per-node", type=int, default=16, help="assumed CPU cores per Ray node")
    ap.add_argument("--efficiency", type=float, default=0.85,
                    help="assumed share of each node's cores doing photo work (scheduling, I/O waits)")
    ap.add_argument("--nodes", default="1,4,16,64", help="node counts to project to")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    machine = print_machine()
    cores = len(os.sched_getaffinity(0))
    import pandas as pd

    n = len(pd.read_csv(args.csv, dtype=str))
    for p in (args.csv.parent / "images").rglob("*"):  # into the page cache before timing
        if p.is_file():
            p.read_bytes()
    print(f"\n{n} catalogue rows from {args.csv}; {cores} usable cores; python {sys.version.split()[0]}")
    import ray

    print(f"ray {ray.__version__}; LOOKALIKE_CACHE_DIR={os.environ.get('LOOKALIKE_CACHE_DIR', '(default)')}\n")

    lk = [sys.executable, "-m", "lookalike", "-q", "build", str(args.csv)]
    times: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        out = {e: Path(tmp) / e for e in times}
        for r in range(args.rounds):
            for engine in ("local", "ray"):
                res = run(lk + ["--out", str(out[engine]), "--engine", engine])
                times[engine].append(res)
                print(f"round {r + 1} {engine:5s}: {res['wall']:6.1f} s wall, {res['cpu']:6.1f} s CPU "
                      f"(load before {res['load']:.1f})", flush=True)
        check = compare(out["local"], out["ray"])
    med = {e: statistics.median(x["wall"] for x in v) for e, v in times.items()}
    cpu_local = statistics.median(x["cpu"] for x in times["local"])
    up, down = ray_start_stop()
    ratio = med["ray"] / med["local"]
    print(f"\nmedian wall: local {med['local']:.1f} s, ray {med['ray']:.1f} s; ray/local = {ratio:.2f} "
          f"(target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    print(f"bare private Ray: start {up:.1f} s, stop {down:.1f} s (inside the ray figure above)")
    print(f"same index: ids {check['same_ids']} ({check['rows']} rows), max |vector difference| "
          f"{check['max_abs_diff']:.2e}, duplicate groups {check['same_duplicates']}, engines {check['engines']}")

    per_photo = cpu_local / n  # CPU seconds per photo, whole local build process (imports, PCA, writing)
    per_photo_ray = med["ray"] * cores / n  # core-seconds per photo in the ray build, start-up included
    print(f"\nper-photo cost here: {per_photo * 1000:.1f} ms CPU (local build, all stages); "
          f"{per_photo_ray * 1000:.1f} core-ms in the ray build with its start-up on {cores} cores")
    print(f"projection for {args.photos:,.0f} photos, {args.cores_per_node} cores per node, "
          f"{args.efficiency:.0%} of them busy, {per_photo * 1000:.1f} ms CPU per photo, linear in nodes:")
    fixed = up + 30.0  # joining the cluster and starting actors: this machine's start plus 30 s, assumed
    projection = []
    for nodes in (int(x) for x in args.nodes.split(",")):
        secs = fixed + args.photos * per_photo / (nodes * args.cores_per_node * args.efficiency)
        rate = nodes * args.cores_per_node * args.efficiency / per_photo
        projection.append({"nodes": nodes, "hours": round(secs / 3600, 3), "photos_per_s": round(rate)})
        print(f"  {nodes:3d} nodes: {secs / 3600:6.2f} h  ({rate:,.0f} photos/s)")
    print("  not included: the driver's PCA fit and index write, and holding 20 KB of raw vector per "
          "photo in the driver (see docs/scale.md)")
    if args.out:
        import ray

        args.out.write_text(json.dumps({
            "machine": machine, "cores": cores, "rows": n, "ray": ray.__version__,
            "runs": times, "median_wall": med, "ratio": round(ratio, 3), "check": check,
            "ray_start_s": round(up, 2), "ray_stop_s": round(down, 2),
            "per_photo_cpu_ms": round(per_photo * 1000, 2), "per_photo_ray_core_ms": round(per_photo_ray * 1000, 2),
            "assumptions": {"photos": args.photos, "cores_per_node": args.cores_per_node,
                            "efficiency": args.efficiency, "fixed_s": round(fixed, 1)},
            "projection": projection,
        }, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
