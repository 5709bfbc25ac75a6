"""Fault injection: kill -9 writers at random moments and count what survives.

Three kinds of writer, ``--trials`` each (default 100), every trial on a fresh copy of a
30-product demo index (catalogue A):

* ``build``: ``python -m lookalike build B.csv --out IDX`` over the index (catalogue B: 20
  products of A with new titles and 10 others), killed after a random delay drawn uniformly
  over 1.1x an uninterrupted build's duration;
* ``build --update``: the same with ``--update`` (only the 10 new photos are embedded);
* ``live``: ``tests/crash_writer.py`` (upserts, metadata changes, photo uploads, removals, each
  acknowledged on stdout once the call returned), killed 0 to 3 s after it is ready.

After each kill: does the index load, verify (every file against its sha256 record) and answer
(``complete``)? For builds: does it hold A or B, whole (``mixed`` otherwise)? For live writers: how
many acknowledged changes are missing or wrong (``lost``)? Then: does the next writer work (an
upsert, a removal), and does the next garbage collection (a compaction) clear what the dead one
left (temporary files, uncommitted segments and generations)? ``upload_tmp_left`` counts
half-saved photo uploads (``photos/.tmp-*``) still there after it (fixed in 41247a6).

    python benchmarks/bench_faults.py [--trials 100] [--seed 0] [--out results.json]

Prints the CPU first (``lscpu`` model and kernel flags) and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from machine import print_machine  # benchmarks/ is the script's folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from crash_writer import Run, check_index, kill_after, leftovers, lost_changes, replay  # noqa: E402

from lookalike import build, demo_catalog, get_encoder  # noqa: E402
from lookalike.errors import LookalikeError  # noqa: E402
from lookalike.writing.writer import Index  # noqa: E402

WRITER = ROOT / "tests" / "crash_writer.py"


def make_shop(folder: Path) -> dict[str, dict[str, str]]:
    """40 demo photos; catalogue A (rows 0-29) built; B (rows 10-39, new titles) beside it."""
    demo = pd.read_csv(demo_catalog(), dtype=str, keep_default_na=False).iloc[:40]
    (folder / "images").mkdir(parents=True)
    for name in demo["Image"]:
        shutil.copy(demo_catalog().parent / "images" / name, folder / "images" / name)
    a = demo.iloc[:30]
    b = demo.iloc[10:40].copy()
    b["ProductTitle"] = b["ProductTitle"] + " v2"
    a.to_csv(folder / "a.csv", index=False)
    b.to_csv(folder / "b.csv", index=False)
    build(folder / "a.csv", folder / "index-a", show_progress_bar=False)
    return {"a": dict(zip(a["ProductId"], a["ProductTitle"])), "b": dict(zip(b["ProductId"], b["ProductTitle"]))}


def after_crash(path: Path, images: Path, encoder) -> tuple[bool, bool, int]:
    """The next writer: does it work, and does the next garbage collection leave no debris of the dead one?"""
    try:
        ix = Index.open(path, encoder=encoder)
        row = {"ProductId": "after-crash", "Image": sorted(p.name for p in images.iterdir())[0]}
        ok = [c.status for c in ix.upsert([row], images=images).changes] == ["added"]
        ok &= ix.remove(["after-crash"]).counts()["removed"] == 1
        check_index(path)
        ix.compact()  # a garbage collection: what the dead writer left must go now
        check_index(path)
    except (LookalikeError, AssertionError) as exc:
        print(f"    next writer failed: {type(exc).__name__}: {exc}")
        return False, False, 0
    left = leftovers(path)
    uploads = sum(1 for p in left if p.startswith("photos/.tmp-"))  # half-saved uploads
    return ok, len(left) == uploads, uploads


def build_trial(shop: Path, titles: dict, encoder, path: Path, delay: float, update: bool) -> dict:
    shutil.copytree(shop / "index-a", path)
    argv = [sys.executable, "-m", "lookalike", "-q", "build", str(shop / "b.csv"), "--out", str(path)]
    run = Run.start(argv + (["--update"] if update else []))
    try:
        killed = kill_after(run, delay)
    finally:
        run.kill()
    out = {"killed": killed, "complete": False, "content": "unloadable"}
    try:
        rec = check_index(path)
        out["complete"] = True
        seen = {pid: rec.product(pid)["ProductTitle"] for pid in rec.ids}
        out["content"] = "old" if seen == titles["a"] else "new" if seen == titles["b"] else "mixed"
    except (LookalikeError, AssertionError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["next_write_ok"], out["clean_after"], out["upload_tmp_left"] = after_crash(path, shop / "images", encoder)
    return out


def live_trial(shop: Path, titles: dict, encoder, path: Path, delay: float, seed: int) -> dict:
    shutil.copytree(shop / "index-a", path)
    run = Run.start([sys.executable, str(WRITER), str(path), str(shop / "images"), str(seed)])
    try:
        started = run.ready.wait(60)
        killed = kill_after(run, delay) if started else False
    finally:
        run.kill()
    out = {"killed": killed, "complete": False, "acks": 0, "lost": None, "in_flight_applied": None}
    try:
        state, pending, generation = replay(run.lines, titles["a"])
        out["acks"] = sum(1 for line in run.lines if line.startswith("ACK"))
        rec = check_index(path)
        out["complete"] = True
        lost = lost_changes(rec, state, pending, generation)
        out["lost"] = len(lost)
        if lost:
            out["lost_detail"] = lost[:5]
        if pending is not None:
            out["in_flight_applied"] = rec.generation > generation
    except (LookalikeError, AssertionError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["next_write_ok"], out["clean_after"], out["upload_tmp_left"] = after_crash(path, shop / "images", encoder)
    return out


def uninterrupted(shop: Path, work: Path, update: bool) -> float:
    path = work / f"timing-{'update' if update else 'full'}"
    shutil.copytree(shop / "index-a", path)
    argv = [sys.executable, "-m", "lookalike", "-q", "build", str(shop / "b.csv"), "--out", str(path)]
    t0 = time.perf_counter()
    run = Run.start(argv + (["--update"] if update else []))
    run.proc.wait(timeout=300)
    run.kill()
    assert run.proc.returncode == 0, run.stderr()
    shutil.rmtree(path)
    return time.perf_counter() - t0


def summarise(kind: str, trials: list[dict]) -> dict:
    row = {
        "kind": kind, "trials": len(trials),
        "killed_mid_run": sum(t["killed"] for t in trials),
        "complete_loadable": sum(t["complete"] for t in trials),
        "next_write_ok": sum(t["next_write_ok"] for t in trials),
        "clean_after_next_write": sum(t["clean_after"] for t in trials),
        "upload_tmp_left": sum(t["upload_tmp_left"] for t in trials),
    }
    if kind == "live":
        row["acked_changes"] = sum(t["acks"] for t in trials)
        row["acked_lost"] = sum(t["lost"] or 0 for t in trials)
        row["in_flight_applied"] = sum(1 for t in trials if t["in_flight_applied"])
        row["in_flight_not_applied"] = sum(1 for t in trials if t["in_flight_applied"] is False)
    else:
        for c in ("old", "new", "mixed", "unloadable"):
            row[c] = sum(1 for t in trials if t["content"] == c)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100, help="trials per kind of writer (default 100)")
    ap.add_argument("--kinds", default="build,build --update,live")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    machine = print_machine()
    kinds = [k.strip() for k in args.kinds.split(",")]
    rng = random.Random(args.seed)
    encoder = get_encoder()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(tmp)
        titles = make_shop(work / "shop")
        durations = {k: uninterrupted(work / "shop", work, update=k.endswith("--update")) for k in kinds if k != "live"}
        for k, s in durations.items():
            print(f"uninterrupted {k}: {s:.2f} s (kills drawn over 0..{1.1 * s:.2f} s)")
        results: dict[str, list[dict]] = {k: [] for k in kinds}
        for i in range(args.trials):
            for kind in kinds:
                path = work / f"t{i}-{kind.replace(' ', '')}"
                if kind == "live":
                    t = live_trial(work / "shop", titles, encoder, path, rng.uniform(0.0, 3.0), args.seed * 100_000 + i)
                else:
                    t = build_trial(work / "shop", titles, encoder, path, rng.uniform(0.0, 1.1 * durations[kind]),
                                    update=kind.endswith("--update"))
                results[kind].append(t)
                if not t["complete"] or t.get("lost") or t.get("content") == "mixed" or not t["next_write_ok"] \
                        or not t["clean_after"]:
                    print(f"  trial {i} {kind}: {t}")
                shutil.rmtree(path, ignore_errors=True)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.trials} trials per kind, {time.perf_counter() - t_start:.0f} s")
    rows = [summarise(k, v) for k, v in results.items()]
    print()
    print(f"kill -9 at random moments: {args.trials} trials per kind, {time.perf_counter() - t_start:.0f} s in all")
    cols = ["kind", "trials", "killed_mid_run", "complete_loadable", "old", "new", "mixed", "acked_changes",
            "acked_lost", "in_flight_applied", "in_flight_not_applied", "next_write_ok", "clean_after_next_write", "upload_tmp_left"]
    table = pd.DataFrame([[str(r.get(c, "")) for c in cols] for r in rows], columns=cols)
    print(table.to_string(index=False))
    live = results.get("live", [])
    if live:
        print(f"acknowledged changes per live trial: median {statistics.median(t['acks'] for t in live):.0f}")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "trials_per_kind": args.trials, "seed": args.seed,
                                        "uninterrupted_s": durations, "summary": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
