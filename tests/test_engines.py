"""Build engines: the ray engine checked against the local one, the exact reference.

The Ray tests share one private Ray instance (a module fixture, started the way the engine
starts its own) and check while it runs that its processes listen on loopback only, and
after it stops that none of them is left.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import platforms
import pytest

from lookalike import (
    DEFAULT_ENGINE,
    ENGINES,
    InvalidQueryError,
    LookalikeError,
    MissingDependencyError,
    ModelError,
    build,
    demo_catalog,
    get_encoder,
    load_catalog,
)
from lookalike.encoders import EncoderSettings
from lookalike.engines import LocalEngine, get_engine
from lookalike.folder.store import Store

DEMO = demo_catalog()
HAVE_RAY = importlib.util.find_spec("ray") is not None
NO_RAY = "ray is not installed: pip install 'lookalike[ray]'"


@pytest.fixture(scope="module")
def bad_catalog(tmp_path_factory) -> Path:
    """24 real demo products, one photo shared by two of them, and rows whose photo is missing,
    empty, not an image, or (``vanishing.jpg``) there when the catalogue is read but not later."""
    folder = tmp_path_factory.mktemp("engines")
    table = pd.read_csv(DEMO, dtype=str, keep_default_na=False).iloc[:24].reset_index(drop=True)
    (folder / "images").mkdir()
    for name in table["Image"]:
        shutil.copy(DEMO.parent / "images" / name, folder / "images" / name)
    (folder / "images" / "empty.jpg").write_bytes(b"")
    (folder / "images" / "notes.jpg").write_text("not a photo\n")
    shutil.copy(DEMO.parent / "images" / table["Image"][1], folder / "images" / "vanishing.jpg")
    extra = []
    for pid, image in (("bad-missing", "missing.jpg"), ("bad-empty", "empty.jpg"), ("bad-text", "notes.jpg"),
                       ("bad-vanished", "vanishing.jpg"), ("dup-of-first", table["Image"][0])):
        row = table.iloc[0].copy()
        row["ProductId"], row["Image"] = pid, image
        extra.append(row)
    # the bad rows in the middle, so they share batches with good ones
    table = pd.concat([table.iloc[:10], pd.DataFrame(extra), table.iloc[10:]], ignore_index=True)
    table.to_csv(folder / "catalog.csv", index=False)
    return folder / "catalog.csv"


# -- without Ray ----------------------------------------------------------------------------
class _Count:
    def __init__(self) -> None:
        self.n = 0

    def update(self, k: int) -> None:
        self.n += k


def test_workers_that_decode_and_embed_their_own_batches_give_the_streamed_rows(bad_catalog, encoder):
    """An encoder taking two callers (``streams``, as build makes it) has each worker decode and
    embed whole batches; the rows, reports and vectors are those of decode-ahead streaming."""
    from lookalike import get_encoder

    cat = load_catalog(bad_catalog)
    positions = list(range(len(cat.ids)))
    streamed = LocalEngine().encode(cat, positions, encoder, batch_size=8, workers=2)
    side_by_side = get_encoder(streams=2)
    bar = _Count()
    workers = LocalEngine().encode(cat, positions, side_by_side, batch_size=8, workers=2, bar=bar)
    assert workers.positions == streamed.positions and len(workers.positions) == len(positions) - 2
    assert [(p.row, p.id, p.reason) for p in workers.problems] == [(p.row, p.id, p.reason) for p in streamed.problems]
    assert np.abs(workers.raw - streamed.raw).max() <= 1e-5 * np.abs(streamed.raw).max()
    np.testing.assert_array_equal(workers.colour, streamed.colour)
    np.testing.assert_array_equal(workers.dhash, streamed.dhash)
    assert workers.sha1 == streamed.sha1
    assert bar.n == len(positions)



def test_engine_choices_are_checked():
    assert DEFAULT_ENGINE == "local" and set(ENGINES) == {"local", "ray"}
    assert isinstance(get_engine(), LocalEngine)
    with pytest.raises(InvalidQueryError, match="local, ray"):
        get_engine("spark")
    with pytest.raises(InvalidQueryError, match="engine='ray'"):
        get_engine("local", actors=2)
    with pytest.raises(InvalidQueryError, match="engine='ray'"):
        get_engine("local", ray_address="auto")
    with pytest.raises(InvalidQueryError, match="actors"):
        get_engine("ray", actors=0)


def test_ray_engine_without_ray_names_the_extra(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"lookalike\[ray\]"):
        get_engine("ray")
    out = tmp_path / "index"
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[ray\]'"):
        build(DEMO, out, engine="ray", show_progress_bar=False)
    assert not out.exists()  # refused before any work


def test_encoder_settings_travel_and_make_the_same_encoder(encoder):
    settings = EncoderSettings.of(encoder)
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert settings.weights is None  # the model's own weights, found again by each worker
    again = settings.make(threads=1)
    assert (again.name, again.pooling, again.dim, again.preprocess, again.precision, again.onnx_path()) == (
        encoder.name, encoder.pooling, encoder.dim, encoder.preprocess, encoder.precision, encoder.onnx_path())
    with pytest.raises(ModelError, match="get_encoder"):
        EncoderSettings.of(object())


def test_actors_run_the_runtime_the_driver_calibrated(bad_catalog, encoder, tmp_path, monkeypatch):
    """With runtime auto each process that calibrates for itself may choose another runtime: an
    actor's thread count (its share of the CPUs) has a calibration record of its own, measured
    apart on a cold cache, where ONNX Runtime and OpenVINO are often within the 5% margin. The
    settings shipped to the actors name the driver's choice, and an actor made from them gives
    the local engine's vectors (no Ray needed: the actor class is called here)."""
    from lookalike.encoders.calibrate import calibration_path
    from lookalike.engines.ray import _Embed, actor_settings

    monkeypatch.setenv("LOOKALIKE_CALIBRATION_DIR", str(tmp_path))
    driver = get_encoder()  # not the shared one: this one resolves its runtime from the records below
    # the two records disagree, as two cold-cache measurements can: the driver's thread count
    # chose ONNX Runtime, an actor's (1 thread) OpenVINO
    for enc, runtime in ((driver, "onnx"), (EncoderSettings.of(driver).make(threads=1), "openvino")):
        calibration_path(enc).write_text(json.dumps({"runtime": runtime}))
    settings, model = actor_settings(driver)
    assert settings == dataclasses.replace(EncoderSettings.of(driver), runtime="onnx")
    assert driver.engine == "onnx" and model == driver.onnx_path()
    actor = _Embed(settings, None, threads=1)
    assert actor.enc.onnx_path() == model

    cat = load_catalog(bad_catalog)
    positions = [0, 1, 2, 3]
    local = LocalEngine().encode(cat, positions, driver, batch_size=8, workers=2)
    out = actor({"j": np.arange(len(positions)),
                 "path": np.array([str(cat.image_paths[i]) for i in positions], dtype=object)})
    assert out["ok"].all() and actor.enc.engine == driver.engine == "onnx"
    assert np.abs(out["raw"] - local.raw).max() <= 1e-5


def test_cli_ray_options_need_the_ray_engine(tmp_path, capsys):
    from lookalike.cli import main

    assert main(["-q", "build", str(DEMO), "--out", str(tmp_path / "i"), "--actors", "2"]) == 1
    assert "ray engine" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build", str(DEMO), "--out", str(tmp_path / "i"), "--engine", "spark"])


# -- with Ray -------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # zombies are gone
    except (OSError, IndexError):
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def _is_ray(pid: int) -> bool:
    """One of Ray's processes (the tree also holds other children, e.g. a Milvus Lite server)."""
    cmdline = _cmdline(pid)
    return cmdline.startswith("ray::") or "/ray/" in cmdline or "lookalike-ray-" in cmdline


def _process_tree(root: int) -> set[int]:
    """The live descendants of process ``root``."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _alive(int(entry)):
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    tree, todo = set(), [root]
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


def _listeners(pids: set[int]) -> list[tuple[str, str]]:
    """(local address, process) of the TCP sockets that ``pids`` listen on; [] without ss."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and any(f"pid={p}," in fields[5] for p in pids):
            found.append((fields[3], fields[5]))
    return found


def _beyond_loopback(listeners: list[tuple[str, str]]) -> list[tuple[str, str]]:
    bad = []
    for local, proc in listeners:
        host = local.rsplit(":", 1)[0].strip("[]").split("%")[0].removeprefix("::ffff:")
        if host == "*" or not ipaddress.ip_address(host).is_loopback:
            bad.append((local, proc))
    return bad


class _Watch:
    """Notes this process's descendants and the TCP sockets they listen on, every 0.3 s, from
    a thread, for the duration of the block (Ray's actors come and go within a run)."""

    def __init__(self, seen: set[int] | None = None) -> None:
        self.seen = seen if seen is not None else set()
        self.listeners: set[tuple[str, str]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while True:
            self.seen |= _process_tree(os.getpid())
            self.listeners |= set(_listeners(self.seen | {os.getpid()}))
            if self._stop.wait(0.3):
                return

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def saw_actors(self) -> bool:
        return any("MapWorker" in proc for _, proc in self.listeners) or shutil.which("ss") is None


class _Bar:
    n = 0

    def update(self, k: int) -> None:
        self.n += k


@pytest.fixture(scope="module")
def ray_session():
    """One private Ray for the module, started as the engine starts its own. Yields the pids
    of Ray's processes (tests add the actors they see); afterwards none of them may be left,
    nor Ray's session folder, nor a token file in ~/.ray, nor a changed RAY_* variable."""
    import ray  # noqa: F401  (importing Ray sets RAY_CLIENT_MODE; running it must change nothing more)

    from lookalike.engines.ray import local_ray

    token_file = Path.home() / ".ray" / "auth_token"
    had_token = token_file.exists()
    temp_dirs = set(Path(tempfile.gettempdir()).glob("lookalike-ray-*"))
    before = _process_tree(os.getpid())
    ray_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    with local_ray(num_cpus=2):
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" or "RAY_USAGE_STATS_ENABLED" in ray_env
        seen = _process_tree(os.getpid()) - before
        assert seen, "no Ray process started"
        assert set(Path(tempfile.gettempdir()).glob("lookalike-ray-*")) - temp_dirs, "Ray's session folder"
        yield seen
    deadline = time.monotonic() + 10
    while (left := {p for p in seen if _alive(p) and _is_ray(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left after shutdown: {[(p, _cmdline(p)) for p in sorted(left)]}"
    assert not set(Path(tempfile.gettempdir()).glob("lookalike-ray-*")) - temp_dirs, "session folder left"
    assert token_file.exists() == had_token, "Ray wrote an auth token to ~/.ray"
    assert {k: v for k, v in os.environ.items() if k.startswith("RAY_")} == ray_env, "RAY_* variables changed"


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_cli_build_on_its_own_private_ray(bad_catalog, tmp_path, monkeypatch):
    """`lookalike build --engine ray` starts Ray, listens on loopback only, stops it, leaves nothing.
    (Runs before the module's shared Ray starts: tests run in file order.)"""
    import ray

    from lookalike.cli import main

    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_BACKEND_LOG_LEVEL", raising=False)  # the CLI sets it; undo after
    with _Watch() as watch:
        # 3: done, with the bad rows refused
        assert main(["-q", "build", str(bad_catalog), "--out", str(tmp_path / "index"), "--engine", "ray"]) == 3
    assert not ray.is_initialized()
    assert watch.saw_actors(), watch.listeners
    assert not _beyond_loopback(watch.listeners), watch.listeners
    deadline = time.monotonic() + 10
    while (left := {p for p in watch.seen if _alive(p) and _is_ray(p)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left after the build: {sorted(left)}"
    assert Store(tmp_path / "index").snapshot().manifest["build"]["engine"] == "ray"


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_ray_engine_gives_the_local_engines_rows(ray_session, bad_catalog, encoder):
    cat = load_catalog(bad_catalog)
    assert [p.id for p in cat.problems] == ["bad-missing"]  # the catalogue's own check
    positions = list(range(len(cat.ids)))
    vanishing = bad_catalog.parent / "images" / "vanishing.jpg"
    kept = vanishing.read_bytes()
    vanishing.unlink()  # gone between reading the catalogue and encoding
    try:
        local = LocalEngine().encode(cat, positions, encoder, batch_size=8, workers=2)
        bar = _Bar()
        with _Watch(ray_session) as watch:
            remote = get_engine("ray", actors=2).encode(cat, positions, encoder, batch_size=8, bar=bar)
    finally:
        vanishing.write_bytes(kept)

    assert remote.positions == local.positions and len(local.positions) == len(positions) - 3
    assert [(p.row, p.id, p.image, p.reason) for p in remote.problems] == \
        [(p.row, p.id, p.image, p.reason) for p in local.problems]
    assert {p.id: p.reason.split(":")[0] for p in local.problems} == {
        "bad-empty": "empty file", "bad-text": "not an image (unrecognised file format)",
        "bad-vanished": "unreadable file"}
    assert remote.raw.dtype == np.float32 and remote.raw.shape == local.raw.shape
    assert np.abs(remote.raw - local.raw).max() <= 1e-5
    np.testing.assert_array_equal(remote.colour, local.colour)
    np.testing.assert_array_equal(remote.dhash, local.dhash)
    assert remote.sha1 == local.sha1
    assert bar.n == len(positions)  # every row advanced the bar once, failures too
    # while the actors worked, every Ray process listened on loopback only
    assert watch.saw_actors(), watch.listeners
    assert not _beyond_loopback(watch.listeners), watch.listeners


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_build_with_ray_writes_the_local_index(ray_session, bad_catalog, encoder, tmp_path):
    reports = {}
    with _Watch(ray_session):  # its actors too must be gone when the module's Ray stops
        for engine in ("local", "ray"):
            reports[engine] = build(bad_catalog, tmp_path / engine, encoder=encoder, engine=engine, batch_size=8,
                                    show_progress_bar=False)
    assert reports["ray"].indexed == reports["local"].indexed == 26
    assert reports["ray"].problems == reports["local"].problems
    snaps = {e: Store(tmp_path / e).snapshot() for e in reports}
    (v_loc, c_loc, m_loc), (v_ray, c_ray, m_ray) = snaps["local"].dense(), snaps["ray"].dense()
    assert list(m_ray["ProductId"]) == list(m_loc["ProductId"])
    assert np.abs(v_ray - v_loc).max() <= 1e-5
    np.testing.assert_array_equal(c_ray, c_loc)
    np.testing.assert_array_equal(snaps["ray"].dup_exact, snaps["local"].dup_exact)
    np.testing.assert_array_equal(snaps["ray"].dup_near, snaps["local"].dup_near)
    assert reports["ray"].duplicate_groups == reports["local"].duplicate_groups >= 1  # the shared photo
    assert [snaps[e].manifest["build"]["engine"] for e in ("local", "ray")] == ["local", "ray"]
    rep_loc, rep_ray = (pd.read_csv(Store(tmp_path / e).report_path(), dtype=str) for e in ("local", "ray"))
    pd.testing.assert_frame_equal(rep_ray, rep_loc)


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_an_actor_that_cannot_start_is_one_clear_error(ray_session, bad_catalog, encoder, monkeypatch):
    import dataclasses

    import lookalike.engines.ray as ray_engine

    broken = dataclasses.replace(EncoderSettings.of(encoder), weights="/nowhere/weights.pth")
    monkeypatch.setattr(ray_engine.EncoderSettings, "of", classmethod(lambda cls, enc: broken))
    cat = load_catalog(bad_catalog)
    with _Watch(ray_session), pytest.raises(LookalikeError, match="weights file not found: /nowhere/weights.pth"):
        get_engine("ray", actors=1).encode(cat, [0, 1, 2], encoder, batch_size=2)


# -- photo URLs fetched by the actors -------------------------------------------------------
@pytest.fixture
def served_store(store_dir, tmp_path):
    """store-demos' real photos on a loopback HTTP server (``store/…``), a text file named like
    a photo (``notes.jpg``); yields the URL of a path and the (path, status) of each request."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "store").symlink_to(store_dir / "images")
    (root / "notes.jpg").write_text("not a photo\n")
    seen: list[tuple[str, int]] = []
    with platforms.photo_server(root, seen) as url:
        yield url, seen


def _url_table(store_dir: Path, url) -> pd.DataFrame:
    """store-demos' 25 products with their photos as URLs (the first product's as local files),
    a product whose one photo URL is gone (404) and one whose URL serves text."""
    table = pd.read_csv(store_dir / "catalog.csv", dtype=str, keep_default_na=False)
    table["images"] = [cell if i == 0 else "|".join(url(f"store/{ref}") for ref in cell.split("|"))
                       for i, cell in enumerate(table["images"])]
    extra = pd.DataFrame({"product_id": ["gone", "text"], "images": [url("store/nothere.jpg"), url("notes.jpg")]})
    return pd.concat([table.drop(columns=["image"]), extra], ignore_index=True).fillna("")


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_ray_actors_fetch_photo_urls_like_the_driver(ray_session, store_dir, served_store, encoder, tmp_path,
                                                     monkeypatch, caplog):
    """A Ray build fetches the photo URLs in its actors (the driver sends no request), with the
    local engine's reasons, rows and vectors; a second ``--update`` build is all 304s, embeds nothing."""
    import logging

    from lookalike.reading.fetch import PhotoFetcher

    url, seen = served_store
    table = _url_table(store_dir, url)
    kw = dict(images=store_dir / "images", id_column="product_id", image_column="images", encoder=encoder,
              batch_size=8, show_progress_bar=False)
    local = build(table, tmp_path / "local", photo_cache=tmp_path / "cache-local", **kw)
    asked_by_local = len(seen)
    seen.clear()

    attempts: list[str] = []  # photo requests made by this process (the driver)
    real_attempt = PhotoFetcher._attempt
    monkeypatch.setattr(PhotoFetcher, "_attempt", lambda self, client, u: attempts.append(u) or
                        real_attempt(self, client, u))
    caplog.set_level(logging.INFO, logger="lookalike.engines.ray")
    with _Watch(ray_session):
        remote = build(table, tmp_path / "ray", photo_cache=tmp_path / "cache-ray", engine="ray", actors=2, **kw)
    assert not attempts, "the driver fetched photo URLs"
    assert sorted(seen) == sorted((p, 200 if "nothere" not in p else 404) for p, _ in seen) and len(seen) == \
        asked_by_local == 94 + 2  # every URL asked for once, by the actors: 94 photos (3 are local files), 2 bad
    said = [m.group(1) for r in caplog.records if (m := re.search(r"fetched 96 photo URLs in Ray worker processes "
                                                                  r"(\[[\d, ]+\])", r.getMessage()))]
    assert said and os.getpid() not in json.loads(said[0])  # the workers said where they fetched

    assert remote.indexed == local.indexed == 25 and remote.photos == local.photos == 97
    assert [(p.row, p.id, p.image, p.reason) for p in remote.problems] == \
        [(p.row, p.id, p.image, p.reason) for p in local.problems] == [
            (26, "gone", url("store/nothere.jpg"), "HTTP 404"),
            (27, "text", url("notes.jpg"), "not an image (content-type image/jpeg)")]
    snaps = {e: Store(tmp_path / e).snapshot() for e in ("local", "ray")}
    (v_loc, c_loc, m_loc), (v_ray, c_ray, m_ray) = snaps["local"].dense(), snaps["ray"].dense()
    assert list(m_ray["product_id"]) == list(m_loc["product_id"])
    assert np.abs(v_ray - v_loc).max() <= 1e-5
    np.testing.assert_array_equal(c_ray, c_loc)
    rep_loc, rep_ray = (pd.read_csv(Store(tmp_path / e).report_path(), dtype=str) for e in ("local", "ray"))
    pd.testing.assert_frame_equal(rep_ray, rep_loc)
    # the same content-addressed cache, its index written by the driver alone from the actors' entries
    names = {p.name for p in (tmp_path / "cache-local").glob("*.jpg")}
    assert len(names) == 94 and {p.name for p in (tmp_path / "cache-ray").glob("*.jpg")} == names
    index = json.loads((tmp_path / "cache-ray" / "index.json").read_text())["urls"]
    assert len(index) == 94 and all(e["last_modified"] for e in index.values())
    assert snaps["ray"].settings.catalog.photo_cache == str((tmp_path / "cache-ray").resolve())

    seen.clear()
    with _Watch(ray_session):
        again = build(table, tmp_path / "ray", photo_cache=tmp_path / "cache-ray", engine="ray", actors=2,
                      update=True, **kw)
    assert not attempts
    assert sorted(code for p, code in seen if "store/" in p and "nothere" not in p) == [304] * 94
    assert again.reused == again.photos == 97 and again.problems == remote.problems  # nothing embedded again
    assert np.abs(Store(tmp_path / "ray").snapshot().dense()[0] - v_ray).max() == 0

    # a live sync of the Ray-built index fetches in this process, from the cache the driver's index names
    from lookalike.writing.writer import IndexWriter

    seen.clear()
    synced = IndexWriter.open(tmp_path / "ray").sync(table, images=store_dir / "images", show_progress_bar=False)
    assert sorted(code for p, code in seen if "store/" in p and "nothere" not in p) == [304] * 94
    counts = synced.counts()
    assert counts["unchanged"] == 25 and counts["re-embedded"] == counts["added"] == 0


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
def test_cli_layout_build_on_ray_fetches_in_actors_with_the_files_rows(ray_session, store_dir, served_store,
                                                                      tmp_path, monkeypatch, capsys):
    """`build --layout shopify --engine ray`: a platform file of photo URLs, fetched by the actors,
    reported with the file's row numbers, as the local engine's build reports it."""
    from lookalike.cli import main
    from lookalike.reading.fetch import PhotoFetcher

    url, seen = served_store
    products = platforms.store_products(store_dir)[:6]
    products[2] = dataclasses.replace(products[2], photos=(*products[2].photos, "opencart/gone.jpg"))
    export = platforms.write_shopify(tmp_path / "products_export.csv", products, lambda rel: url(f"store/{rel}"))
    for engine in ("local", "ray"):
        if engine == "ray":
            monkeypatch.setattr(PhotoFetcher, "_attempt", lambda *a: pytest.fail("the driver fetched a photo URL"))
        code = main(["-q", "build", "--layout", "shopify", str(export), "--out", str(tmp_path / engine),
                     "--photo-cache", str(tmp_path / f"cache-{engine}"), "--engine", engine, "--batch-size", "8"])
        assert code == 3 and "HTTP 404" in capsys.readouterr().out  # exit 3: a photo was refused
    rep_loc, rep_ray = (pd.read_csv(Store(tmp_path / e).report_path(), dtype=str) for e in ("local", "ray"))
    pd.testing.assert_frame_equal(rep_ray, rep_loc)
    gone = rep_ray[rep_ray["reason"] == "HTTP 404"]
    file_rows = pd.read_csv(export, dtype=str, keep_default_na=False)
    row = int(gone["row"].iloc[0])  # the file's row of the product (table row 3: renumbered after the fetch too)
    assert len(gone) == 1 and row > 3 and file_rows["Handle"][row - 1] == gone["id"].iloc[0] == products[2].id
    (v_loc, _, m_loc), (v_ray, _, m_ray) = (Store(tmp_path / e).snapshot().dense() for e in ("local", "ray"))
    assert list(m_ray["Handle"]) == list(m_loc["Handle"]) and np.abs(v_ray - v_loc).max() <= 1e-5
    assert Store(tmp_path / "ray").snapshot().settings.catalog.layout == "shopify"
