"""Fuzzing (issue 9): generated catalogues and mutated photos through `build`, generated requests
against a live `lookalike serve`. Whatever the input: exit 0 or one `lookalike: error:` line, every
catalogue row indexed or reported with a reason, no HTTP 5xx, server memory bounded."""

from __future__ import annotations

import io
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lookalike import CatalogError, build, demo_catalog
from lookalike.cli import main

DEMO = demo_catalog()
IMAGES = DEMO.parent / "images"
PHOTOS = sorted(p.name for p in IMAGES.glob("*.jpg"))[:6]
FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)

ids = st.one_of(st.from_regex(r"[0-9]{1,6}", fullmatch=True), st.sampled_from(["", " 7 ", "007", "7", "a,b", 'q"t']),
                st.text(min_size=1, max_size=8))
images = st.one_of(st.sampled_from(PHOTOS), st.sampled_from(["", "missing.jpg", "../outside.jpg", "/etc/passwd",
                                                            "sub/../" + PHOTOS[0], "notes.txt", "empty.jpg"]))
extra = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def catalogues(draw):
    n = draw(st.integers(1, 6))
    rows = [{"ProductId": draw(ids), "Image": draw(images), draw(st.sampled_from(["Gender", "Größe", "a b"])):
             draw(extra)} for _ in range(n)]
    sep = draw(st.sampled_from([",", "\t"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig"]))
    return pd.DataFrame(rows).fillna(""), sep, encoding


def _run(argv: list[str], capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _folder(tmp: Path) -> Path:
    folder = tmp / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        shutil.copy(IMAGES / name, folder / name)
    (folder / "notes.txt").write_text("not a photo")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_generated_catalogues_build_or_fail_in_one_line(tmp_path_factory, capsys):
    """Random ids (empty, repeated, padded, quoted), photo names (missing, outside, not photos),
    extra columns, separators and encodings: every row is indexed or reported; a catalogue with
    nothing to index fails with one line and leaves no index."""

    @given(catalogues())
    @FUZZ
    def check(drawn):
        table, sep, encoding = drawn
        tmp = tmp_path_factory.mktemp("fuzz-catalogue")
        images_dir = _folder(tmp)
        path = tmp / ("c.tsv" if sep == "\t" else "c.csv")
        try:
            path.write_bytes(table.to_csv(sep=sep, index=False).encode(encoding))
        except UnicodeEncodeError:
            return
        code, err = _run(["-q", "build", str(path), "--images", str(images_dir), "--out", str(tmp / "idx")], capsys)
        if code not in (0, 3):  # 3: built, some rows refused (each in the report)
            assert code == 1 and len(err) == 1 and err[0].startswith("lookalike: error: "), err
            return
        from lookalike.folder.store import Store

        report = Store(tmp / "idx").report()
        assert (code == 3) == bool((report["status"] != "indexed").any())
        rows = len(pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding))
        assert set(report["row"].astype(int)) == set(range(1, rows + 1))  # every row, a line a photo it names
        assert set(report["status"]) <= {"indexed", "skipped", "photo skipped"}
        assert (report.loc[report["status"] != "indexed", "reason"] != "").all()
        for _, row in report[report["status"] == "indexed"].iterrows():
            assert row["image"] in PHOTOS or row["image"].endswith(PHOTOS[0])  # nothing outside the folder

    check()


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: float | None) -> bytes:
    raw = bytearray(data)
    for at, value in edits:
        raw[at % len(raw)] = value
    if cut is not None:
        raw = raw[: max(1, int(len(raw) * cut))]
    return bytes(raw)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(IMAGES / PHOTOS[1]).convert("RGBA").save(buf, format="PNG")
    return buf.getvalue()


def test_mutated_photos_are_indexed_or_reported(tmp_path_factory, encoder):
    """Byte-flipped and cut JPEGs and PNGs: each row indexed or skipped with a reason, never a
    crash; a catalogue where every photo is broken is one CatalogError."""
    sources = [(IMAGES / PHOTOS[0]).read_bytes(), _png()]

    @given(st.lists(st.tuples(st.sampled_from([0, 1]),
                              st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
                              st.one_of(st.none(), st.floats(0.0, 1.0))), min_size=1, max_size=4))
    @FUZZ
    def check(photos):
        tmp = tmp_path_factory.mktemp("fuzz-photos")
        (tmp / "images").mkdir()
        rows = []
        for i, (which, edits, cut) in enumerate(photos):
            name = f"p{i}.{'jpg' if which == 0 else 'png'}"
            (tmp / "images" / name).write_bytes(_mutate(sources[which], edits, cut))
            rows.append({"ProductId": str(i), "Image": name})
        pd.DataFrame(rows).to_csv(tmp / "c.csv", index=False)
        try:
            report = build(tmp / "c.csv", tmp / "idx", encoder=encoder, show_progress_bar=False)
        except CatalogError as exc:
            assert "nothing could be indexed" in str(exc)
            return
        assert report.indexed + report.skipped == len(rows)
        assert all(p.reason for p in report.problems)

    check()


# -- a live server under generated requests ----------------------------------------------------
def _rss_mib(pid: int) -> float:
    """RSS of a process and its children (the pre-forked workers), in MiB."""
    total = 0.0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def test_live_server_under_generated_requests(demo_index, tmp_path):
    """Requests generated from the OpenAPI schema (valid and broken), plus raw junk and hostile
    uploads, against `lookalike serve` on 127.0.0.1: never a 5xx, memory bounded. Bounded: ~300
    requests, 60 s."""
    schemathesis = pytest.importorskip("schemathesis")
    from schemathesis import GenerationMode

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", str(demo_index), "--port", str(port),
                             "--workers", "2", "--max-upload-mb", "2"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        start_rss = _rss_mib(proc.pid)
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        statuses: dict[int, int] = {}
        stop_at = time.monotonic() + 60
        for result in schema.get_all_operations():
            op = result.ok()
            # a negative case needs something to break: parameters or a body
            modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if op.query or op.body else (
                GenerationMode.POSITIVE,)
            for mode in modes:

                @given(case=op.as_strategy(generation_mode=mode))
                @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                def check(case):
                    if time.monotonic() > stop_at:
                        return
                    resp = case.call(base_url=base, timeout=30)
                    statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                    assert resp.status_code < 500, f"{case.method} {case.formatted_path} {case.query}: {resp.text[:200]}"

                check()
        rng = random.Random(0)
        for _ in range(40):  # junk and hostile bodies on the raw socket
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000)))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
                c.sendall(b"POST /similar HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                          + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                head = c.recv(64)
                assert not head.startswith(b"HTTP/1.1 5"), head
        assert sum(statuses.values()) > 0
        assert _rss_mib(proc.pid) < start_rss + 1024, "server memory grew by more than 1 GB"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
