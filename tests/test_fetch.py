"""Photo URLs (reading/fetch), against a real HTTP server on 127.0.0.1 started by a fixture."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from lookalike.errors import CatalogError
from lookalike.reading.catalog import load_catalog
from lookalike.reading.fetch import PhotoFetcher

DEMO = Path(__file__).resolve().parents[1] / "lookalike" / "data" / "demo"
PHOTOS = sorted((DEMO / "images").glob("*.jpg"))


class _Shop:
    """What the server serves and what it saw: requests per path, body bytes sent, headers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.sent = 0
        self.headers: list[dict[str, str]] = []
        self.cut_short: list[str] = []  # paths whose body the client stopped reading
        self.photos = {f"/p/{p.name}": p.read_bytes() for p in PHOTOS}
        self.fail_first: dict[str, tuple[int, dict[str, str]]] = {}

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            return self.hits[path]


class _Handler(BaseHTTPRequestHandler):
    shop: _Shop

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if code == 200:  # photo bytes sent (404 and 500 bodies aside)
            with self.shop.lock:
                self.shop.sent += len(body)

    def do_GET(self) -> None:  # noqa: C901 - one branch a case
        shop, path = self.shop, self.path
        n = shop.hit(path)
        with shop.lock:
            shop.headers.append({k.lower(): v for k, v in self.headers.items()})
        if path in shop.photos:
            body = shop.photos[path]
            tag = '"' + hashlib.sha1(body).hexdigest() + '"'
            if self.headers.get("If-None-Match") == tag:
                return self._send(304, headers={"ETag": tag})
            return self._send(200, body, {"Content-Type": "image/jpeg", "ETag": tag, "Set-Cookie": "s=1; Path=/"})
        if path.startswith("/flaky/"):  # 500 first, then the photo
            if n == 1:
                return self._send(500, b"oops")
            return self._send(200, shop.photos["/p/" + path.rsplit("/", 1)[1]], {"Content-Type": "image/jpeg"})
        if path.startswith("/busy/"):  # 429 Retry-After: 1 first
            if n == 1:
                return self._send(429, b"", {"Retry-After": "1"})
            return self._send(200, shop.photos["/p/" + path.rsplit("/", 1)[1]], {"Content-Type": "image/jpeg"})
        if path == "/slow":
            time.sleep(1.5)
            return self._send(200, shop.photos[next(iter(shop.photos))], {"Content-Type": "image/jpeg"})
        if path == "/huge":  # a photo's start, then far more than the limit, no Content-Length
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                self.wfile.write(b"\xff\xd8\xff\xe0" + b"\0" * 60)
                for _ in range(2000):  # 128 MB unless the client hangs up
                    self.wfile.write(b"\0" * (1 << 16))
                    self.wfile.flush()
            except OSError:
                with shop.lock:
                    shop.cut_short.append(path)
            self.close_connection = True
            return None
        if path.startswith("/lm/"):  # Last-Modified only, no ETag
            stamp = "Wed, 21 Oct 2026 07:28:00 GMT"
            if self.headers.get("If-Modified-Since") == stamp:
                return self._send(304)
            return self._send(200, shop.photos["/p/" + path.rsplit("/", 1)[1]],
                              {"Content-Type": "image/jpeg", "Last-Modified": stamp})
        if path == "/liar.jpg":  # labelled a JPEG, an error page inside
            return self._send(200, b"<html><body>Access denied</body></html>", {"Content-Type": "image/jpeg"})
        if path == "/page.html":
            return self._send(200, b"<!doctype html><html><body>not found</body></html>" * 4,
                              {"Content-Type": "text/html"})
        if path.startswith("/loop"):
            return self._send(302, headers={"Location": f"/loop{n}"})
        if path == "/to-file":
            return self._send(302, headers={"Location": "file:///etc/passwd"})
        if path == "/to-photo":
            return self._send(301, headers={"Location": "/p/" + PHOTOS[1].name})
        return self._send(404, b"no")


@pytest.fixture
def shop():
    """A real HTTP server on 127.0.0.1 (port 0) serving the demo photos; stopped and joined after."""
    state = _Shop()
    handler = type("Handler", (_Handler,), {"shop": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="test-shop", daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        assert not thread.is_alive()


def _fetcher(tmp_path: Path, **kw) -> PhotoFetcher:
    kw = {"read_timeout": 5.0, "backoff": 0.01, **kw}
    return PhotoFetcher(tmp_path / "cache", **kw)


def test_200_then_304_fetches_nothing_again(shop, tmp_path):
    urls = [f"{shop.base}/p/{p.name}" for p in PHOTOS[:3]]
    got = _fetcher(tmp_path).fetch(urls, show_progress_bar=False)
    for url, p in zip(urls, PHOTOS[:3]):
        f = got[url]
        assert f.status == "downloaded" and f.reason == ""
        assert f.path.read_bytes() == p.read_bytes()
        assert f.path.name == hashlib.sha1(p.read_bytes()).hexdigest() + ".jpg"
    sent = shop.sent
    again = _fetcher(tmp_path).fetch(urls, show_progress_bar=False)  # a new process: the index on disk
    assert [again[u].status for u in urls] == ["not modified"] * 3
    assert [again[u].path for u in urls] == [got[u].path for u in urls]
    assert shop.sent == sent  # no body sent again
    conditional = [h for h in shop.headers if "if-none-match" in h]
    assert len(conditional) == 3
    # never a credential or a cookie, though the server set one
    assert not any("cookie" in h or "authorization" in h for h in shop.headers)
    assert all(h["user-agent"].startswith("lookalike/") for h in shop.headers)


def test_failures_are_reasons(shop, tmp_path):
    b = shop.base
    urls = {
        "404": f"{b}/missing.jpg",
        "html": f"{b}/page.html",
        "loop": f"{b}/loop",
        "file": f"{b}/to-file",
        "creds": f"http://user:secret@127.0.0.1:{b.rsplit(':', 1)[1]}/p/{PHOTOS[0].name}",
        "redirect": f"{b}/to-photo",
        "liar": f"{b}/liar.jpg",
    }
    got = _fetcher(tmp_path).fetch(urls.values(), show_progress_bar=False)
    reason = {k: got[u].reason for k, u in urls.items()}
    assert reason["404"] == "HTTP 404"
    assert reason["html"] == "not an image (content-type text/html)"
    assert reason["loop"] == "too many redirects (more than 5)"
    assert reason["file"] == "redirect refused: to file:///etc/passwd"
    assert reason["creds"].startswith("URL with credentials refused: http://***@127.0.0.1")
    assert "secret" not in reason["creds"]
    assert reason["liar"] == "not an image (content-type image/jpeg)"  # the bytes decide, not the label
    assert reason["redirect"] == "" and got[urls["redirect"]].path.read_bytes() == PHOTOS[1].read_bytes()
    assert shop.hits.get("/loop") == 1 and sum(v for k, v in shop.hits.items() if k.startswith("/loop")) == 6
    assert not any(k.startswith("/p/") and "@" in k for k in shop.hits)  # the credentials URL was never asked


def test_retries_500_and_429(shop, tmp_path):
    flaky, busy = f"{shop.base}/flaky/{PHOTOS[2].name}", f"{shop.base}/busy/{PHOTOS[3].name}"
    t0 = time.monotonic()
    got = _fetcher(tmp_path).fetch([flaky, busy], show_progress_bar=False)
    assert got[flaky].status == "downloaded" and got[flaky].path.read_bytes() == PHOTOS[2].read_bytes()
    assert got[busy].status == "downloaded" and got[busy].path.read_bytes() == PHOTOS[3].read_bytes()
    assert shop.hits[f"/flaky/{PHOTOS[2].name}"] == 2 and shop.hits[f"/busy/{PHOTOS[3].name}"] == 2
    assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was honoured


def test_retry_after_longer_than_the_cap_gives_up(shop, tmp_path):
    busy = f"{shop.base}/busy/{PHOTOS[3].name}"
    got = _fetcher(tmp_path, max_retry_wait=0.5).fetch([busy], show_progress_bar=False)
    assert got[busy].reason == "HTTP 429 (Retry-After 1 s, more than the 0.5 s waited)"


def test_slow_is_a_timeout(shop, tmp_path):
    url = f"{shop.base}/slow"
    got = _fetcher(tmp_path, read_timeout=0.3, retries=1).fetch([url], show_progress_bar=False)
    assert got[url].reason == "timeout after 0.3 s"
    assert shop.hits["/slow"] == 2  # retried once


def test_huge_stops_at_the_limit(shop, tmp_path):
    url = f"{shop.base}/huge"
    got = _fetcher(tmp_path, max_bytes=1 << 20).fetch([url], show_progress_bar=False)
    assert got[url].reason == "larger than 1 MB"
    for _ in range(50):  # the server notices the hang-up on its next write
        if shop.cut_short:
            break
        time.sleep(0.1)
    assert shop.cut_short == ["/huge"]
    assert not list((tmp_path / "cache").glob(".part-*"))  # nothing half-written left


def test_load_catalog_mixes_files_and_urls(shop, tmp_path):
    local = PHOTOS[0].name
    rows = pd.DataFrame({
        "ProductId": ["a", "b", "c", "d", "e", "f"],
        "Image": [local, f"{shop.base}/p/{PHOTOS[1].name}", f"{shop.base}/missing.jpg", f"{shop.base}/page.html",
                  f"{shop.base}/p/{PHOTOS[2].name}", "nothere.jpg"],
    })
    cat = load_catalog(rows, images=DEMO / "images", photo_cache=tmp_path / "cache")
    assert cat.ids == ["a", "b", "e"]
    assert cat.image_paths[0] == PHOTOS[0].resolve()
    assert cat.image_paths[1].parent == (tmp_path / "cache").resolve()
    assert cat.image_paths[1].read_bytes() == PHOTOS[1].read_bytes()
    assert cat.photo_cache == (tmp_path / "cache").resolve()
    assert [(p.row, p.id, p.reason) for p in cat.problems] == [
        (3, "c", "HTTP 404"), (4, "d", "not an image (content-type text/html)"),
        (6, "f", "photo file not found: nothere.jpg")]


def test_load_catalog_without_urls_fetches_nothing(tmp_path):
    cat = load_catalog(pd.DataFrame({"ProductId": ["a"], "Image": [PHOTOS[0].name]}), images=DEMO / "images",
                       photo_cache=tmp_path / "cache")
    assert cat.photo_cache is None and not (tmp_path / "cache").exists()


def _mixed_table(shop) -> pd.DataFrame:
    """Six products with local photos, six with photo URLs, one URL that is gone."""
    names = [p.name for p in PHOTOS[:12]]
    cells = names[:6] + [f"{shop.base}/p/{n}" for n in names[6:]] + [f"{shop.base}/gone.jpg"]
    return pd.DataFrame({"ProductId": [f"p{i}" for i in range(13)], "Colour": ["Blue"] * 13, "Image": cells})


def test_build_and_sync_from_urls(shop, tmp_path, encoder):
    from lookalike import Recommender, build
    from lookalike.writing.writer import IndexWriter

    table, out, cache = _mixed_table(shop), tmp_path / "index", tmp_path / "cache"
    report = build(table, out, images=DEMO / "images", photo_cache=cache, encoder=encoder, show_progress_bar=False)
    assert report.indexed == 12
    assert [(p.id, p.reason) for p in report.problems] == [("p12", "HTTP 404")]
    rec = Recommender.load(out)
    assert rec.settings.catalog.photo_cache == str(cache.resolve())
    assert rec.image_path("p7").parent == cache.resolve()
    assert len(rec.similar("p7", k=5)) == 5 and len(rec.similar("p0", k=5)) == 5
    try:  # the server serves the fetched photo from the cache folder the manifest records
        from lookalike.server.reads import _open_photo
    except ImportError:
        pass
    else:
        photo, _, media = _open_photo(rec, "p7")
        with photo:
            assert media == "image/jpeg" and photo.read() == PHOTOS[7].read_bytes()

    sent = shop.sent
    shop.headers.clear()
    again = IndexWriter.open(out).sync(table, images=DEMO / "images", show_progress_bar=False)
    assert shop.sent == sent  # every photo URL answered 304: nothing downloaded again
    assert sum("if-none-match" in h for h in shop.headers) == 6
    counts = again.counts()
    assert counts["unchanged"] == 12 and counts["re-embedded"] == counts["added"] == 0

    update = build(table, out, images=DEMO / "images", photo_cache=cache, encoder=encoder, update=True,
                   show_progress_bar=False)
    assert update.reused == 12 and shop.sent == sent

    # a photo changed on the shop's side: only it is downloaded and embedded again
    shop.photos[f"/p/{PHOTOS[8].name}"] = PHOTOS[20].read_bytes()
    changed = IndexWriter.open(out).sync(table, images=DEMO / "images", show_progress_bar=False)
    assert shop.sent == sent + len(PHOTOS[20].read_bytes())
    assert [c.id for c in changed.changes if c.status == "re-embedded"] == ["p8"]


def test_cli_build_and_sync_take_a_photo_cache(shop, tmp_path, capsys, restore_logging):
    from lookalike.cli import main

    csv = tmp_path / "catalog.csv"
    _mixed_table(shop).to_csv(csv, index=False)
    cache = tmp_path / "photos"
    code = main(["-q", "build", str(csv), "--images", str(DEMO / "images"), "--out", str(tmp_path / "index"),
                 "--photo-cache", str(cache), "--runtime", "onnx"])
    out = capsys.readouterr().out
    assert code == 3 and "indexed 12 of 13" in out and "HTTP 404" in out  # exit 3: a row was refused
    assert len(list(cache.glob("*.jpg"))) == 6
    sent = shop.sent
    code = main(["-q", "sync", str(tmp_path / "index"), str(csv), "--images", str(DEMO / "images"),
                 "--photo-cache", str(cache), "--format", "json"])
    assert code == 3 and shop.sent == sent


def test_a_redirected_photo_is_revalidated_too(shop, tmp_path):
    url = f"{shop.base}/to-photo"  # 301 to /p/<photo>, as a CDN's short links do
    first = _fetcher(tmp_path).fetch([url], show_progress_bar=False)[url]
    sent = shop.sent
    again = _fetcher(tmp_path).fetch([url], show_progress_bar=False)[url]
    assert first.status == "downloaded" and again.status == "not modified" and again.path == first.path
    assert shop.sent == sent


def test_no_private_urls_refuses_loopback_and_is_recorded(shop, tmp_path, encoder):
    from lookalike import Recommender, build
    from lookalike.writing.writer import IndexWriter

    url = f"{shop.base}/p/{PHOTOS[1].name}"
    got = _fetcher(tmp_path, private_urls=False).fetch([url], show_progress_bar=False)[url]
    assert got.reason == "private address refused (127.0.0.1 is 127.0.0.1; --no-private-urls)"
    assert not shop.hits  # never asked
    table = pd.DataFrame({"ProductId": ["a", "b"], "Image": [PHOTOS[0].name, url]})
    report = build(table, tmp_path / "index", images=DEMO / "images", photo_cache=tmp_path / "cache",
                   private_urls=False, encoder=encoder, show_progress_bar=False)
    assert report.indexed == 1 and report.problems[0].reason.startswith("private address refused")
    assert Recommender.load(tmp_path / "index").settings.catalog.private_urls is False
    change = IndexWriter.open(tmp_path / "index").upsert(table.iloc[1:], show_progress_bar=False)
    assert change.changes[0].status == "skipped" and change.changes[0].reason.startswith("private address refused")
    assert not shop.hits


def test_nothing_listening_and_bad_urls(tmp_path):
    import socket

    with socket.socket() as s:  # a port just freed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed, bad_port = f"http://127.0.0.1:{port}/x.jpg", "http://127.0.0.1:99999/x.jpg"
    got = _fetcher(tmp_path, retries=1).fetch([closed, bad_port], show_progress_bar=False)
    assert got[closed].reason.startswith("connection failed: ")
    assert got[bad_port].reason == f"not a valid URL: {bad_port}"


def test_last_modified_alone_revalidates(shop, tmp_path):
    url = f"{shop.base}/lm/{PHOTOS[4].name}"
    assert _fetcher(tmp_path).fetch([url], show_progress_bar=False)[url].status == "downloaded"
    sent = shop.sent
    again = _fetcher(tmp_path).fetch([url], show_progress_bar=False)[url]
    assert again.status == "not modified" and again.path.read_bytes() == PHOTOS[4].read_bytes()
    assert shop.sent == sent and shop.headers[-1]["if-modified-since"] == "Wed, 21 Oct 2026 07:28:00 GMT"
    assert "if-none-match" not in shop.headers[-1]


def test_a_catalogue_read_without_fetching_then_fetched_is_the_one_read_fetching(shop, tmp_path):
    """load_catalog(fetch_urls=False) leaves the photo URLs to whoever fetches them (the ray
    engine's actors); with_fetched then gives the catalogue a fetching load_catalog reads."""
    from lookalike.config import FetchSettings

    local = PHOTOS[0].name
    rows = pd.DataFrame({
        "ProductId": ["a", "b", "c", "d", "e"],
        "Image": [f"{local}|{shop.base}/p/{PHOTOS[3].name}", f"{shop.base}/p/{PHOTOS[1].name}",
                  f"{shop.base}/missing.jpg", "nothere.jpg", f"{shop.base}/page.html|{PHOTOS[2].name}"],
    })
    later = load_catalog(rows, images=DEMO / "images", photo_cache=tmp_path / "cache", fetch_urls=False)
    assert not shop.hits  # nothing asked for yet
    assert later.unfetched == [f"{shop.base}/p/{PHOTOS[3].name}", f"{shop.base}/p/{PHOTOS[1].name}",
                               f"{shop.base}/missing.jpg", f"{shop.base}/page.html"]
    assert later.ids == ["a", "e"] and [p.id for p in later.problems] == ["d"]  # URL photos: neither rows nor problems
    assert later.photo_cache == (tmp_path / "cache").resolve() and later.fetch_settings == FetchSettings()

    fetcher = PhotoFetcher.from_settings(later.photo_cache, later.fetch_settings)
    done = later.with_fetched(fetcher.fetch(later.unfetched, show_progress_bar=False))
    now = load_catalog(rows, images=DEMO / "images", photo_cache=tmp_path / "cache")
    assert done.unfetched == [] and done.ids == now.ids == ["a", "a", "b", "e"]
    assert done.image_paths == now.image_paths and done.rows == now.rows and done.refs == now.refs
    assert done.photo_numbers == now.photo_numbers == [0, 1, 0, 1]
    assert done.problems == now.problems and [p.reason for p in now.problems] == [
        "HTTP 404", "photo file not found: nothere.jpg", "not an image (content-type text/html)"]
    pd.testing.assert_frame_equal(done.table, now.table)
    with pytest.raises(CatalogError, match="came back unfetched"):
        later.with_fetched({})


def test_a_cache_that_does_not_write_its_index_hands_its_entries_over(shop, tmp_path):
    """An actor's cache writes photo files, never index.json; the driver merges its entries,
    and the next fetch of those URLs is conditional (304)."""
    from lookalike.reading.fetch import PhotoCache

    urls = [f"{shop.base}/p/{p.name}" for p in PHOTOS[:3]]
    actor = PhotoFetcher(PhotoCache(tmp_path / "cache", writes_index=False), backoff=0.01)
    got = actor.fetch(urls, show_progress_bar=False)
    assert all(got[u].status == "downloaded" for u in urls)
    assert len(list((tmp_path / "cache").glob("*.jpg"))) == 3 and not (tmp_path / "cache" / "index.json").exists()
    changes = actor.cache.take_changes()
    assert sorted(changes) == sorted(urls) and actor.cache.take_changes() == {}
    assert actor.cache.lookup(urls[0]) is not None  # still known to the actor's own cache
    PhotoCache(tmp_path / "cache").merge(changes)  # the driver: the one writer of the index
    sent = shop.sent
    again = _fetcher(tmp_path).fetch(urls, show_progress_bar=False)
    assert all(again[u].status == "not modified" and again[u].path == got[u].path for u in urls)
    assert shop.sent == sent


def test_fetch_settings_are_the_fetchers(tmp_path):
    from lookalike.config import FetchSettings

    settings = FetchSettings(concurrency=3, per_host=2, read_timeout=7.0, max_bytes=1000, private_urls=False)
    fetcher = PhotoFetcher.from_settings(tmp_path / "c", settings)
    assert fetcher.settings == settings
    assert (fetcher.settings.per_host, fetcher.settings.max_bytes, fetcher.settings.private_urls) == (2, 1000, False)
    assert PhotoFetcher(tmp_path / "c").settings == FetchSettings()
    with pytest.raises(ValueError, match="per_host"):
        FetchSettings(per_host=0)


def test_the_local_engine_fetches_what_a_catalogue_left_unfetched(shop, tmp_path, encoder):
    """build() given a catalogue read with fetch_urls=False: the local engine fetches its URLs
    here (LocalEngine.fetch), into the catalogue's cache, and indexes what a fetching read does."""
    from lookalike import build
    from lookalike.folder.store import Store

    table = _mixed_table(shop)
    later = load_catalog(table, images=DEMO / "images", photo_cache=tmp_path / "cache", fetch_urls=False)
    assert len(later.unfetched) == 7 and not shop.hits
    report = build(later, tmp_path / "index", encoder=encoder, show_progress_bar=False)
    assert report.indexed == 12 and [(p.id, p.reason) for p in report.problems] == [("p12", "HTTP 404")]
    assert len(list((tmp_path / "cache").glob("*.jpg"))) == 6 and (tmp_path / "cache" / "index.json").is_file()
    assert Store(tmp_path / "index").snapshot().settings.catalog.photo_cache == str((tmp_path / "cache").resolve())
