"""The write path's promises (issue 18): writes merge where they commit, a client reads its own
write on any worker, conditional writes, the machine's faults as 503 + Retry-After, bounds."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lookalike import Recommender, build, demo_catalog  # noqa: E402
from lookalike.server import create_app  # noqa: E402

DEMO = demo_catalog()
IMAGES = DEMO.parent / "images"
TOKEN = "s3cret-write-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: the demo's text columns a partial write may set (not the id, not the photo)
FIELDS = ["Gender", "Category", "SubCategory", "ProductType", "Colour", "Usage", "ProductTitle"]
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(DEMO, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder, table) -> Path:
    out = tmp_path_factory.mktemp("write-path") / "index"
    table.iloc[:30].to_csv(out.parent / "c.csv", index=False)
    build(out.parent / "c.csv", out, images=IMAGES, encoder=encoder, show_progress_bar=False)
    return out


@pytest.fixture
def index(built, tmp_path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    return copy


@pytest.fixture
def client(index, encoder):
    app = create_app(Recommender.load(index, encoder=encoder), write_token=TOKEN)
    with TestClient(app) as c:
        yield c


# -- a real `lookalike serve` with two workers --------------------------------------------
class Served:
    """``lookalike serve INDEX --workers 2`` on a free loopback port; every call on a new
    connection, so the kernel spreads them over both workers."""

    def __init__(self, index: Path, folder: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (folder / "token").write_text(TOKEN)
        self.log_path = folder / "serve.log"
        self._log = self.log_path.open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike", "serve", str(index), "--port", str(self.port), "--workers", "2",
             "--write-token-file", str(folder / "token")], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if self.call("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.2)

    def call(self, method: str, path: str, body: bytes | None = None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read(), dict(resp.getheaders())
        finally:
            conn.close()

    def put_json(self, pid: str, fields: dict[str, str], headers=None):
        return self.call("PUT", f"/products/{pid}", json.dumps(fields).encode(),
                         {**AUTH, "Content-Type": "application/json", **(headers or {})})

    def put_photo(self, pid: str, photo: bytes):
        boundary = "lookalike-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"p.jpg\"\r\n"
                f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
        return self.call("PUT", f"/products/{pid}", body,
                         {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"})

    def product(self, pid: str):
        status, body, _ = self.call("GET", f"/products/{pid}")
        return status, (json.loads(body) if status == 200 else None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        finally:
            self._log.close()


@pytest.fixture
def served(index, tmp_path):
    server = Served(index, tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_partial_writes_compose_and_each_is_read_back_at_once_on_any_worker(served, table, index):
    """Sequential partial PUTs (JSON, and photo-only multipart) to one product, each sent after
    the previous one's answer: every acknowledged change is there at the end, and a read right
    after each acknowledgement (a new connection: either worker) shows it. Then concurrent
    partial PUTs to distinct fields of one product: all of them land."""
    pid = table["ProductId"].iat[2]
    status, model = served.product(pid)
    assert status == 200
    photos = [(IMAGES / table["Image"].iat[40 + i]).read_bytes() for i in range(3)]
    for i in range(16):
        if i % 4 == 3:  # a photo-only PUT: every metadata field must be kept
            status, body, _ = served.put_photo(pid, photos[i % 3])
        else:
            field = FIELDS[i % len(FIELDS)]
            status, body, _ = served.put_json(pid, {field: f"round {i}"})
            model[field] = f"round {i}"
        assert status == 200, body
        got = served.product(pid)[1]
        assert {k: got[k] for k in FIELDS} == {k: model[k] for k in FIELDS}, f"round {i}"
    # concurrent writes, each to its own field of another product: they serialise in the writer
    other = table["ProductId"].iat[5]
    expected = served.product(other)[1]
    for attempt in range(2):
        changes = {field: f"concurrent {attempt} {field}" for field in FIELDS}
        with ThreadPoolExecutor(len(changes) + 1) as pool:
            shot = pool.submit(served.put_photo, other, photos[attempt])  # a photo-only PUT among them
            answers = list(pool.map(lambda kv: served.put_json(other, {kv[0]: kv[1]}), changes.items()))
            answers.append(shot.result())
        assert [a[0] for a in answers] == [200] * (len(changes) + 1), [a[1] for a in answers]
        expected.update(changes)
        assert {k: served.product(other)[1][k] for k in FIELDS} == {k: expected[k] for k in FIELDS}
        assert served.call("GET", f"/products/{other}/image")[1] == photos[attempt]
    # and so does the library, reading the folder afresh
    rec = Recommender.load(index)
    assert {k: rec.product(pid)[k] for k in FIELDS} == {k: model[k] for k in FIELDS}
    assert {k: rec.product(other)[k] for k in FIELDS} == {k: expected[k] for k in FIELDS}


def test_a_client_reads_its_own_adds_and_removals_on_any_worker(served, table, index):
    """20 of 20 reads right after 201 added, and after 200 removed, answer as the write said;
    likewise after the CLI's add and remove against the running server's folder."""
    photo = (IMAGES / table["Image"].iat[45]).read_bytes()
    for i in range(20):
        pid = f"fresh-{i}"
        status, body, _ = served.put_photo(pid, photo)
        assert status == 201, body
        assert served.product(pid)[0] == 200, f"GET after 201, try {i}"
        status, body, _ = served.call("DELETE", f"/products/{pid}", headers=AUTH)
        assert status == 200, body
        assert served.product(pid)[0] == 404, f"GET after DELETE, try {i}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    row = table.iloc[[3]]
    for i in range(3):
        pid = row["ProductId"].iat[0]
        done = subprocess.run([sys.executable, "-m", "lookalike", "-q", "remove", str(index), "--id", pid],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert served.product(pid)[0] == 404, f"GET after `lookalike remove`, try {i}"
        csv = index.parent / "back.csv"
        row.to_csv(csv, index=False)
        done = subprocess.run([sys.executable, "-m", "lookalike", "-q", "add", str(index), str(csv), "--images",
                               str(IMAGES)], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert served.product(pid)[0] == 200, f"GET after `lookalike add`, try {i}"


def test_a_search_can_ask_for_the_generation_its_write_made(served, table):
    """Searches switch generations in the background; `Lookalike-Min-Generation` makes the
    worker open the one a write returned before answering."""
    pid = table["ProductId"].iat[0]
    status, body, _ = served.call("GET", f"/products/{pid}/similar?k=3")
    top = json.loads(body)["results"][0]["id"]
    for i in range(10):
        status, body, headers = served.put_json(top, {"ProductTitle": f"searched {i}"})
        assert status == 200, body
        gen = json.loads(body)["generation"]
        status, body, _ = served.call("GET", f"/products/{pid}/similar?k=3",
                                      headers={"Lookalike-Min-Generation": str(gen)})
        assert status == 200 and json.loads(body)["results"][0]["ProductTitle"] == f"searched {i}"
    status, body, _ = served.call("GET", f"/products/{pid}/similar", headers={"Lookalike-Min-Generation": "x"})
    assert status == 422


# -- conditional writes -----------------------------------------------------------------
def test_if_match_makes_a_write_conditional(client, table):
    pid = table["ProductId"].iat[1]
    first = client.get(f"/products/{pid}")
    tag = first.headers["etag"]
    assert client.get(f"/products/{pid}", headers={"If-None-Match": tag}).status_code == 304
    changed = client.put(f"/products/{pid}", headers={**AUTH, "If-Match": tag}, json={"Colour": "Teal"})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    stale = client.put(f"/products/{pid}", headers={**AUTH, "If-Match": tag}, json={"Colour": "Red"})
    assert stale.status_code == 412 and "changed since" in stale.json()["detail"]
    assert client.get(f"/products/{pid}").json()["Colour"] == "Teal"
    assert client.delete(f"/products/{pid}", headers={**AUTH, "If-Match": tag}).status_code == 412
    assert client.get(f"/products/{pid}").status_code == 200
    assert client.put("/products/nope", headers={**AUTH, "If-Match": "*"}, json={"Colour": "Red"}).status_code == 412
    now = client.get(f"/products/{pid}").headers["etag"]
    assert now == changed.headers["etag"]
    assert client.delete(f"/products/{pid}", headers={**AUTH, "If-Match": now}).status_code == 200
    assert client.get(f"/products/{pid}").status_code == 404


def test_library_writes_merge_with_the_product_as_committed(index, table):
    """`Index.upsert_uploads` merges each write with the stored product under the lock: a
    write built from a stale view changes only the fields it names."""
    from lookalike import Index
    from lookalike.writing.writer import Upload

    ix = Index.open(index)
    pid = table["ProductId"].iat[4]
    ix.upsert_uploads([Upload(pid, {"Colour": "Teal"})])
    report = ix.upsert_uploads([Upload(pid, {"ProductTitle": "renamed"})])  # knows nothing of Teal
    got = Recommender.load(index).product(pid)
    assert got["Colour"] == "Teal" and got["ProductTitle"] == "renamed"
    assert report.versions[pid] == Recommender.load(index).etag(pid)
    stale = ix.upsert_uploads([Upload(pid, {"Colour": "Red"}, if_match='"not-the-tag"')])
    assert [(c.status, c.id) for c in stale.changes] == [("conflict", pid)]
    assert stale.generation == report.generation  # nothing committed
    assert ix.remove([pid], if_match={pid: '"stale"'}).changes[0].status == "conflict"


# -- bounds -------------------------------------------------------------------------------
def test_deeply_nested_json_is_422_on_every_route(client, table):
    deep = b"[" * 2000 + b"]" * 2000
    pid = table["ProductId"].iat[0]
    put = client.put(f"/products/{pid}", headers={**AUTH, "Content-Type": "application/json"}, content=deep)
    assert put.status_code == 422 and "nested" in put.json()["detail"]
    obj = b'{"a":' * 2000 + b"1" + b"}" * 2000
    put = client.put(f"/products/{pid}", headers={**AUTH, "Content-Type": "application/json"}, content=obj)
    assert put.status_code == 422
    post = client.post("/similar", headers={"Content-Type": "application/json"}, content=deep)
    assert post.status_code == 422


def test_a_json_write_is_at_most_64_kib(client, table):
    pid = table["ProductId"].iat[0]
    resp = client.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "x" * (70 * 1024)})
    assert resp.status_code == 413 and "65,536" in resp.json()["detail"]
    assert client.get(f"/products/{pid}").json()["ProductTitle"] != "x" * (70 * 1024)


# -- the machine's faults: 503 + Retry-After, no local path ------------------------------
def _fault_answer(resp, index: Path) -> None:
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["retry-after"]) > 0
    detail = resp.json()["detail"]
    assert "\n" not in detail and str(index) not in detail and "/" not in detail, detail


def test_a_lock_held_elsewhere_is_a_503_after_one_bounded_wait(index, encoder, table, monkeypatch):
    import lookalike.server.writer as sw

    monkeypatch.setattr(sw, "LOCK_WAIT_S", 2.0)
    app = create_app(Recommender.load(index, encoder=encoder), write_token=TOKEN)
    pid = table["ProductId"].iat[0]
    fd = os.open(index / "LOCK", os.O_RDWR)
    try:
        with TestClient(app) as c:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another process's writer
            t0 = time.monotonic()
            resp = c.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "blocked"})
            waited = time.monotonic() - t0
            _fault_answer(resp, index)
            assert "another process" in resp.json()["detail"]
            assert waited < 2.0 * 2, f"the wait ran {waited:.1f} s: more than once"
            fcntl.flock(fd, fcntl.LOCK_UN)
            assert c.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "free"}).status_code == 200
    finally:
        os.close(fd)


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_a_503_and_the_previous_generation_stays(built, tmp_path, encoder, table):
    mount = tmp_path / "small"
    mount.mkdir()
    size = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + (4 << 20)}", "tmpfs", str(mount)], check=True)
    try:
        index = mount / "index"
        shutil.copytree(built, index)
        filler = mount / "filler"
        with open(filler, "wb") as f:  # fill what is left
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:
                pass
        app = create_app(Recommender.load(index, encoder=encoder), write_token=TOKEN)
        photo = (IMAGES / table["Image"].iat[60]).read_bytes()
        with TestClient(app) as c:
            before = c.get("/health").json()["generation"]
            resp = c.put("/products/big-1", headers=AUTH, files={"image": ("p.jpg", photo, "image/jpeg")})
            _fault_answer(resp, index)
            assert Recommender.load(index).generation == before  # the previous generation, usable
            assert c.get(f"/products/{table['ProductId'].iat[0]}/similar").status_code == 200
            filler.unlink()
            resp = c.put("/products/big-1", headers=AUTH, files={"image": ("p.jpg", photo, "image/jpeg")})
            assert resp.status_code == 201, resp.text
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.skipif(not ROOT, reason="a read-only bind mount needs root")
def test_a_read_only_index_is_a_503_over_http_and_one_line_exit_1_in_the_cli(index, tmp_path, encoder, table):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", str(index), str(ro)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True)
        app = create_app(Recommender.load(ro, encoder=encoder), write_token=TOKEN)
        pid = table["ProductId"].iat[0]
        with TestClient(app) as c:
            _fault_answer(c.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "ro"}), ro)
            _fault_answer(c.delete(f"/products/{pid}", headers=AUTH), ro)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
        done = subprocess.run([sys.executable, "-m", "lookalike", "remove", str(ro), "--id", pid], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Read-only file system" in lines[0], done.stderr
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_milvus_lite_served_with_writes_sees_them_at_once(tmp_path, encoder, table):
    """One process owns a Milvus Lite `.db`: the server writes from a thread of its own, and
    its searches find what it wrote (they used to appear only after a restart)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    out = tmp_path / "index"
    table.iloc[:20].to_csv(tmp_path / "c.csv", index=False)
    build(tmp_path / "c.csv", out, images=IMAGES, encoder=encoder, show_progress_bar=False, backend="milvus",
          milvus_uri=str(tmp_path / "m.db"))
    app = create_app(Recommender.load(out, encoder=encoder), write_token=TOKEN)
    photo = (IMAGES / table["Image"].iat[70]).read_bytes()
    with TestClient(app) as c:
        resp = c.put("/products/lite-1", headers=AUTH, files={"image": ("p.jpg", photo, "image/jpeg")},
                     data={"ProductTitle": "written through the server"})
        assert resp.status_code == 201, resp.text
        res = c.post("/similar", files={"image": ("q.jpg", photo, "image/jpeg")}, params={"k": 1})
        assert res.status_code == 200 and res.json()["results"][0]["id"] == "lite-1"
        pid = table["ProductId"].iat[0]
        assert c.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "renamed in lite"}).status_code == 200
        near = c.get(f"/products/{table['ProductId'].iat[1]}/similar", params={"k": 20}).json()["results"]
        assert {r["id"]: r["ProductTitle"] for r in near}.get(pid) == "renamed in lite"
        assert c.delete("/products/lite-1", headers=AUTH).status_code == 200
        res = c.post("/similar", files={"image": ("q.jpg", photo, "image/jpeg")}, params={"k": 1})
        assert res.json()["results"][0]["id"] != "lite-1"


