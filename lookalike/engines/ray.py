"""The ray engine: the photo stage of a build on Ray Data actors (extra ``ray``).

The driver (this process) exports the model once, then ships only small things: the
encoder's :class:`~lookalike.encoders.EncoderSettings`, the exported model file (one object
in Ray's object store) and blocks of ``(row, photo path)`` pairs. Each actor makes its own
encoder from the settings, then reads, decodes, describes (colour, dHash, SHA-1) and embeds
its batches; a photo that can't be used comes back as a row with its reason, like the local
engine's. Results stream back to the driver, which advances the progress bar per batch and
checks that every row came back exactly once.

Photo URLs are fetched on Ray too (:meth:`RayEngine.fetch`, a stage before the photo stage,
so that a ``--update`` knows which photos are unchanged before it embeds): Ray tasks in the
worker processes, at most ``per_host`` at once, each with chunks of URLs, the
:class:`~lookalike.config.FetchSettings` (its share of the concurrency and of the per-host
bound: all together keep to them) and the photo cache folder. Each writes photo files there
(:class:`~lookalike.reading.fetch.PhotoCache` with ``writes_index=False``) and returns each
URL's outcome with its cache entry; the driver merges the entries into the cache's index, so
one process writes it. On a cluster the cache folder must be one every node sees at that path.
(Plain tasks, not a Ray Data stage: a Ray Data actor pool cost 3-5 s more for 97 photos.)

Without an address a private Ray instance is started for the build and stopped after it:
it listens on loopback only, keeps its session files in a temporary folder that is removed
afterwards, and authenticates with a token held in memory (nothing in ``~/.ray``). With an
address (``"auto"``, ``"HOST:6379"`` or ``"ray://HOST:10001"``) the build joins that cluster;
every node needs lookalike installed and the photos at the same paths. A Ray already started
in this process (``ray.init`` by the caller) is used as it is and left running.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import math
import os
import secrets
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from lookalike.config import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, FetchSettings, progress_enabled
from lookalike.encoders import CNNEncoder, Encoder, EncoderSettings, byo, hf
from lookalike.engines.local import Encoded, _read_and_decode, row_problem
from lookalike.errors import LookalikeError, require
from lookalike.reading.catalog import Catalog
from lookalike.reading.images import COLOUR_DIM

if TYPE_CHECKING:
    from lookalike.reading.fetch import Fetched

logger = logging.getLogger(__name__)

__all__ = ["RayEngine", "local_ray", "actor_settings", "RAY_VERSION_TESTED"]

#: the Ray release this engine is tested with (``pip install 'lookalike[ray]'`` pins it)
RAY_VERSION_TESTED = "2.60.0"
#: Ray listens on loopback only where this is "0" (read when Ray computes its node address)
_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: one token per process for the private instances it starts (Ray caches the token it read)
_token: str | None = None


def _ray() -> Any:
    return require("ray", "ray")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make ``ray.init`` pick a loopback node address, so every Ray process binds 127.0.0.1.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import; a Ray imported earlier
    in this process is told through the constant it read it into. The caller checks the
    node address after ``ray.init`` either way.
    """
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray that moved it; the caller's check catches it
        yield
        return
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def local_ray(*, num_cpus: int | None = None) -> Iterator[None]:
    """Run a private Ray instance on this machine for the duration of the block.

    It listens on loopback only (checked: the block is refused otherwise), keeps its session
    files and logs in a temporary folder removed afterwards, authenticates with a token kept
    in this process's environment (not ``~/.ray/auth_token``), has usage stats off and is shut
    down at the end, its processes with it. ``num_cpus``: default, the cores this process may use.
    """
    global _token
    ray = _ray()
    if ray.is_initialized():
        raise LookalikeError("Ray is already running in this process; use it (RayEngine does) or stop it first")
    _token = _token or secrets.token_hex(32)
    env = {_CLUSTER_ENV: "0"}
    if "RAY_USAGE_STATS_ENABLED" not in os.environ:
        env["RAY_USAGE_STATS_ENABLED"] = "0"  # a private instance reports nothing to anyone
    if not any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        # Ray turns token authentication on for a new local instance and takes this token
        # instead of writing one to ~/.ray/auth_token; it sets RAY_AUTH_MODE itself
        env["RAY_AUTH_TOKEN"] = _token
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}  # Ray sets some itself
    tmp = tempfile.mkdtemp(prefix="lookalike-ray-")
    already = _descendants()
    started: set[tuple[int, str]] = set()
    try:
        os.environ.update(env)  # inherited by the Ray processes started below
        with _loopback_only():
            try:
                ray.init(num_cpus=num_cpus or _cpu_count(), include_dashboard=False, _temp_dir=tmp,
                         configure_logging=False, log_to_driver=False)
            except (ConnectionError, RuntimeError) as exc:
                raise LookalikeError(f"could not start a private Ray: {_last_line(exc)}") from exc
        node = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(node).is_loopback:
            raise LookalikeError(f"Ray chose node address {node} instead of a loopback one; refusing to run a "
                                 f"private instance that listens beyond this machine (set {_CLUSTER_ENV}=0 "
                                 "before Ray is imported, or start Ray yourself)")
        logger.info("started a private Ray instance on %s with %s CPUs", node, num_cpus or _cpu_count())
        started |= _descendants() - already  # some are reparented before the end (their parent exits)
        yield
    finally:
        started |= _descendants() - already
        ray.shutdown()  # also after a failed start: it stops what was started
        _reap({p for p in started if _is_rays(p[0], tmp)} | _mentioning(tmp))
        for k in [k for k in os.environ if k.startswith("RAY_") and k not in saved_env]:
            del os.environ[k]
        os.environ.update(saved_env)
        shutil.rmtree(tmp, ignore_errors=True)


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()] if os.path.isdir("/proc") else []


def _stat(pid: int) -> tuple[str, int, str] | None:
    """A process's state, parent and start time (from ``/proc``; None once it is gone). The start
    time tells a reused pid from the process it was."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants() -> set[tuple[int, str]]:
    """This process's live descendants, each as (pid, start time)."""
    parents = {pid: (st[1], st[2]) for pid in _pids() if (st := _stat(pid)) and st[0] != "Z"}
    tree: set[tuple[int, str]] = set()
    todo = [os.getpid()]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and (pid, start) not in tree:
                tree.add((pid, start))
                todo.append(pid)
    return tree


def _is_rays(pid: int, folder: str) -> bool:
    """Whether a process is one of Ray's: a worker (``ray::…``), a program of the ray package, or
    one naming our session folder. Other children of this process (a Milvus Lite server, …)
    started meanwhile are never touched."""
    cmdline = _cmdline(pid)
    return cmdline.startswith("ray::") or f"{os.sep}ray{os.sep}" in cmdline or folder in cmdline


def _mentioning(folder: str) -> set[tuple[int, str]]:
    """Processes whose command line names ``folder``: Ray passes its session folder (inside our
    private temp folder) to the processes it starts, wherever they were reparented to."""
    return {(pid, st[2]) for pid in _pids()
            if pid != os.getpid() and folder in _cmdline(pid) and (st := _stat(pid))}


def _reap(started: set[tuple[int, str]], *, grace: float = 10.0) -> None:
    """Stop what Ray started and did not stop itself: ``ray.shutdown()`` returns before its
    processes have exited, and on a loaded machine a raylet can outlive it by many seconds.
    Wait ``grace`` seconds, then SIGTERM, then SIGKILL, so the block leaves no process behind."""
    deadline = time.monotonic() + grace
    while (left := _still_running(started)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if not left:
            return
        logger.info("Ray left %d process(es) after shutdown; sending %s", len(left), sig.name)
        for pid, _ in left:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while (left := _still_running(started)) and time.monotonic() < deadline:
            time.sleep(0.1)


def _still_running(wanted: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of ``wanted`` still running (not zombies), wherever they were reparented to."""
    return {(pid, start) for pid, start in wanted if (st := _stat(pid)) and st[0] != "Z" and st[2] == start}


def _last_line(exc: BaseException) -> str:
    """The line of a Ray error that names the cause (Ray puts the remote traceback first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _install_model(enc: CNNEncoder, data: bytes) -> None:
    """Put the driver's exported model where ``enc`` looks for it, unless it is there already."""
    path = enc.onnx_path()
    digest = hashlib.sha1(data).hexdigest()
    with contextlib.suppress(OSError):
        if hashlib.sha1(path.read_bytes()).hexdigest() == digest:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    logger.info("installed the driver's model at %s", path)


def actor_settings(enc: Encoder) -> tuple[EncoderSettings, Path | None]:
    """What the actors make their encoders from: ``enc``'s settings with the runtime pinned to
    the one it runs on in this process, and its exported model (``None``: torch), made here once.

    ``runtime="auto"`` is resolved here, by this machine's calibration at this process's thread
    count (:meth:`~lookalike.encoders.EncoderSettings.pinned`): actors left to calibrate for
    themselves, with their share of the CPUs or on other nodes, could choose another runtime and
    give other vectors than this process (the local engine) and the manifest's record."""
    model = enc.prepare()  # type: ignore[attr-defined]  # export once, here, not in every actor
    settings = EncoderSettings.pinned(enc)
    logger.info("ray engine: actors run %s on %s", settings.model, settings.runtime)
    return settings, model


def _own(name: str) -> Any:
    """The module of a model made from the cache by its key (``onnx:``, ``hf:``), else None."""
    return byo if byo.is_onnx_model(name) else hf if hf.is_hf_model(name) else None


def _own_payload(name: str) -> Any:
    """What an actor elsewhere needs to put ``name`` into its own model cache."""
    own = _own(name)
    return own.payload(own.installed(name[len(own.PREFIX):]))


def _install_own(name: str, data: Any) -> None:
    own = _own(name)
    own.install_payload(name, *data) if own is byo else own.install_payload(name, data)


class _Embed:
    """One Ray Data actor: its own encoder, loaded once; reads, decodes and embeds batches."""

    def __init__(self, settings: EncoderSettings, model: Any, threads: int) -> None:
        data = None if model is None else _ray().get(model)
        if _own(settings.model) is not None and data is not None:  # made from its name: install it first
            _install_own(settings.model, data)
            self.enc = settings.make(threads=threads)
        else:
            self.enc = settings.make(threads=threads)
            if data is not None:
                _install_model(self.enc, data)
        self.threads = threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pre = self.enc.preprocess
        paths = [Path(str(p)) for p in batch["path"]]
        if self.threads > 1:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="lookalike-decode") as pool:
                results = list(pool.map(lambda p: _read_and_decode(p, pre), paths))
        else:
            results = [_read_and_decode(p, pre) for p in paths]
        n = len(paths)
        raw = np.zeros((n, self.enc.dim), dtype=np.float32)
        colour = np.zeros((n, COLOUR_DIM), dtype=np.float32)
        dhash = np.zeros(n, dtype=np.uint64)
        good = [(k, decoded) for k, (decoded, _, _) in enumerate(results) if decoded is not None]
        for k, decoded in good:
            colour[k], dhash[k] = decoded.colour, decoded.dhash
        if good:
            raw[[k for k, _ in good]] = self.enc.encode_pixels(np.stack([d.pixels for _, d in good]))
        return {
            "j": np.asarray(batch["j"], dtype=np.int64),
            "ok": np.array([r[0] is not None for r in results], dtype=bool),
            "reason": np.array([r[1] for r in results], dtype=object),
            "sha1": np.array([r[2] for r in results], dtype=object),
            "raw": raw,
            "colour": colour,
            "dhash": dhash,
        }


def _fetch_chunk(urls: list[str], folder: str, settings: FetchSettings) -> dict[str, Any]:
    """A Ray task: fetch some photo URLs into the shared photo cache, files only (the driver
    writes the cache's index from the entries returned); each URL's outcome, the entries, the
    process that fetched."""
    from lookalike.reading.fetch import PhotoCache, PhotoFetcher

    fetcher = PhotoFetcher.from_settings(PhotoCache(folder, writes_index=False), settings)
    got = fetcher.fetch(urls, show_progress_bar=False)
    return {"fetched": [(u, str(f.path) if f.path is not None else "", f.reason, f.status, f.nbytes)
                        for u, f in got.items()],
            "entries": fetcher.cache.take_changes(), "pid": os.getpid()}


@contextlib.contextmanager
def _own_progress(ray: Any) -> Iterator[Any]:
    """Ray Data's context with its progress bars off (lookalike shows its own), restored after."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    with contextlib.suppress(Exception):  # and no warning that Ray Data's are off (it warns once)
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
    try:
        yield ctx
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved


class RayEngine:
    """Decode and embed on Ray Data actors: ``actors`` of them (default: one per CPU of the
    cluster), each loading the model once. ``address``: a Ray cluster to join; ``None`` starts
    a private loopback-only instance for each build (:func:`local_ray`), unless this process
    already runs Ray."""

    name = "ray"

    def __init__(self, *, address: str | None = None, actors: int | None = None) -> None:
        _ray()  # fail now, with the install command, rather than after the catalogue is read
        self.address = address
        self.actors = actors

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, actors={self.actors!r})"

    fetches_urls = True  # in the actors (fetch)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Ray for the stages run inside the block: the Ray this process runs already, the
        cluster at ``address``, or a private instance started now and stopped after. A stage
        run inside it (:meth:`fetch`, :meth:`encode`) uses it; an actor that could not start or
        died is one :class:`LookalikeError`."""
        ray = _ray()
        try:
            if ray.is_initialized():
                yield
            elif self.address is None:
                with local_ray():
                    yield
            else:
                try:
                    ray.init(address=self.address, configure_logging=False, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise LookalikeError(f"can't join the Ray cluster at {self.address}: {_last_line(exc)}") from exc
                try:
                    yield
                finally:
                    ray.shutdown()
        except ray.exceptions.RayError as exc:  # one clear line
            raise LookalikeError(f"the ray engine failed: {_last_line(exc)}") from exc

    def fetch(self, urls: list[str], folder: str | os.PathLike, settings: FetchSettings, *,
              show_progress_bar: bool | None = None) -> dict[str, Fetched]:
        """Each photo URL's outcome, fetched by Ray tasks into the photo cache ``folder`` (an absolute
        path every actor sees) with ``settings``, exactly as :class:`~lookalike.reading.fetch.PhotoFetcher`
        fetches here: the same reasons, files and conditional re-fetch. The driver then writes the
        actors' cache entries into the cache's index. A bar counts photos and bytes."""
        urls = list(dict.fromkeys(urls))
        if not urls:
            return {}
        with self.session():
            return self._fetch(urls, Path(folder).absolute(), settings, show_progress_bar)

    def _fetch(self, urls: list[str], folder: Path, settings: FetchSettings,
               show_progress_bar: bool | None) -> dict[str, Fetched]:
        from tqdm.auto import tqdm

        from lookalike.reading.fetch import Fetched, PhotoCache, _size

        ray = _ray()
        m = len(urls)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        # at most per_host tasks at once, each with its share: all together keep to the per-host bound
        n = max(1, min(self.actors or max(1, int(cpus)), settings.per_host, m))
        share = replace(settings, concurrency=max(1, settings.concurrency // n), per_host=max(1, settings.per_host // n))
        size = max(1, min(64, math.ceil(m / (4 * n))))
        chunks = [urls[s:s + size] for s in range(0, m, size)]
        task = ray.remote(num_cpus=min(1.0, cpus / n))(_fetch_chunk)
        logger.info("ray engine: fetching %d photo URLs in %d tasks, %d at once, %d per host each", m, len(chunks), n,
                    share.per_host)
        out: dict[str, Fetched] = {}
        entries: dict[str, dict[str, Any]] = {}
        pids: set[int] = set()
        nbytes = 0
        bar = tqdm(total=m, unit="photo", desc="fetch", disable=not progress_enabled(show_progress_bar))
        todo, running = list(reversed(chunks)), list[Any]()
        try:
            while todo or running:
                while todo and len(running) < n:
                    running.append(task.remote(todo.pop(), str(folder), share))
                done, running = ray.wait(running, num_returns=1)
                got = ray.get(done[0])
                for url, path, reason, status, size_ in got["fetched"]:
                    out[url] = Fetched(url, Path(path) if path else None, reason, status, size_)
                    nbytes += size_
                entries.update(got["entries"])
                pids.add(got["pid"])
                bar.update(len(got["fetched"]))
                bar.set_postfix_str(_size(nbytes), refresh=False)
        finally:
            bar.close()
            PhotoCache(folder).merge(entries)  # what came back is kept, even when the stage failed later
        if set(out) != set(urls):
            raise LookalikeError(f"the ray engine fetched {len(set(urls) - set(out))} photo URLs none; nothing was written")
        logger.info("ray engine: fetched %d photo URLs in Ray worker processes %s (%d unchanged, %d failed, %s)", m,
                    sorted(pids), sum(f.status == "not modified" for f in out.values()),
                    sum(f.path is None for f in out.values()), _size(nbytes))
        return {url: out[url] for url in urls}

    def encode(
        self,
        cat: Catalog,
        positions: list[int],
        enc: Encoder,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
        bar: Any = None,
    ) -> Encoded:
        """Like :func:`~lookalike.engines.local.encode_rows`; ``workers`` is unused (each actor
        decodes with as many threads as it has CPUs)."""
        EncoderSettings.of(enc)  # an encoder the actors can't make again is refused before any work
        m = len(positions)
        if m == 0:
            return Encoded([], np.zeros((0, enc.dim), np.float32), np.zeros((0, COLOUR_DIM), np.float32),
                           np.zeros(0, np.uint64), [], [])
        settings, model = actor_settings(enc)
        with self.session():
            return self._run(cat, positions, enc.dim, settings, model, batch_size, bar)

    def _run(self, cat: Catalog, positions: list[int], dim: int, settings: EncoderSettings, model: Path | None,
             batch_size: int, bar: Any) -> Encoded:
        import pyarrow as pa

        ray = _ray()
        m = len(positions)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actors = self.actors or max(1, int(cpus))
        # whole CPUs per actor where they fit, a share of one where there are more actors than CPUs
        per_actor = max(1.0, float(cpus // actors)) if actors <= cpus else cpus / actors
        # Ray Data gathers blocks up to a whole batch per call: few rows make small batches, so
        # that every actor gets some; else blocks of whole batches, about 4 per actor (balance)
        batch = max(1, min(batch_size, math.ceil(m / actors)))
        per_block = batch * max(1, min(64, math.ceil(m / (batch * actors * 4))))
        paths = [str(Path(cat.image_paths[i]).absolute()) for i in positions]
        blocks = [pa.table({"j": pa.array(range(s, min(s + per_block, m)), pa.int64()),
                            "path": pa.array(paths[s:s + per_block], pa.string())})
                  for s in range(0, m, per_block)]
        logger.info("ray engine: %d photos in %d blocks on %d actors (%g CPUs each) of %g CPUs", m, len(blocks),
                    actors, per_actor, cpus)
        raw = np.zeros((m, dim), dtype=np.float32)
        colour = np.zeros((m, COLOUR_DIM), dtype=np.float32)
        dhash = np.zeros(m, dtype=np.uint64)
        sha1 = [""] * m
        reason = [""] * m
        ok = np.zeros(m, dtype=bool)
        seen = np.zeros(m, dtype=np.int64)
        with _own_progress(ray):
            model_ref = None if model is None else ray.put(
                _own_payload(settings.model) if _own(settings.model) is not None else model.read_bytes())
            ds = ray.data.from_arrow(blocks).map_batches(
                _Embed, batch_size=batch, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=per_actor,
                fn_constructor_kwargs={"settings": settings, "model": model_ref,
                                       "threads": max(1, int(per_actor))},
            )
            for out in ds.iter_batches(batch_format="numpy", batch_size=None):
                j = out["j"]
                np.add.at(seen, j, 1)
                ok[j] = out["ok"]
                raw[j], colour[j], dhash[j] = out["raw"], out["colour"], out["dhash"]
                for k, jj in enumerate(j):
                    sha1[jj], reason[jj] = str(out["sha1"][k]), str(out["reason"][k])
                if bar is not None:
                    bar.update(len(j))
        if (seen != 1).any():  # Ray retries failed tasks; a row must still come back exactly once
            raise LookalikeError(f"the ray engine returned {int((seen == 0).sum())} rows none and "
                                 f"{int((seen > 1).sum())} rows more than once; nothing was written")
        keep = np.flatnonzero(ok)
        problems = [row_problem(cat, positions[j], reason[j]) for j in np.flatnonzero(~ok)]
        return Encoded([positions[j] for j in keep], raw[keep], colour[keep], dhash[keep],
                       [sha1[j] for j in keep], problems)
