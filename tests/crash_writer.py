"""A live writer to be killed: loops over upserts, metadata changes, photo uploads and removals.

    python tests/crash_writer.py INDEX IMAGES SEED [MAX_OPS]

Prints ``READY <generation>`` once the index is open, then for every operation
``BEGIN <op> <id> <title>`` before the call and ``ACK <generation> <op> <id> <title>`` after it
returned (flushed at once): whoever kills this process knows every acknowledged change, and
the one that may have been in flight. ``<title>`` is ``-`` for a removal. Ends with ``DONE``
after MAX_OPS operations (default: never). Used by tests/test_crash.py and
benchmarks/bench_faults.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: what a process may take at most (a trial that hangs fails instead of hanging its caller)
PROCESS_TIMEOUT = 60.0


# -- the parent's side: run, kill, check ----------------------------------------------------
@dataclass
class Run:
    """A child process whose stdout lines are collected by a thread."""

    proc: subprocess.Popen
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    err: Any = None  # its stderr, a temporary file

    @classmethod
    def start(cls, argv: list[str]) -> "Run":
        err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child never blocks on it
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, env=dict(os.environ),
            start_new_session=True,  # its own process group: killed with everything it started
        )
        run = cls(proc)
        run.err = err
        run.reader = threading.Thread(target=run._read, daemon=True)
        run.reader.start()
        return run

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("READY"):
                self.ready.set()
        self.ready.set()  # ended (or was killed) without READY: let the waiter see it

    def kill(self) -> None:
        """SIGKILL its process group (ours: start_new_session), then reap it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=PROCESS_TIMEOUT)
        if self.proc.stdout is not None and self.reader is None:
            self.proc.stdout.close()
        if self.reader is not None:
            self.reader.join(timeout=PROCESS_TIMEOUT)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read().decode("utf-8", "replace")[-2000:]


def kill_after(run: Run, delay: float) -> bool:
    """Kill ``run`` ``delay`` seconds from now; True if it was still running then."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and run.proc.poll() is None:
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    alive = run.proc.poll() is None
    run.kill()
    return alive


# -- checks ----------------------------------------------------------------------------------
def check_index(path: Path) -> Any:
    """Loads, every file matches its generation's record, every product is searchable."""
    from lookalike import Recommender
    from lookalike.folder.store import Store

    rec = Recommender.load(path)
    assert Store(path).verify() == []
    assert len(rec) == rec.manifest["rows"] == len(set(rec.ids))
    for pid in rec.ids[:: max(1, len(rec) // 5)]:
        for hit in rec.similar(pid, k=3):
            assert hit.id in rec
    return rec


def leftovers(path: Path) -> list[str]:
    """What a writer killed mid-way can leave: temporary files, folders and uncommitted generations."""
    from lookalike.folder.store import Store

    n = Store(path).current_generation()
    record = Store(path).generation_record(n)
    parent = record.get("parent", 0)
    keep_segments = {s["name"] for s in record["segments"]}
    if parent:
        keep_segments |= {s["name"] for s in Store(path).generation_record(parent)["segments"]}
    out = [p.name for p in path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tmp")]
    out += [f"segments/{p.name}" for p in (path / "segments").iterdir() if p.name not in keep_segments]
    out += [f"generations/{p.name}" for p in (path / "generations").iterdir()
            if p.name.split(".")[0] not in (str(n), str(parent))]
    if (path / "photos").is_dir():
        out += [f"photos/{p.name}" for p in (path / "photos").iterdir() if p.name.startswith(".tmp")]
    return sorted(out)


def replay(lines: list[str], start: dict[str, str]) -> tuple[dict[str, str], tuple[str, str, str] | None, int]:
    """The state every ACK promises (id -> title), the operation in flight when the writer died
    (op, id, title), and the last acknowledged generation."""
    state = dict(start)
    pending: tuple[str, str, str] | None = None
    generation = 0
    for line in lines:
        parts = line.split(" ")
        if parts[0] == "READY":
            generation = int(parts[1])
        elif parts[0] == "BEGIN":
            pending = (parts[1], parts[2], parts[3])
        elif parts[0] == "ACK":
            generation = int(parts[1])
            op, pid, title = parts[2], parts[3], parts[4]
            assert pending == (op, pid, title), (pending, line)
            pending = None
            if op == "remove":
                state.pop(pid, None)
            else:
                state[pid] = title
        elif parts[0] in ("ERROR", "Traceback"):
            raise AssertionError(f"the writer failed: {line}")
    return state, pending, generation


def lost_changes(rec: Any, state: dict[str, str], pending: tuple[str, str, str] | None,
                 generation: int) -> list[str]:
    """Acknowledged changes the index does not show with their exact content (the one in flight
    may be there or not); empty when nothing was lost."""
    seen = {pid: rec.product(pid)["ProductTitle"] for pid in rec.ids}
    lost = []
    if not generation <= rec.generation <= generation + 1:
        lost.append(f"generation {rec.generation}, the last acknowledged was {generation}")
    for pid in sorted(set(seen) | set(state)):
        before = state.get(pid)  # None: absent
        now = seen.get(pid)
        if pending is not None and pid == pending[1]:
            after = None if pending[0] == "remove" else pending[2]
            if now not in (before, after):
                lost.append(f"{pid}: {now!r}, expected {before!r} (or {after!r}, in flight)")
        elif now != before:
            lost.append(f"{pid}: {now!r}, expected {before!r}")
    return lost



# -- the writer ----------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    index, images, seed = Path(argv[0]), Path(argv[1]), int(argv[2])
    max_ops = int(argv[3]) if len(argv) > 3 else -1
    from lookalike import Recommender
    from lookalike.writing.writer import Index

    rng = random.Random(seed)
    photos = sorted(p.name for p in images.iterdir() if p.suffix.lower() == ".jpg")
    ix = Index.open(index)
    present = set(Recommender.load(index).ids)
    pool = sorted(present | {f"c{seed}-{i}" for i in range(8)})
    genders = ("Men", "Women", "Boys", "Girls")
    print(f"READY {ix.generation}", flush=True)
    i = 0
    while max_ops < 0 or i < max_ops:
        i += 1
        title = f"t{seed}-{i}"
        op = rng.choice(("upsert", "upsert", "meta", "photo", "remove"))
        if op in ("meta", "remove") and len(present) <= 5:
            op = "upsert"
        if op == "upsert":
            pid = rng.choice(pool)
            row = {"ProductId": pid, "Image": photos[i % len(photos)], "ProductTitle": title,
                   "Gender": rng.choice(genders)}
            print(f"BEGIN upsert {pid} {title}", flush=True)
            report = ix.upsert([row], images=images)
        elif op == "meta":
            pid = rng.choice(sorted(present))
            print(f"BEGIN meta {pid} {title}", flush=True)
            report = ix.upsert([{"ProductId": pid, "ProductTitle": title, "Gender": rng.choice(genders)}])
        elif op == "photo":
            pid = rng.choice(pool)
            data = (images / photos[(7 * i) % len(photos)]).read_bytes()
            print(f"BEGIN photo {pid} {title}", flush=True)
            report = ix.upsert_photo(pid, data, {"ProductTitle": title, "Gender": rng.choice(genders)})
        else:
            pid = rng.choice(sorted(present))
            title = "-"
            print(f"BEGIN remove {pid} -", flush=True)
            report = ix.remove([pid])
        statuses = [c.status for c in report.changes]
        if statuses not in (["added"], ["re-embedded"], ["metadata"], ["unchanged"], ["removed"]):
            print(f"ERROR {op} {pid} {statuses} {report.summary()!r}", flush=True)
            return 2
        if op == "remove":
            present.discard(pid)
        else:
            present.add(pid)
        print(f"ACK {report.generation} {op} {pid} {title}", flush=True)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
