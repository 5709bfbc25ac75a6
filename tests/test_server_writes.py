"""Writes over HTTP: PUT and DELETE /products/{id}, bearer tokens, every worker following."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from lookalike import Recommender, build, demo_catalog  # noqa: E402
from lookalike.errors import InvalidQueryError  # noqa: E402
from lookalike.server import create_app  # noqa: E402
from lookalike.server.edge import load_token  # noqa: E402

DEMO = demo_catalog()
IMAGES = DEMO.parent / "images"
TOKEN = "s3cret-write-token-0123456789"
READ = "another-read-token-9876543210"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(DEMO, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder, table) -> Path:
    """The first 30 demo products; each test writes to its own copy."""
    out = tmp_path_factory.mktemp("writes") / "index"
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


def _put_photo(client, pid: str, photo: Path, headers=None, **fields):
    return client.put(f"/products/{pid}", headers=AUTH if headers is None else headers,
                      files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, data=fields)


def test_put_a_new_product_with_its_photo(client, table, index):
    new = table.iloc[40]
    before = client.get("/health").json()["generation"]
    resp = _put_photo(client, "new-1", IMAGES / new["Image"], Gender=new["Gender"], ProductTitle="brand new")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body == {"id": "new-1", "status": "added", "generation": before + 1, "etag": resp.headers["etag"]}
    assert resp.headers["lookalike-generation"] == str(before + 1)
    read = client.get("/products/new-1")
    assert read.headers["etag"] == body["etag"]  # the version the write made is the one read
    got = read.json()
    assert got["ProductTitle"] == "brand new" and got["Gender"] == new["Gender"] and got["Colour"] == ""
    # searchable at once, by its own photo and from similar products
    res = client.post("/similar", files={"image": ("q.jpg", (IMAGES / new["Image"]).read_bytes(), "image/jpeg")})
    assert res.json()["results"][0]["id"] == "new-1"
    assert client.get("/products/new-1/image").content == (IMAGES / new["Image"]).read_bytes()
    assert client.get("/health").json()["rows"] == 31
    # the photo is kept inside the index folder, content-addressed
    assert any(p.suffix == ".jpg" for p in (index / "photos").iterdir())


def test_put_a_new_photo_of_an_existing_product(client, table):
    pid, other = table["ProductId"].iat[0], table.iloc[50]
    title = client.get(f"/products/{pid}").json()["ProductTitle"]
    resp = _put_photo(client, pid, IMAGES / other["Image"])
    assert resp.status_code == 200 and resp.json()["status"] == "re-embedded"
    assert client.get(f"/products/{pid}").json()["ProductTitle"] == title  # unchanged columns kept
    res = client.post("/similar", files={"image": ("q.jpg", (IMAGES / other["Image"]).read_bytes(), "image/jpeg")})
    assert res.json()["results"][0]["id"] == pid


def test_put_json_changes_metadata_only(client, table, index):
    pid = table["ProductId"].iat[3]
    vector_before = Recommender.load(index).vectors[Recommender.load(index).row(pid)].copy()
    resp = client.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "renamed", "Colour": "Teal"})
    assert resp.status_code == 200 and resp.json()["status"] == "metadata"
    got = client.get(f"/products/{pid}").json()
    assert got["ProductTitle"] == "renamed" and got["Colour"] == "Teal"
    assert got["Image"] == table["Image"].iat[3]
    rec = Recommender.load(index)
    assert (rec.vectors[rec.row(pid)] == vector_before).all()  # the stored vector, reused
    again = client.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "renamed"})
    assert again.json()["status"] == "unchanged"


@pytest.mark.parametrize("body,status,words", [
    ({"NoSuchColumn": "x"}, 422, "columns not in the index: NoSuchColumn"),
    ({"ProductTitle": ["a"]}, 422, "must be text"),
    ([], 422, "JSON object"),
])
def test_put_json_refusals(client, table, body, status, words):
    resp = client.put(f"/products/{table['ProductId'].iat[0]}", headers=AUTH, json=body)
    assert resp.status_code == status and words in resp.json()["detail"]


def test_put_json_for_an_unknown_product_is_404(client):
    resp = client.put("/products/nope", headers=AUTH, json={"ProductTitle": "x"})
    assert resp.status_code == 404 and "unknown product id: nope" in resp.json()["detail"]


def test_put_refuses_what_is_not_a_photo(client, tmp_path, index):
    gen = client.get("/health").json()["generation"]
    resp = client.put("/products/x", headers=AUTH, files={"image": ("a.jpg", b"not a photo at all", "image/jpeg")})
    assert resp.status_code == 415
    resp = client.put("/products/x", headers=AUTH, files={"other": ("a.txt", b"hello", "text/plain")})
    assert resp.status_code == 422 and "'image'" in resp.json()["detail"]
    resp = client.put("/products/x", headers=AUTH, content=b"hello", params={},
                      )
    assert resp.status_code == 415
    assert client.get("/health").json()["generation"] == gen
    assert not (index / "photos").exists() or not list((index / "photos").iterdir())


def test_put_over_the_size_limit_is_413(index, encoder, table):
    app = create_app(Recommender.load(index, encoder=encoder), write_token=TOKEN, max_upload_bytes=10_000)
    with TestClient(app) as c:
        resp = c.put("/products/big", headers=AUTH, files={"image": ("a.jpg", b"\xff\xd8" + bytes(40_000), "image/jpeg")})
        assert resp.status_code == 413 and "over the limit of 10,000 bytes" in resp.json()["detail"]


def test_delete(client, table):
    pid = table["ProductId"].iat[5]
    resp = client.delete(f"/products/{pid}", headers=AUTH)
    assert resp.status_code == 200 and resp.json()["status"] == "removed"
    assert client.get(f"/products/{pid}").status_code == 404
    assert pid not in [r["id"] for r in client.get(f"/products/{table['ProductId'].iat[6]}/similar?k=29").json()[
        "results"]]
    assert client.delete(f"/products/{pid}", headers=AUTH).status_code == 404


# -- tokens -----------------------------------------------------------------------------
def test_writes_need_the_token(client, table):
    pid = table["ProductId"].iat[0]
    resp = client.delete(f"/products/{pid}")
    assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
    assert client.delete(f"/products/{pid}", headers={"Authorization": "Bearer wrong-token-value"}).status_code == 403
    assert client.delete(f"/products/{pid}", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.put(f"/products/{pid}", json={"ProductTitle": "x"}).status_code == 401
    assert client.get(f"/products/{pid}").status_code == 200  # reads stay open


def test_writes_are_off_without_a_token(index, encoder, table):
    with TestClient(create_app(Recommender.load(index, encoder=encoder))) as c:
        resp = c.delete(f"/products/{table['ProductId'].iat[0]}", headers=AUTH)
        assert resp.status_code == 403 and "writes are off" in resp.json()["detail"]
        assert c.get("/health").json()["writes"] is False


def test_read_token_guards_reads_but_health(index, encoder, table):
    app = create_app(Recommender.load(index, encoder=encoder), write_token=TOKEN, read_token=READ)
    pid = table["ProductId"].iat[0]
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        for path in (f"/products/{pid}", f"/products/{pid}/similar", f"/products/{pid}/image"):
            assert c.get(path).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer not-the-read-token"}).status_code == 403
            assert c.get(path, headers={"Authorization": f"Bearer {READ}"}).status_code == 200
        assert c.post("/similar", json={"ids": [pid]}).status_code == 401


def test_tokens_are_never_logged(client, table, caplog):
    with caplog.at_level(logging.DEBUG):
        client.delete(f"/products/{table['ProductId'].iat[7]}", headers={"Authorization": "Bearer wrong-token-value"})
        client.put(f"/products/{table['ProductId'].iat[7]}", headers=AUTH, json={"ProductTitle": "y"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in text and "wrong-token-value" not in text


def test_load_token(tmp_path, monkeypatch):
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert load_token(tmp_path / "t", "X_TOKEN") == TOKEN
    (tmp_path / "short").write_text("abc")
    with pytest.raises(InvalidQueryError, match="at least 16"):
        load_token(tmp_path / "short", "X_TOKEN")
    with pytest.raises(InvalidQueryError, match="can't read"):
        load_token(tmp_path / "missing", "X_TOKEN")
    monkeypatch.delenv("X_TOKEN", raising=False)
    assert load_token(None, "X_TOKEN") is None
    monkeypatch.setenv("X_TOKEN", READ)
    assert load_token(None, "X_TOKEN") == READ


# -- every worker of `lookalike serve` sees a change within a second -------------------------
def test_a_change_is_visible_on_every_worker_within_a_second(index, tmp_path, table):
    import http.client
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN)
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "lookalike", "serve", str(index), "--port", str(port),
                             "--workers", "2", "--write-token-file", str(tmp_path / "token")],
                            stdout=log, stderr=subprocess.STDOUT)

    def call(method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a new connection: any worker
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if call("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        for _ in range(20):  # both workers have loaded generation 1
            assert call("GET", f"/products/{table['ProductId'].iat[0]}")[0] == 200
        pid = table["ProductId"].iat[1]
        status, body = call("PUT", f"/products/{pid}", json.dumps({"ProductTitle": "seen everywhere"}).encode(),
                            {**AUTH, "Content-Type": "application/json"})
        assert status == 200, body
        acked = time.monotonic()
        # each worker switches to the new generation in the background, milliseconds after its
        # next request notices it: every answer from 1 s after the acknowledgement on is new
        last_stale, fresh_in_a_row = None, 0
        while fresh_in_a_row < 40:
            title = json.loads(call("GET", f"/products/{pid}")[1])["ProductTitle"]
            if title == "seen everywhere":
                fresh_in_a_row += 1
            else:
                last_stale, fresh_in_a_row = time.monotonic(), 0
            assert time.monotonic() - acked < 10
        assert last_stale is None or last_stale - acked < 1.0
        status, _ = call("DELETE", f"/products/{pid}", headers=AUTH)
        assert status == 200
        time.sleep(1.0)
        assert {call("GET", f"/products/{pid}")[0] for _ in range(20)} == {404}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_similar_etag_and_cache_follow_the_generation(client, table):
    """An answer is revalidated for free while the index is unchanged (304, no search), and a
    change gives new answers at once: the cache and the ETag are keyed by the generation."""
    pid = table["ProductId"].iat[0]
    first = client.get(f"/products/{pid}/similar", params={"k": 3})
    tag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    again = client.get(f"/products/{pid}/similar", params={"k": 3}, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    other = client.get(f"/products/{pid}/similar", params={"k": 4}, headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag
    top = first.json()["results"][0]["id"]
    assert client.put(f"/products/{top}", headers=AUTH, json={"ProductTitle": "changed since"}).status_code == 200
    after = client.get(f"/products/{pid}/similar", params={"k": 3}, headers={"If-None-Match": tag})
    assert after.status_code == 200 and after.headers["etag"] != tag
    assert after.json()["results"][0]["ProductTitle"] == "changed since"


# -- the writer process: group commit ------------------------------------------------------
def _in_writer(index: Path, work):
    """Run ``await work(writer)`` against a started WriterProcess, closing it afterwards."""
    import asyncio

    from lookalike.server.writer import WriterProcess

    writer = WriterProcess(index)

    async def main():
        await asyncio.wrap_future(writer.start())
        return await work(writer)

    try:
        return asyncio.run(main())
    finally:
        writer.close()


def test_writes_that_wait_together_are_committed_as_one_generation(index, table):
    """Group commit: writes queued while the writer process works share one generation, and
    each gets the outcome of its own row."""
    import asyncio

    rec = Recommender.load(index)
    before = rec.generation
    ids = rec.ids[:6]
    new = table.iloc[40]

    async def work(writer):
        jobs = [writer.upsert(pid, {**rec.product(pid), "ProductTitle": f"batched {pid}"}) for pid in ids]
        jobs.append(writer.upsert("new-b", {"Gender": new["Gender"]}, (IMAGES / new["Image"]).read_bytes(), ".jpg"))
        return await asyncio.gather(*jobs)

    reports = _in_writer(index, work)
    assert {r.generation for r in reports} == {before + 1}  # all seven in one commit
    status = {c.id: c.status for c in reports[0].changes}
    assert status == {**{pid: "metadata" for pid in ids}, "new-b": "added"}
    after = Recommender.load(index)
    assert after.generation == before + 1
    assert all(after.product(pid)["ProductTitle"] == f"batched {pid}" for pid in ids)
    assert after.similar(image=IMAGES / new["Image"], k=1).ids == ["new-b"]


def test_one_bad_write_does_not_spoil_its_batch(index):
    """A batch refused as a whole is applied one write at a time: the good ones land, the bad
    one gets its own error; a repeated id waits for the next batch, so the later write wins."""
    import asyncio

    from lookalike.errors import CatalogError

    rec = Recommender.load(index)
    a, b = rec.ids[:2]

    async def work(writer):
        return await asyncio.gather(
            writer.upsert(a, {**rec.product(a), "ProductTitle": "first"}),
            writer.upsert(b, {"NoSuchColumn": "x"}),
            writer.upsert(a, {**rec.product(a), "ProductTitle": "second"}),
            writer.remove(b),
            return_exceptions=True)

    first, bad, second, removed = _in_writer(index, work)
    assert isinstance(bad, CatalogError) and "NoSuchColumn" in str(bad)
    assert {c.id: c.status for c in first.changes} == {a: "metadata"}
    assert second.generation > first.generation  # the repeated id went in a later batch
    assert {c.id: c.status for c in removed.changes} == {b: "removed"}
    after = Recommender.load(index)
    assert after.product(a)["ProductTitle"] == "second" and b not in after


def test_the_writer_process_yields_the_cores_to_searches(index, monkeypatch):
    """It runs at a lower priority (WRITER_NICE, or $LOOKALIKE_WRITER_NICE) than its worker."""
    import os

    from lookalike.server.writer import WRITER_NICE

    monkeypatch.delenv("LOOKALIKE_WRITER_NICE", raising=False)

    async def work(writer):
        return [os.getpriority(os.PRIO_PROCESS, pid) for pid in writer._pool._processes]

    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert WRITER_NICE > 0 and _in_writer(index, work) == [min(19, own + WRITER_NICE)]
    monkeypatch.setenv("LOOKALIKE_WRITER_NICE", "0")
    assert _in_writer(index, work) == [own]


def test_a_writer_nice_that_is_not_a_number_is_named_and_the_default_kept(monkeypatch, caplog):
    import logging

    from lookalike.server.writer import WRITER_NICE, writer_nice

    caplog.set_level(logging.WARNING, logger="lookalike")
    monkeypatch.setenv("LOOKALIKE_WRITER_NICE", "low")
    assert writer_nice() == WRITER_NICE
    assert "LOOKALIKE_WRITER_NICE='low' is not a whole number" in caplog.text
    monkeypatch.setenv("LOOKALIKE_WRITER_NICE", " 7 ")
    assert writer_nice() == 7


def test_a_writer_process_that_died_idle_is_replaced_before_the_next_write(index):
    """A writer process killed while idle is found dead before the next write, which a new one
    applies (no 503 for a write that never reached the dead one)."""
    import os
    import signal

    from lookalike.server.edge import Refused

    rec = Recommender.load(index)
    a, b = rec.ids[:2]

    async def work(writer):
        import asyncio

        first = await writer.upsert(a, {**rec.product(a), "ProductTitle": "before the kill"})
        for pid in list(writer._pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # idle: the kill lands before the next write
        try:
            await writer.upsert(b, {**rec.product(b), "ProductTitle": "lost"})
        except Refused as exc:
            refused = exc
        else:
            refused = None
        again = await writer.upsert(b, {**rec.product(b), "ProductTitle": "after the kill"})
        return first, refused, again

    first, refused, again = _in_writer(index, work)
    # it died idle: the write after the kill never reached it, so a new child takes it
    assert refused is None
    assert {c.id: c.status for c in again.changes} == {b: "metadata"}
    after = Recommender.load(index)
    assert after.product(a)["ProductTitle"] == "before the kill"
    assert after.product(b)["ProductTitle"] == "after the kill"


def test_the_writer_process_ends_with_its_worker(index, tmp_path):
    """A worker killed outright (no shutdown) leaves no writer process behind."""
    import os
    import subprocess
    import sys
    import time

    script = (
        "import os, sys\n"
        "from lookalike.server.writer import WriterProcess\n"
        "w = WriterProcess(sys.argv[1]); w.start().result(timeout=120)\n"
        "print(list(w._pool._processes)[0], flush=True)\n"
        "os._exit(0)\n"
    )
    log = tmp_path / "out.txt"
    with open(log, "w") as f:  # a file, not a pipe: a child left alive must not hold up the run
        done = subprocess.run([sys.executable, "-c", script, str(index)], stdout=f, stderr=subprocess.STDOUT,
                              timeout=180)
    assert done.returncode == 0, log.read_text()[-2000:]
    child = int(log.read_text().split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, 9)
    raise AssertionError(f"writer process {child} outlived its parent")


def test_an_app_given_a_path_takes_writes(index):
    """create_app(PATH, write_token=…) loads the index at startup; its writer is made before that
    (it asked the not-yet-loaded index for its back end and failed)."""
    with TestClient(create_app(index, write_token=TOKEN)) as c:
        pid = str(Recommender.load(index).ids[0])
        r = c.put(f"/products/{pid}", headers=AUTH, json={"ProductTitle": "set through an app made from a path"})
        assert r.status_code == 200, r.text
        assert c.get(f"/products/{pid}").json()["ProductTitle"] == "set through an app made from a path"
