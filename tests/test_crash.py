"""kill -9 of a real writer at random moments: the index always loads, verifies, and holds every
acknowledged change; the next writer works, and the next garbage collection clears what the
killed one left.

The writer is tests/crash_writer.py (live upserts, metadata changes, photo uploads, removals)
or ``python -m lookalike build`` over an existing index. Default: 6 trials; ``-m slow``: 50.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
from crash_writer import PROCESS_TIMEOUT, Run, check_index, kill_after, leftovers, lost_changes, replay

from lookalike import build, demo_catalog
from lookalike.folder.store import Store
from lookalike.writing.writer import Index

WRITER = Path(__file__).resolve().parent / "crash_writer.py"
DEMO = demo_catalog()
DEMO_IMAGES = DEMO.parent / "images"
DEMO_TABLE = pd.read_csv(DEMO, dtype=str, keep_default_na=False)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory, encoder) -> tuple[Path, Path, Path, dict[str, str]]:
    """30 demo photos in a shop folder; an index of the first 20 products (catalogue A).
    Returns (folder, images, index A, titles of A)."""
    folder = tmp_path_factory.mktemp("crash-shop")
    (folder / "images").mkdir()
    table = DEMO_TABLE.iloc[:30]
    for name in table["Image"]:
        shutil.copy(DEMO_IMAGES / name, folder / "images" / name)
    a = table.iloc[:20]
    a.to_csv(folder / "a.csv", index=False)
    b = table.iloc[10:30].copy()
    b["ProductTitle"] = b["ProductTitle"] + " v2"
    b.to_csv(folder / "b.csv", index=False)
    build(folder / "a.csv", folder / "index-a", encoder=encoder, show_progress_bar=False)
    return folder, folder / "images", folder / "index-a", dict(zip(a["ProductId"], a["ProductTitle"]))


def writer_trial(shop, tmp_path: Path, seed: int, encoder) -> dict[str, int]:
    folder, images, index_a, titles = shop
    path = tmp_path / f"live-{seed}"
    shutil.copytree(index_a, path)
    rng = random.Random(seed)
    run = Run.start([sys.executable, str(WRITER), str(path), str(images), str(seed)])
    try:
        assert run.ready.wait(PROCESS_TIMEOUT), "the writer never started"
        assert run.lines and run.lines[0].startswith("READY"), (run.lines, run.stderr())
        kill_after(run, rng.uniform(0.0, 2.0))
    finally:
        run.kill()
    state, pending, generation = replay(run.lines, titles)
    rec = check_index(path)
    assert lost_changes(rec, state, pending, generation) == []
    # the next writer works; the next garbage collection (every compaction, build, and every
    # GC_EVERY-th live change) clears what the killed one left behind
    ix = Index.open(path, encoder=encoder)
    report = ix.upsert([{**DEMO_TABLE.iloc[25].to_dict(), "ProductId": "after-crash"}], images=images)
    assert [c.status for c in report.changes] == ["added"]
    ix.remove(["after-crash"])
    check_index(path)
    ix.compact()
    assert leftovers(path) == []
    check_index(path)
    acks = sum(1 for line in run.lines if line.startswith("ACK"))
    return {"acks": acks, "in_flight": int(pending is not None)}


def build_trial(shop, tmp_path: Path, seed: int, *, update: bool) -> str:
    """kill -9 a ``lookalike build`` of catalogue B over index A: A or B, whole, never a mix."""
    folder, images, index_a, titles_a = shop
    path = tmp_path / f"build-{seed}"
    shutil.copytree(index_a, path)
    b = pd.read_csv(folder / "b.csv", dtype=str, keep_default_na=False)
    titles_b = dict(zip(b["ProductId"], b["ProductTitle"]))
    argv = [sys.executable, "-m", "lookalike", "-q", "build", str(folder / "b.csv"), "--out", str(path)]
    run = Run.start(argv + (["--update"] if update else []))
    try:
        kill_after(run, random.Random(seed).uniform(0.2, 4.0))
    finally:
        run.kill()
    rec = check_index(path)
    seen = {pid: rec.product(pid)["ProductTitle"] for pid in rec.ids}
    assert seen in (titles_a, titles_b), sorted(seen.items())[:5]
    Index.open(path).remove(["no-such-id"])  # takes the lock: nothing is held by the dead build
    return "new" if seen == titles_b else "old"


# -- tests -----------------------------------------------------------------------------------
def test_replay_tells_acknowledged_from_in_flight():
    state, pending, gen = replay(["READY 1", "BEGIN upsert a t1", "ACK 2 upsert a t1", "BEGIN remove b -",
                                  "ACK 3 remove b -", "BEGIN meta a t3"], {"b": "x"})
    assert state == {"a": "t1"} and pending == ("meta", "a", "t3") and gen == 3


@pytest.mark.parametrize("seed", range(4))
def test_kill_9_of_a_live_writer(shop, tmp_path, seed, encoder):
    writer_trial(shop, tmp_path, 1000 + seed, encoder)


@pytest.mark.parametrize("seed,update", [(0, False), (1, True)])
def test_kill_9_of_a_build_over_an_index(shop, tmp_path, seed, update):
    build_trial(shop, tmp_path, 2000 + seed, update=update)


@pytest.mark.slow
def test_kill_9_fifty_times(shop, tmp_path, encoder):
    """35 live-writer trials and 15 builds (5 of them --update): every one leaves a sound index."""
    acks = 0
    outcomes: dict[str, int] = {}
    for seed in range(35):
        acks += writer_trial(shop, tmp_path, 3000 + seed, encoder)["acks"]
    for seed in range(15):
        outcome = build_trial(shop, tmp_path, 4000 + seed, update=seed % 3 == 0)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert acks > 35  # the writers did get work done before they were killed
    print(f"live trials: {acks} acknowledged changes, none lost; builds: {outcomes}")


def test_a_writer_s_leftovers_are_harmless_and_collected(shop, tmp_path, encoder, monkeypatch):
    """What a kill -9 leaves at each step of a commit (simulated exactly): a half-written segment,
    a finished but uncommitted one, an uncommitted generation, CURRENT.tmp. The next writer
    works over them; the next garbage collection (here: every change) removes them."""
    monkeypatch.setattr("lookalike.folder.store.GC_EVERY", 1)
    folder, images, index_a, _ = shop
    path = tmp_path / "left"
    shutil.copytree(index_a, path)
    n = Store(path).current_generation()
    (path / "segments" / ".tmp-seg-000002-deadbeef").mkdir()
    (path / "segments" / ".tmp-seg-000002-deadbeef" / "vectors.npy").write_bytes(b"\x93NUMPY half")
    shutil.copytree(path / "segments" / Store(path).generation_record(n)["segments"][0]["name"],
                    path / "segments" / "seg-000002-cafebabe")
    (path / "generations" / f"{n + 1}.state.npz").write_bytes(b"half")
    (path / "generations" / f"{n + 1}.json").write_text("{")
    (path / "CURRENT.tmp").write_text(f"{n + 1}\n")
    check_index(path)  # readers never look at any of it
    ix = Index.open(path, encoder=encoder)
    ix.remove([DEMO_TABLE["ProductId"].iloc[0]])
    assert leftovers(path) == []
    check_index(path)


def test_a_half_saved_upload_is_cleared_by_the_next_writer(shop, tmp_path, encoder):
    folder, images, index_a, _ = shop
    path = tmp_path / "upload"
    shutil.copytree(index_a, path)
    ix = Index.open(path, encoder=encoder)
    ix.upsert_photo("u1", (images / DEMO_TABLE["Image"].iloc[3]).read_bytes(), {"ProductTitle": "u1"})
    (path / "photos" / ".tmp-0123456789abcdef0123456789abcdef01234567.jpg").write_bytes(b"\xff\xd8 half")
    ix.upsert_photo("u2", (images / DEMO_TABLE["Image"].iloc[4]).read_bytes(), {"ProductTitle": "u2"})
    ix.compact()
    ix.compact()
    assert leftovers(path) == []
