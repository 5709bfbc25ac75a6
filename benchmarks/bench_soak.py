"""Soak: reads, writes and kill -9 against ``lookalike serve`` for minutes, then every product
checked against a model of what the acknowledged writes must have left (issue 18).

1. Builds the bundled sample (``lookalike/data/demo``, 99 products) into a temp folder and starts
   ``lookalike serve IDX --workers 2 --write-token-file …`` on 127.0.0.1.
2. Baseline: ``--baseline`` seconds of reads only (no writes, no kills).
3. Soak, ``--duration`` seconds (default 600): ``--clients`` keep-alive readers (half
   ``GET /products/{id}/similar?k=5&same=Gender``, half ``GET /products/{id}``) and, from a
   process of its own, an open-loop stream of ``--writes-per-s`` writes on
   ``--write-connections`` keep-alive connections:

   * ``partial``: ``PUT`` JSON of a few fields (a unique title, sometimes a unique Usage/Colour);
   * ``photo``: ``PUT`` multipart with only a photo (another product's): no metadata fields, so
     every other field must be kept;
   * ``add``: ``PUT`` multipart of a new id, photo and every column;
   * ``delete``: ``DELETE`` of a product that is there.

   Writes to one id are sent only after the previous write to it was answered (different ids
   run concurrently), so the state each answer acknowledges is well defined. Four "hot" ids take
   60% of the changes, and half the partial writes to them are pairs: a title and Usage, then,
   the moment it is answered, a title alone or a photo alone on a new connection (either worker),
   as someone editing one product field by field. The last acknowledged write of each slot (the
   second of a pair) is read back at once twice: on its own connection, the whole product as the
   worker that took the write holds it (judged against the model like the final check below, so
   a field changed back by a write that did not name it shows even when a later write sets it
   again), and on a new connection (either worker), where a read that does not show the write
   is a *stale read*.

   Every ``--kill-every`` seconds (the first at half that), kill -9 a random worker process or
   writer child process of the server (found through ``/proc``: the serve parent forks the
   workers, each worker spawns one writer child; ``--kill-targets`` narrows the choice). The
   serve parent's supervisor replaces a killed worker; the last live worker is never killed (a
   writer child is, instead).
4. A write answered 5xx, or not answered at all, within ``--kill-window`` seconds after a kill
   is *unknown* (the model allows both outcomes); outside the windows it is an error (and
   unknown too, so it is counted once). A 4xx is not applied.
5. Once the last kill window has passed, every product the run touched or started with is
   checked against the model through ``GET /products/{id}`` and through
   ``lookalike.Recommender.load``; then again after the server is restarted. *lost*: a product
   the model has that is absent, or an acknowledged removal undone; *reverted*: a field (or the
   photo) back to a value it held before; *mismatched*: any other difference.

Prints the CPU first, then a summary; writes ``--out`` (``benchmarks/results/soak.json``).
Exits 1 unless lost, reverted, mismatched (right after the writes and at the end), stale reads
and 5xx (or no answer) outside kill windows are all 0. Loopback only; bounded in time (about ``--duration`` + 1 minute) and count.

    python benchmarks/bench_soak.py [--duration 600] [--kill-every 30] [--baseline 30]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import http.client
import json
import multiprocessing
import os
import random
import re
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_server as bs
from machine import print_machine  # benchmarks/ is the script's folder

DEMO = bs.ROOT / "lookalike" / "data" / "demo"
RESULTS = bs.ROOT / "benchmarks" / "results" / "soak.json"
#: the write mix: kind and share
MIX = (("partial", 0.45), ("photo", 0.25), ("add", 0.15), ("delete", 0.15))
#: ids that take ``HOT_SHARE`` of the changes (never deleted), so writes to one product follow
#: each other within a second or two, through either worker
HOT = 4
HOT_SHARE = 0.6
#: of the partial writes to a hot id, the share sent as a pair: title and Usage, then at once
#: either a title alone or a photo alone, on a new connection
PAIR_SHARE = 0.5
#: removals stop while fewer products are there (an add is sent instead)
MIN_PRESENT = 60
#: removals take the sample's own products (rows of the built base segment) only while this
#: share of them is left, added ones after that: the readers ask for the sample's ids, so most
#: of their answers stay searches, not 404s (a first version drained them within minutes)
MIN_ORIGINAL_SHARE = 0.8
#: how long after the last write answer the final check waits (a worker opens a change older
#: than 0.5 s before answering)
SETTLE_S = 1.0
HEX40 = re.compile(r"[0-9a-f]{40}")


# -- the catalogue and the state of one product ---------------------------------------------
def read_catalogue() -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(DEMO / "catalog.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return list(rows[0]), {r["ProductId"]: r for r in rows}


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class Shape:
    """Which columns are metadata, and how an ``Image`` value names a photo (its sha1)."""

    def __init__(self, columns: list[str], rows: dict[str, dict[str, str]], id_column: str = "ProductId",
                 image_column: str = "Image") -> None:
        self.id_column, self.image_column = id_column, image_column
        self.meta = [c for c in columns if c not in (id_column, image_column)]
        self.original_sha = {r[image_column]: sha1((DEMO / "images" / r[image_column]).read_bytes())
                             for r in rows.values()}

    def photo_of(self, image_value: str) -> str:
        """An uploaded photo is stored under its content hash; a catalogue one under its name."""
        found = HEX40.search(image_value or "")
        return found.group(0) if found else self.original_sha.get(image_value, f"name:{image_value}")

    def state(self, present: bool, fields: dict[str, Any] | None = None, photo: str | None = None) -> tuple:
        """A hashable product state: (present, ((column, value), …), photo sha1)."""
        if not present:
            return (False, (), None)
        return (True, tuple((c, str((fields or {}).get(c, ""))) for c in self.meta), photo)


ABSENT = (False, (), None)


def apply(state: tuple, write: dict, meta: list[str]) -> tuple | None:
    """The state after ``write`` commits over ``state``; None where it can't have (a change of a
    product that is not there was answered 2xx, so that state was not the real one)."""
    op = write["op"]
    if op == "delete":
        return ABSENT
    if op == "add":  # every column is sent
        return (True, tuple((c, write["fields"].get(c, "")) for c in meta), write["photo"])
    if not state[0]:
        return None
    if op == "partial":
        return (True, tuple((c, write["fields"].get(c, v)) for c, v in state[1]), state[2])
    return (True, state[1], write["photo"])  # photo only: every field kept


def _remember(states: set, seen: dict[str, set]) -> None:
    """Note every value the states hold, field by field (and the photo)."""
    for s in states:
        if s[0]:
            for c, v in s[1]:
                seen.setdefault(c, set()).add(v)
            seen.setdefault("photo", set()).add(s[2])


def replay(initial: dict[str, tuple], writes: list[dict], in_window: Any, meta: list[str],
           observe_row: Any) -> dict[str, Any]:
    """Replay the write log per id, in the order the answers came (writes to one id never
    overlap). Returns the allowed final states per id, every value each id's fields and photo
    held on the way, the counts, and what the product read right after each acknowledged write
    on its connection (``held``, through ``observe_row``) showed that the model does not allow."""
    in_run: list[dict] = []
    reported: set[tuple] = set()
    counts = {"held_unreadable": 0, "acknowledged": 0, "acknowledged_by_op": {op: 0 for op, _ in MIX}, "unknown_in_window": 0,
              "errors_outside": 0, "refused_4xx": 0, "unexpected_4xx": 0, "ack_on_impossible_state": 0}
    by_id: dict[str, list[dict]] = {}
    for w in sorted(writes, key=lambda w: w["t_send"]):
        by_id.setdefault(w["id"], []).append(w)
    allowed = {pid: {state} for pid, state in initial.items()}
    history: dict[str, dict[str, set]] = {}
    for pid in set(initial) | set(by_id):
        states = allowed.setdefault(pid, {ABSENT})
        seen = history.setdefault(pid, {})
        _remember(states, seen)
        for w in by_id.get(pid, []):
            status = w["status"]
            if isinstance(status, int) and 200 <= status < 300:
                counts["acknowledged"] += 1
                counts["acknowledged_by_op"][w["op"]] += 1
                after = {a for a in (apply(s, w, meta) for s in states) if a is not None}
                if not after:
                    counts["ack_on_impossible_state"] += 1
                    w["anomaly"] = "acknowledged, but the model has no state it could apply to"
                    after = states
                states = after
                held = w.get("held")
                if held is not None and not (isinstance(held, str) and held.startswith("error")):
                    observed = ABSENT if held == 404 else observe_row(held) if isinstance(held, dict) else None
                    if observed is None:
                        counts["held_unreadable"] += 1
                    else:
                        _remember(states, seen)
                        for f in judge(pid, observed, states, seen):
                            key = (pid, f["kind"], f["field"], f["expected"])
                            if key not in reported:  # one undone value, however many reads show it
                                reported.add(key)
                                in_run.append({**f, "write": w["n"]})
            elif isinstance(status, int) and 400 <= status < 500:
                counts["refused_4xx"] += 1
                if w["op"] != "add" and all(s[0] for s in states):
                    counts["unexpected_4xx"] += 1  # the product is there by every account
            else:  # 5xx or no answer: committed or not, either may be true now
                counts["unknown_in_window" if in_window(w["t_answer"]) else "errors_outside"] += 1
                states = states | {a for a in (apply(s, w, meta) for s in states) if a is not None}
            _remember(states, seen)
        allowed[pid] = states
    return {"allowed": allowed, "history": history, "counts": counts, "in_run": in_run}


def judge(pid: str, observed: tuple, allowed: set, history: dict[str, set]) -> list[dict]:
    """Differences of ``observed`` from the closest allowed state: each ``lost``, ``reverted``
    (a value the field held before) or ``mismatched``; [] when it is one of them."""
    if observed in allowed:
        return []

    def distance(s: tuple) -> int:
        if s[0] != observed[0]:
            return 1000
        return sum(a != b for a, b in zip(s[1], observed[1])) + (s[2] != observed[2])

    best = min(allowed, key=distance)
    if best[0] != observed[0]:
        what = "present, the model has it removed" if observed[0] else "absent"
        return [{"id": pid, "kind": "lost", "field": None, "observed": what, "expected": None}]
    out = []
    pairs = [(c, v, dict(observed[1]).get(c)) for c, v in best[1]] + [("photo", best[2], observed[2])]
    for c, want, got in pairs:
        if want != got:
            kind = "reverted" if got in history.get(c, set()) else "mismatched"
            out.append({"id": pid, "kind": kind, "field": c, "observed": got, "expected": want})
    return out


def check(view: str, observe: Any, allowed: dict[str, set], history: dict) -> dict[str, Any]:
    """Every id against the model, through ``observe(pid) -> state | str (an error)``."""
    problems: list[dict] = []
    unreadable: list[str] = []
    for pid in sorted(allowed):
        observed = observe(pid)
        if isinstance(observed, str):
            unreadable.append(f"{pid}: {observed}")
            continue
        problems += judge(pid, observed, allowed[pid], history[pid])
    return tally(view, len(allowed), problems, unreadable)


def tally(view: str, products: int, problems: list[dict], unreadable: list[str]) -> dict[str, Any]:
    kinds = {k: [p for p in problems if p["kind"] == k] for k in ("lost", "reverted", "mismatched")}
    return {"view": view, "products": products,
            "lost": len(kinds["lost"]),
            "reverted_fields": len(kinds["reverted"]),
            "reverted_products": len({p["id"] for p in kinds["reverted"]}),
            "mismatched_fields": len(kinds["mismatched"]),
            "unreadable": len(unreadable), "unreadable_examples": unreadable[:5],
            "examples": problems[:12]}


def server_view(port: int, shape: Shape) -> Any:
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
    turn = [0]

    def observe(pid: str) -> tuple | str:
        turn[0] += 1
        conn = conns[turn[0] % len(conns)]
        try:
            conn.request("GET", f"/products/{pid}")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return type(exc).__name__
        if resp.status == 404:
            return ABSENT
        if resp.status != 200:
            return f"HTTP {resp.status}"
        row = json.loads(body)
        return shape.state(True, row, shape.photo_of(str(row.get(shape.image_column, ""))))

    return observe


def library_view(index: Path, shape: Shape) -> Any:
    from lookalike import Recommender

    rec = Recommender.load(index)

    def observe(pid: str) -> tuple | str:
        if pid not in rec:
            return ABSENT
        try:
            photo = sha1(rec.image_path(pid).read_bytes())
        except OSError as exc:
            photo = f"unreadable: {type(exc).__name__}"
        return shape.state(True, rec.product(pid), photo)

    return observe


# -- the write stream (a process of its own) ------------------------------------------------
def multipart(fields: dict[str, str], photo: bytes | None) -> tuple[bytes, str]:
    boundary = secrets.token_hex(8)
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    if photo is not None:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
                     f"Content-Type: image/jpeg\r\n\r\n".encode() + photo + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def dropped(conn: http.client.HTTPConnection) -> bool:
    """A kept-alive connection the server closed meanwhile (its worker killed, or idle too long)
    reads as ready: open a new one instead of sending a write into it."""
    if conn.sock is None:
        return True
    try:
        return bool(select.select([conn.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def write_stream(port: int, token: str, catalogue: dict[str, dict[str, str]], meta: list[str],
                 photos: dict[str, bytes], rate: float, stop_at: float, connections: int, seed: int,
                 out_path: str) -> None:
    """Send the writes (open loop: write n is due at start + n / rate, on whichever connection is
    free), read each acknowledged one back on a new connection, and log everything to ``out_path``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through stop_at
    rng = random.Random(seed)
    lock = threading.Lock()
    present = set(catalogue)
    hot = sorted(catalogue)[:HOT]
    busy: set[str] = set()
    retired: set[str] = set()  # an add or removal with an unknown outcome: nobody knows if it is there
    photo_sha = {name: sha1(data) for name, data in photos.items()}
    photo_now = {pid: photo_sha[row["Image"]] for pid, row in catalogue.items()}
    names = sorted(photos)
    log: list[dict] = []
    slot = [0]
    auth = {"Authorization": f"Bearer {token}"}
    start = time.monotonic()

    def plan(n: int) -> list[dict]:
        """The write(s) of slot ``n``: one, or two to one hot product (the second sent the moment
        the first is answered, on a new connection: either worker)."""
        op = rng.choices([m for m, _ in MIX], weights=[w for _, w in MIX])[0]
        free = sorted(present - busy - retired)
        if op == "delete":
            free = [p for p in free if p not in hot]
            originals = sum(p in catalogue for p in present)
            if originals <= MIN_ORIGINAL_SHARE * len(catalogue):
                free = [p for p in free if p not in catalogue]
            if len(present) <= MIN_PRESENT or not free:
                op = "add"
        if op == "add":
            pid = f"soak-{n}"
            name = rng.choice(names)
            source = catalogue[Path(name).stem] if Path(name).stem in catalogue else {}
            fields = {c: source.get(c, "") for c in meta}
            fields["ProductTitle"] = f"soak {n} added"
            return [{"op": op, "id": pid, "fields": fields, "photo_name": name}]
        if op == "delete":
            return [{"op": op, "id": rng.choice(free), "fields": {}}]
        hot_free = [p for p in hot if p not in busy]
        pool = hot_free if rng.random() < HOT_SHARE else []
        pool = pool or [p for p in free if p not in hot] or hot_free
        if not pool:
            return []
        pid = rng.choice(pool)
        if op == "partial" and pid in hot and rng.random() < PAIR_SHARE:
            first = {"op": op, "id": pid, "fields": {"ProductTitle": f"soak {n} title", "Usage": f"usage {n}"}}
            if rng.random() < 0.5:
                return [first, {"op": "partial", "id": pid, "fields": {"ProductTitle": f"soak {n}b title"}}]
            name = rng.choice([x for x in names if photo_sha[x] != photo_now.get(pid)])
            return [first, {"op": "photo", "id": pid, "fields": {}, "photo_name": name}]
        if op == "partial":
            fields = {"ProductTitle": f"soak {n} title"}
            if rng.random() < 0.5:
                fields["Usage"] = f"usage {n}"
            if rng.random() < 0.3:
                fields["Colour"] = f"colour {n}"
            return [{"op": op, "id": pid, "fields": fields}]
        name = rng.choice([x for x in names if photo_sha[x] != photo_now.get(pid)])
        return [{"op": op, "id": pid, "fields": {}, "photo_name": name}]

    def read_back(w: dict) -> None:
        """The write's own effect, read at once on a new connection (either worker may answer)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/products/{w['id']}")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            w["read_back"] = f"error: {type(exc).__name__}"
            return
        finally:
            w["t_read"] = time.monotonic()
            conn.close()
        if w["op"] == "delete":
            w["read_back"] = "ok" if resp.status == 404 else f"stale: HTTP {resp.status}"
            return
        if resp.status != 200:
            w["read_back"] = f"stale: HTTP {resp.status}"
            return
        row = json.loads(body)
        wrong = [c for c, v in w["fields"].items() if str(row.get(c)) != v]
        if w.get("photo") and w["photo"] not in str(row.get("Image", "")):
            wrong.append("photo")
        w["read_back"] = f"stale: {', '.join(wrong)}" if wrong else "ok"

    def as_held(conn: http.client.HTTPConnection, w: dict) -> http.client.HTTPConnection:
        """The whole product as the worker that took the write holds it now (it opened the write's
        generation before answering), on the write's own connection: judged against the model
        afterwards, so a field the write did not name but changed back shows at once, even where a
        later write sets it again before the end."""
        try:
            conn.request("GET", f"/products/{w['id']}")
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            w["held"] = f"error: {type(exc).__name__}"
            conn.close()
            return http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        w["held"] = json.loads(body) if resp.status == 200 else resp.status
        return conn

    def send(conn: http.client.HTTPConnection, w: dict) -> http.client.HTTPConnection:
        """Send one write and record its answer; returns the connection to go on with."""
        if w["op"] == "delete":
            method, body, headers = "DELETE", b"", dict(auth)
        elif w["op"] == "partial":
            method, body = "PUT", json.dumps(w["fields"]).encode()
            headers = {**auth, "Content-Type": "application/json"}
        else:
            photo = photos[w["photo_name"]]
            w["photo"] = sha1(photo)
            body, ctype = multipart(w["fields"], photo)
            method, headers = "PUT", {**auth, "Content-Type": ctype}
        if dropped(conn):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        w["t_send"] = time.monotonic()
        try:
            conn.request(method, f"/products/{w['id']}", body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            w["status"] = resp.status
            try:
                w["answer"] = json.loads(answer).get("status") if resp.status < 300 else \
                    json.loads(answer).get("detail", "")[:200]
            except ValueError:
                w["answer"] = answer[:200].decode("latin-1")
        except (OSError, http.client.HTTPException) as exc:
            w["status"] = f"no answer: {type(exc).__name__}"
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        w["t_answer"] = time.monotonic()
        return conn

    def settle(w: dict, acked: bool) -> None:
        """What the stream believes after a write (under the lock): which ids are there."""
        pid, op = w["id"], w["op"]
        if acked and op == "add":
            present.add(pid)
        if acked and op == "delete":
            present.discard(pid)
        if acked and op in ("add", "photo"):
            photo_now[pid] = w["photo"]
        if not acked and op in ("add", "delete") and not (isinstance(w["status"], int) and w["status"] < 500):
            retired.add(pid)
            present.discard(pid)
        if w["status"] == 404 and op in ("partial", "photo"):
            retired.add(pid)
        log.append(w)

    def one_connection(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                n = slot[0]
                slot[0] += 1
            due = start + n / rate
            if due >= stop_at:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            with lock:
                planned = plan(n)
                if not planned:
                    continue
                busy.add(planned[0]["id"])
                slot[0] += len(planned) - 1  # a pair takes the next slot too: the rate stays
            late = round(max(0.0, time.monotonic() - due) * 1000, 1)
            last, last_conn, unknown_after = None, conn, False
            for step, w in enumerate(planned):
                w.update(n=n, step=step, conn=k, late_ms=late)
                if step == 0:
                    conn = last_conn = send(conn, w)
                else:  # on a new connection: either worker, at once
                    last_conn = send(http.client.HTTPConnection("127.0.0.1", port, timeout=30), w)
                acked = isinstance(w["status"], int) and 200 <= w["status"] < 300
                with lock:
                    settle(w, acked)
                if not acked:
                    # 5xx or no answer: it may have committed after ``last``, so a read of ``last``
                    # can rightly show it; that pair is judged by the final check alone
                    unknown_after = last is not None and not (isinstance(w["status"], int) and w["status"] < 500)
                    break
                last = w
            if last is not None and unknown_after:
                last["read_back"] = "skipped: the next write to it is unknown"
            elif last is not None:  # the last acknowledged write of the slot, read back twice
                held_conn = as_held(last_conn, last)
                if last_conn is conn:
                    conn = held_conn
                else:
                    held_conn.close()
                read_back(last)
            if last_conn is not conn:
                last_conn.close()
            with lock:
                busy.discard(planned[0]["id"])
        conn.close()

    threads = [threading.Thread(target=one_connection, args=(k,), daemon=True) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    Path(out_path).write_text(json.dumps({"writes": log, "seconds": time.monotonic() - start}))


# -- the readers and the killer -------------------------------------------------------------
async def read_load(port: int, ids: list[str], clients: int, seconds: float, seed: int) -> dict[str, Any]:
    """``clients`` keep-alive readers for ``seconds``: latencies of every answer, and the time of
    each 5xx and each request that got no answer."""
    rng = random.Random(seed)
    stop_at = time.perf_counter() + seconds
    lat: dict[str, list[float]] = {"similar": [], "product": []}
    statuses: dict[str, int] = {}
    failures: list[tuple[float, str]] = []

    async def reader(k: int) -> None:
        conn = bs.Conn(port)
        i = k
        try:
            while time.perf_counter() < stop_at:
                i += 1
                kind = "similar" if i % 2 else "product"
                pid = rng.choice(ids)
                path = f"/products/{pid}/similar?k=5&same=Gender" if kind == "similar" else f"/products/{pid}"
                t0 = time.perf_counter()
                try:
                    status, _ = await asyncio.wait_for(conn.get(path), timeout=30)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    failures.append((time.monotonic(), f"no answer: {type(exc).__name__}"))
                    await conn.close()
                    continue
                lat[kind].append((time.perf_counter() - t0) * 1000)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status >= 500:
                    failures.append((time.monotonic(), str(status)))
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(reader(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    every = sorted(lat["similar"] + lat["product"])
    return {"clients": clients, "seconds": round(wall, 1), "requests": len(every),
            "throughput_rps": round(len(every) / wall, 1), **pcts(every),
            "by_kind": {k: {"requests": len(v), **pcts(sorted(v))} for k, v in lat.items()},
            "status": statuses, "failures": failures}


def pcts(ms: list[float]) -> dict[str, float]:
    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(round(p / 100 * (len(ms) - 1))))], 2) if ms else float("nan")

    return {"p50_ms": pct(50), "p99_ms": pct(99)}


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def server_tree(parent: int) -> tuple[list[int], list[int]]:
    """The serve parent's workers, and the workers' writer children (not their resource trackers)."""
    workers = [w for w in children(parent) if "lookalike" in cmdline(w)]
    writers = [c for w in workers for c in children(w) if "spawn_main" in cmdline(c)]
    return workers, writers


async def killer(parent: int, every: float, seconds: float, targets: str, rng: random.Random,
                 kills: list[dict], seen: set[int]) -> None:
    """kill -9 a worker or a writer child every ``every`` s, the first at ``every / 2``; never the
    last live worker (the supervisor replaces a killed one within a second or so)."""
    start = time.monotonic()
    k = 0
    while True:
        at = start + every / 2 + k * every
        k += 1
        if at >= start + seconds:
            return
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        workers, writers = server_tree(parent)
        seen.update(workers + writers)
        kinds = ((["worker"] if len(workers) > 1 and targets in ("both", "worker") else [])
                 + (["writer"] if writers and targets in ("both", "writer") else []))
        if not kinds:
            kills.append({"t": time.monotonic(), "kind": "none", "pid": None, "workers": len(workers)})
            continue
        kind = rng.choice(kinds)
        pid = rng.choice(workers if kind == "worker" else writers)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        kills.append({"t": time.monotonic(), "kind": kind, "pid": pid, "workers": len(workers),
                      "at_s": round(time.monotonic() - start, 1)})
        print(f"  {time.monotonic() - start:5.0f} s: kill -9 {kind} {pid} ({len(workers)} workers)", flush=True)


async def soak(port: int, parent: int, ids: list[str], args: argparse.Namespace, kills: list[dict],
               seen: set[int]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    kill = asyncio.create_task(killer(parent, args.kill_every, args.duration, args.kill_targets, rng, kills, seen))
    reads = await read_load(port, ids, args.clients, args.duration, seed=args.seed + 1)
    await kill
    return reads


# -- server start and stop ------------------------------------------------------------------
def stop_server(proc: subprocess.Popen, seen: set[int]) -> None:
    workers, writers = server_tree(proc.pid)
    seen.update(workers + writers)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in seen):
        time.sleep(0.2)
    for p in seen:  # ours only: every pid was found under the serve parent this run started
        if alive(p):
            os.kill(p, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def build_sample(index: Path, attempts: int = 3, timeout: float = 90.0) -> None:
    """``lookalike build`` of the sample (2-3 s). A build that has not finished within ``timeout``
    is killed and tried again: one in a few dozen builds here deadlocked in OpenVINO's Python
    binding (two decode-and-embed threads taking its first numpy conversion at once)."""
    cmd = [sys.executable, "-m", "lookalike", "-q", "build", str(DEMO / "catalog.csv"), "--out", str(index)]
    for attempt in range(1, attempts + 1):
        print(f"building the sample into {index}", flush=True)
        try:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=timeout)
            return
        except subprocess.TimeoutExpired:  # subprocess.run kills it
            print(f"  the build hung for {timeout:.0f} s (attempt {attempt} of {attempts})", flush=True)
    raise SystemExit(f"the sample build hung {attempts} times")


# -- main -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of soak (default 600)")
    ap.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills (0: none)")
    ap.add_argument("--kill-targets", choices=("both", "worker", "writer"), default="both",
                    help="what a kill picks from: workers and writer children (default), or one kind")
    ap.add_argument("--kill-window", type=float, default=5.0,
                    help="seconds after a kill in which a 5xx or a missing answer is 'unknown', not an error")
    ap.add_argument("--baseline", type=float, default=30.0, help="seconds of reads only before the soak")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--writes-per-s", type=float, default=10.0)
    ap.add_argument("--write-connections", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    t_run = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout still stops the server
    machine = print_machine()
    load_before = os.getloadavg()
    columns, catalogue = read_catalogue()
    shape = Shape(columns, catalogue)
    photos = {r["Image"]: (DEMO / "images" / r["Image"]).read_bytes() for r in catalogue.values()}
    ids = sorted(catalogue)
    initial = {pid: shape.state(True, row, shape.original_sha[row["Image"]]) for pid, row in catalogue.items()}
    kills: list[dict] = []
    seen: set[int] = set()
    wproc: Any = None
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        index = Path(tmp) / "index"
        build_sample(index)
        token = secrets.token_hex(16)
        (Path(tmp) / "token").write_text(token)
        bs.WORKERS = args.workers
        serve = ["--write-token-file", str(Path(tmp) / "token")]
        port = bs.free_port()
        proc = bs.start_server(index, port, extra=serve)
        try:
            workers_at_start = len(server_tree(proc.pid)[0])
            asyncio.run(read_load(port, ids, 8, 3.0, seed=99))  # warm-up
            print(f"baseline: {args.baseline:.0f} s of reads, {args.clients} clients", flush=True)
            baseline = asyncio.run(read_load(port, ids, args.clients, args.baseline, seed=args.seed))
            print(f"soak: {args.duration:.0f} s, {args.writes_per_s:g} writes/s, kill -9 every "
                  f"{args.kill_every:g} s", flush=True)
            log_path = Path(tmp) / "writes.json"
            # a process of its own, started fresh (spawn): its threads must not take the
            # interpreter lock from the readers whose latency is measured
            ctx = multiprocessing.get_context("spawn")
            stop_at = time.monotonic() + args.duration
            wproc = ctx.Process(target=write_stream, args=(
                port, token, catalogue, shape.meta, photos, args.writes_per_s, stop_at, args.write_connections,
                args.seed + 2, str(log_path)))
            wproc.start()
            if args.kill_every > 0:
                reads = asyncio.run(soak(port, proc.pid, ids, args, kills, seen))
            else:
                reads = asyncio.run(read_load(port, ids, args.clients, args.duration, seed=args.seed + 1))
            wproc.join(timeout=90)
            if wproc.is_alive():
                wproc.kill()
                raise SystemExit("the write stream did not finish within 90 s of the soak's end")
            wlog = json.loads(log_path.read_text())
            writes = wlog["writes"]
            # the final check starts once the last kill window has passed and every worker has
            # had time to open the last write's generation
            quiet = max([k["t"] + args.kill_window for k in kills] +
                        [w["t_answer"] + SETTLE_S for w in writes] + [time.monotonic()])
            time.sleep(max(0.0, quiet - time.monotonic()))

            def in_window(t: float) -> bool:
                return any(k["t"] <= t <= k["t"] + args.kill_window for k in kills if k["kind"] != "none")

            model = replay(initial, writes, in_window, shape.meta,
                           lambda row: shape.state(True, row, shape.photo_of(str(row.get(shape.image_column, "")))))
            workers_at_end = len(server_tree(proc.pid)[0])
            held = sum(1 for w in writes if w.get("held") is not None)
            checks = [tally("right after each write, its worker", held, model["in_run"],
                            [f"write {i}" for i in range(model["counts"]["held_unreadable"])]),
                      check("server, end of soak", server_view(port, shape), model["allowed"], model["history"]),
                      check("library, end of soak", library_view(index, shape), model["allowed"], model["history"])]
            stop_server(proc, seen)
            port = bs.free_port()
            proc = bs.start_server(index, port, extra=serve)
            checks += [check("server, after restart", server_view(port, shape), model["allowed"], model["history"]),
                       check("library, after restart", library_view(index, shape), model["allowed"],
                             model["history"])]
        finally:
            if wproc is not None and wproc.is_alive():
                wproc.kill()
                wproc.join(timeout=10)
            stop_server(proc, seen)
    load_after = os.getloadavg()

    # -- summary --
    def split(failures: list) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {"inside": {"5xx": 0, "no answer": 0}, "outside": {"5xx": 0, "no answer": 0}}
        for t, what in failures:
            out["inside" if in_window(t) else "outside"]["no answer" if what.startswith("no answer") else "5xx"] += 1
        return out

    write_failures = [(w["t_answer"], w["status"] if isinstance(w["status"], str) else str(w["status"]))
                      for w in writes if not (isinstance(w["status"], int) and w["status"] < 500)]
    wsplit, rsplit = split(write_failures), split(reads.pop("failures"))
    baseline.pop("failures")
    acked = [w for w in writes if isinstance(w["status"], int) and 200 <= w["status"] < 300]
    wlat = sorted((w["t_answer"] - w["t_send"]) * 1000 for w in acked)
    stale = [w for w in acked if str(w.get("read_back", "")).startswith("stale")]
    read_back_errors = [w for w in acked if str(w.get("read_back", "")).startswith("error")]
    skipped = [w for w in acked if str(w.get("read_back", "")).startswith("skipped")]
    counts = model["counts"]
    statuses: dict[str, int] = {}
    for w in writes:
        statuses[str(w["status"])] = statuses.get(str(w["status"]), 0) + 1
    summary = {
        "duration_s": args.duration, "kill_every_s": args.kill_every, "kill_window_s": args.kill_window,
        "kills": len([k for k in kills if k["kind"] != "none"]),
        "kills_by_kind": {kind: sum(k["kind"] == kind for k in kills) for kind in ("worker", "writer", "none")},
        "workers": {"start": workers_at_start, "end_of_soak": workers_at_end},
        "baseline_reads": {k: baseline[k] for k in ("requests", "throughput_rps", "p50_ms", "p99_ms")},
        "soak_reads": {k: reads[k] for k in ("requests", "throughput_rps", "p50_ms", "p99_ms")},
        "writes": {"sent": len(writes), "rate_per_s": round(len(writes) / wlog["seconds"], 2),
                   "acknowledged": counts["acknowledged"], "acknowledged_by_op": counts["acknowledged_by_op"],
                   **pcts(wlat), "status": statuses, "unknown_in_kill_window": counts["unknown_in_window"],
                   "refused_4xx": counts["refused_4xx"], "unexpected_4xx": counts["unexpected_4xx"],
                   "ack_on_impossible_state": counts["ack_on_impossible_state"],
                   "stale_read_backs": len(stale), "read_back_errors": len(read_back_errors),
                   "read_backs_skipped": len(skipped)},
        "5xx_outside": {"writes": wsplit["outside"]["5xx"], "reads": rsplit["outside"]["5xx"]},
        "no_answer_outside": {"writes": wsplit["outside"]["no answer"], "reads": rsplit["outside"]["no answer"]},
        "5xx_inside": {"writes": wsplit["inside"]["5xx"], "reads": rsplit["inside"]["5xx"]},
        "no_answer_inside": {"writes": wsplit["inside"]["no answer"], "reads": rsplit["inside"]["no answer"]},
        "checks": checks,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
        "wall_s": round(time.monotonic() - t_run, 1),
    }
    failed = {
        "lost": sum(c["lost"] for c in checks),
        "reverted": sum(c["reverted_fields"] for c in checks),
        "mismatched": sum(c["mismatched_fields"] + c["unreadable"] for c in checks),
        "stale read-backs": len(stale),
        "5xx or no answer outside kill windows": sum(summary["5xx_outside"].values())
        + sum(summary["no_answer_outside"].values()),
    }
    summary["failed"] = {k: v for k, v in failed.items() if v}
    result = {"machine": machine, "settings": vars(args) | {"out": str(args.out)}, "summary": summary,
              "baseline": baseline, "soak": reads, "kills": kills,
              "stale_examples": [{k: w.get(k) for k in ("n", "op", "id", "fields", "read_back")} for w in stale[:12]],
              "write_failures": [{k: w.get(k) for k in ("n", "op", "id", "status", "answer")}
                                 for w in writes if not (isinstance(w["status"], int) and w["status"] < 500)][:40]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_summary(summary, stale, args)
    print(f"written: {args.out}")
    return 1 if summary["failed"] else 0


def print_summary(s: dict, stale: list[dict], args: argparse.Namespace) -> None:
    w = s["writes"]
    print(f"\nsoak {s['duration_s']:.0f} s, {args.clients} readers, {w['rate_per_s']} writes/s; "
          f"{s['kills']} kills ({s['kills_by_kind']['worker']} worker, {s['kills_by_kind']['writer']} writer), "
          f"window {s['kill_window_s']:g} s; workers {s['workers']['start']} -> {s['workers']['end_of_soak']}; "
          f"load average {s['loadavg_before'][0]:.1f} -> {s['loadavg_after'][0]:.1f}\n")
    print("| reads | requests | req/s | p50 ms | p99 ms |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in (("baseline (reads only)", s["baseline_reads"]), ("soak", s["soak_reads"])):
        print(f"| {name} | {r['requests']} | {r['throughput_rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    by = ", ".join(f"{k} {v}" for k, v in w["acknowledged_by_op"].items())
    print(f"\nwrites: {w['sent']} sent, {w['acknowledged']} acknowledged ({by}); p50 {w['p50_ms']:.0f} ms, "
          f"p99 {w['p99_ms']:.0f} ms; unknown (kill window) {w['unknown_in_kill_window']}; "
          f"4xx {w['refused_4xx']} ({w['unexpected_4xx']} for a product that is there)")
    print(f"stale read-backs (an acknowledged write not shown by a read right after it): {w['stale_read_backs']}"
          f" ({w.get('read_backs_skipped', 0)} not read back: the next write of the pair is unknown)"
          + "".join(f"\n  write {x['n']} {x['op']} {x['id']}: {x['read_back']}" for x in stale[:3]))
    print(f"5xx outside kill windows: writes {s['5xx_outside']['writes']}, reads {s['5xx_outside']['reads']}; "
          f"inside: writes {s['5xx_inside']['writes']}, reads {s['5xx_inside']['reads']}")
    print(f"no answer outside kill windows: writes {s['no_answer_outside']['writes']}, reads "
          f"{s['no_answer_outside']['reads']}; inside: writes {s['no_answer_inside']['writes']}, "
          f"reads {s['no_answer_inside']['reads']}\n")
    print("| check | checked | lost | reverted fields (products) | mismatched | unreadable |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")
    for c in s["checks"]:
        print(f"| {c['view']} | {c['products']} | {c['lost']} | {c['reverted_fields']} ({c['reverted_products']}) | "
              f"{c['mismatched_fields']} | {c['unreadable']} |")
    for c in s["checks"]:
        for p in c["examples"][:3]:
            print(f"  {c['view']}: {p['kind']} {p['id']} {p['field'] or ''}: {p['observed']!r}, "
                  f"expected {p['expected']!r}")
    verdict = "FAILED: " + ", ".join(f"{k} {v}" for k, v in s["failed"].items()) if s["failed"] else "ok"
    print(f"\n{verdict}; whole run {s['wall_s']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
