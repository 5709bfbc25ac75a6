"""The writer process of a server worker: writes applied through :class:`lookalike.IndexWriter`, with
group commit.

A worker hands its writes to a child process of its own (:class:`WriterProcess`), which commits
the writes that arrive together as one generation: a write's CPU (planning, embedding, Parquet)
then never holds the worker's interpreter lock while its searches wait, and a stream of writes
makes fewer generations for the workers to open (benchmarks/bench_reads_under_writes.py). An
index searched in Milvus Lite is written from a thread of the one serving process instead:
Milvus Lite lets one process open its ``.db``.
"""

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any, Sequence

from lookalike.errors import LookalikeError, StorageError
from lookalike.server.edge import RETRY_AFTER_S, Refused

logger = logging.getLogger(__name__)

__all__ = ["WriterProcess", "writer_nice", "WRITER_NICE", "LOCK_WAIT_S", "MAX_BATCH", "MAX_BATCH_BYTES"]

#: seconds a write waits for the writer lock another process holds (then 503)
LOCK_WAIT_S = 30.0
#: the most writes one worker commits together, and the most photo bytes in them
MAX_BATCH = 16
MAX_BATCH_BYTES = 64 << 20
#: the writer process's nice value (``$LOOKALIKE_WRITER_NICE`` overrides): searches get the cores
#: first, writes take longer under load (benchmarks: read p99 under 10 writes/s 1.63x -> 1.51x of
#: reads alone, write p50 49 -> 55 ms; 10 and more made writes fall behind)
WRITER_NICE = 5


class WriterProcess:
    """One child process that applies a server worker's writes through :class:`lookalike.IndexWriter`,
    committing the writes that queue up meanwhile together (group commit).

    :meth:`start` (the worker's lifespan) spawns it and loads the model there, before the first
    write. :meth:`upsert` and :meth:`remove` queue a write and await its report without holding
    the worker's event loop or interpreter lock. While the child works, new writes wait; the
    next batch then takes all of them (distinct ids, one kind, at most ``MAX_BATCH``) as one
    change: one commit and one generation, so a stream of writes costs the searches one
    generation switch per batch instead of one per write. A batch refused for one of its writes
    (e.g. an unknown column) is applied again one write at a time, so each write gets its own
    answer; a batch that failed for the machine's reasons (:class:`StorageError`: the disk, the
    lock) is not, so no write waits for the lock twice.

    The child ends with the worker: :meth:`close` at shutdown, and a watch on its parent for a
    worker killed outright. A child found dead before a write (killed while idle, out of memory)
    is replaced first, and the write goes to the new one; the writes a child was doing when it
    died answer 503 (committed or not, as a crash leaves them: the store never keeps half a
    change). ``in_process=True`` runs the writes on one thread of this process instead (an index
    in Milvus Lite, whose ``.db`` only one process may open).
    """

    def __init__(self, index_path: str | os.PathLike, *, in_process: bool = False,
                 lock_wait: float | None = None) -> None:
        self.index_path = str(index_path)
        self.in_process = in_process
        #: seconds a write waits for the writer lock (default ``LOCK_WAIT_S``), once
        self.lock_wait = LOCK_WAIT_S if lock_wait is None else lock_wait
        self._pool: Any = None
        self._ready: Any = None
        self._guard = threading.Lock()
        self._queue: list[tuple[str, str, Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    def start(self) -> Any:
        """Start the child (idempotent); returns the future of its warm-up."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        with self._guard:
            if self._pool is not None and not self.in_process and not self._alive():
                logger.warning("the writer process of %s had ended; starting a new one", self.index_path)
                pool, self._pool = self._pool, None
                pool.shutdown(wait=False, cancel_futures=True)
            if self._pool is None:
                if self.in_process:
                    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookalike-writer",
                                                    initializer=_open_index, initargs=(self.index_path, self.lock_wait))
                else:
                    self._pool = ProcessPoolExecutor(
                        max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_start,
                        initargs=(self.index_path, os.getpid(), writer_nice(), self.lock_wait))
                self._ready = self._pool.submit(_child_ready)
            return self._ready

    def _alive(self) -> bool:
        """Whether the child process is still there (``waitpid`` through ``is_alive``: a child
        killed while idle is noticed here, before a write is handed to it)."""
        if getattr(self._pool, "_broken", False):  # the pool's own watcher saw it die
            return False
        processes = getattr(self._pool, "_processes", None) or {}
        return all(p.is_alive() for p in list(processes.values()))

    async def upsert(self, pid: str, fields: dict[str, str], photo: bytes | None = None,
                     suffix: str = ".jpg", *, if_match: str | None = None, more: Sequence[bytes] = ()) -> Any:
        """Add or change one product (``photo`` None: metadata only; ``more``: its other photos),
        merged with the product as committed (see :class:`lookalike.writing.writer.Upload`); its
        batch's report."""
        from lookalike.writing.writer import Upload

        return await self._submit("upsert", pid, Upload(pid, fields, photo, suffix, if_match, tuple(more)))

    async def remove(self, pid: str, *, if_match: str | None = None) -> Any:
        """Remove one product; its batch's report."""
        return await self._submit("remove", pid, (pid, if_match))

    async def steer(self, kind: str, payload: Any) -> Any:
        """Set the query defaults (``kind`` ``"defaults"``: the defaults and a colour weight) or
        change the rules (``"rules"``: rules to add, rules to remove); the new :class:`Steering`.
        One of each kind per batch (they share one key)."""
        return await self._submit(kind, "\x00" + kind, payload)

    async def _submit(self, kind: str, pid: str, payload: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((kind, pid, payload, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            kind, size = self._queue[0][0], 0
            ids: set[str] = set()
            batch: list[Any] = []
            while (self._queue and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES
                   and self._queue[0][0] == kind and self._queue[0][1] not in ids):
                item = self._queue.pop(0)
                ids.add(item[1])
                batch.append(item)
                size += len(item[2].photo or b"") if kind == "upsert" else 0
            try:
                report = await self._run(kind, [item[2] for item in batch])
                outcomes: list[Any] = [report] * len(batch)
            except (Refused, StorageError) as exc:  # the machine, not a write: the same for all
                outcomes = [exc] * len(batch)
            except Exception:  # noqa: BLE001 - one write spoils the batch: each on its own
                outcomes = []
                for item in batch:
                    try:
                        outcomes.append(await self._run(kind, [item[2]]))
                    except Exception as exc:  # noqa: BLE001 - handed to the request that sent it
                        outcomes.append(exc)
            for item, outcome in zip(batch, outcomes):
                if item[3].done():
                    continue  # the client went away
                if isinstance(outcome, BaseException):
                    item[3].set_exception(outcome)
                else:
                    item[3].set_result(outcome)

    async def _run(self, kind: str, payloads: list[Any]) -> Any:
        from concurrent.futures.process import BrokenProcessPool

        self.start()
        try:
            return await asyncio.wrap_future(self._pool.submit(_child_batch, kind, payloads))
        except BrokenProcessPool:
            logger.error("the writer process of %s ended; a new one starts with the next write", self.index_path)
            self.close()
            raise Refused(503, "the write was interrupted (the writer process ended): check the product "
                               "and send it again", {"Retry-After": str(RETRY_AFTER_S)}) from None
        except LookalikeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of the machine, in one line and no path
            logger.error("a write to %s failed: %s: %s", self.index_path, type(exc).__name__, exc)
            raise StorageError(f"the write failed: {type(exc).__name__}: {exc}",
                               f"the write failed ({type(exc).__name__}); nothing was committed") from None

    def close(self) -> None:
        """Stop the child (after the batch it is doing, if any)."""
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


_CHILD: dict[str, Any] = {}


def writer_nice() -> int:
    """The writer process's nice increment: ``$LOOKALIKE_WRITER_NICE`` if it is a whole number
    (a warning names a value that is not), else ``WRITER_NICE``."""
    value = os.environ.get("LOOKALIKE_WRITER_NICE", "").strip()
    if not value:
        return WRITER_NICE
    try:
        return int(value)
    except ValueError:
        logger.warning("LOOKALIKE_WRITER_NICE=%r is not a whole number; the writer process runs at nice +%d",
                       value, WRITER_NICE)
        return WRITER_NICE


def _child_start(index_path: str, parent: int, nice: int, lock_wait: float) -> None:  # pragma: no cover - child
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker stops us
    with contextlib.suppress(OSError):
        os.nice(nice)
    threading.Thread(target=_watch_parent, args=(parent,), name="lookalike-parent-watch", daemon=True).start()
    _open_index(index_path, lock_wait)


def _open_index(index_path: str, lock_wait: float) -> None:
    from lookalike.writing.writer import IndexWriter

    # one thread for the model and one decode: an upload must not take every core from the searches;
    # the lock is waited for once per write (a batch that met a held lock is not retried write by write)
    _CHILD["index"] = IndexWriter(index_path, lock_timeout=lock_wait, threads=1, workers=1)


def _watch_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)  # the worker is gone: nobody waits for our answers


def _child_ready() -> bool:  # pragma: no cover - runs in the child
    import numpy as np

    index = _CHILD["index"]
    try:  # load the model now (one blank photo through it), so the first upload does not wait for it
        encoder = index.encoder(index.store.snapshot())
        side = encoder.preprocess.size
        encoder.encode_pixels(np.zeros((1, side, side, 3), dtype=np.uint8))
    except Exception as exc:  # noqa: BLE001 - a model that can't be had leaves metadata writes working
        logger.warning("photo uploads are unavailable: %s", exc)
    return True


def _child_batch(kind: str, payloads: list[Any]) -> Any:  # pragma: no cover - runs in the child
    index = _CHILD["index"]
    if kind == "defaults":
        (defaults, colour_weight), = payloads
        return index.set_defaults(defaults, colour_weight=colour_weight)
    if kind == "rules":
        (add, remove), = payloads
        return index.change_rules(add=add, remove=remove)
    if kind == "remove":
        return index.remove([pid for pid, _ in payloads],
                            if_match={pid: tag for pid, tag in payloads if tag is not None})
    return index.upsert_uploads(payloads)
