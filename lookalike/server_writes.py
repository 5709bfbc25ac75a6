"""Writes over HTTP (``PUT`` and ``DELETE /products/{id}``) and the bearer tokens that guard them.

Writes are off unless the app is given a write token; with one, a write needs
``Authorization: Bearer <token>`` (401 without it, 403 with another). Tokens are compared in
constant time and never logged. A read token, when given, guards every read endpoint the same
way (``/health`` stays open for load balancers). Every write goes through
:class:`lookalike.Index`, which serialises writers across processes and commits one generation
per change; every server worker follows the new generation on its next request.

A worker hands its writes to a child process of its own (:class:`WriterProcess`), which commits
the writes that arrive together as one generation: a write's CPU (planning, embedding, Parquet)
then never holds the worker's interpreter lock while its searches wait, and a stream of writes
makes fewer generations for the workers to open (benchmarks/bench_reads_under_writes.py). An
index searched in Milvus Lite is written from a thread of the one serving process instead:
Milvus Lite lets one process open its ``.db``.

What a write guarantees (docs/server.md): a partial write is merged with the product as the
index holds it when the write commits, under the writer lock, so writes to one product always
compose; its answer names the generation that holds it and the product's new ``ETag``; a
``PUT``/``DELETE`` with ``If-Match`` answers 412 when the product changed since that version;
the machine's faults (a full or read-only disk, the lock held elsewhere) answer 503 with
``Retry-After``, naming no local path.
"""


import asyncio
import contextlib
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from lookalike.errors import ImageError, InvalidQueryError, LookalikeError, StorageError, UnknownProductError

logger = logging.getLogger(__name__)

__all__ = ["load_token", "token_guard", "add_write_routes", "WriterProcess", "WRITE_TOKEN_ENV", "READ_TOKEN_ENV"]

WRITE_TOKEN_ENV = "LOOKALIKE_WRITE_TOKEN"
READ_TOKEN_ENV = "LOOKALIKE_READ_TOKEN"
#: the shortest token accepted: a guessable token is no guard
MIN_TOKEN_LENGTH = 16
#: metadata fields one write may carry
MAX_FIELDS = 64
#: the largest JSON body, of a search or a metadata write (a product's few fields need far less)
MAX_JSON_BYTES = 64 * 1024
#: seconds a client is told to wait (``Retry-After``) after a 503 of the write path
RETRY_AFTER_S = 5
#: seconds a write waits for the writer lock another process holds (then 503)
LOCK_WAIT_S = 30.0
#: the most writes one worker commits together, and the most photo bytes in them
MAX_BATCH = 16
MAX_BATCH_BYTES = 64 << 20
#: the writer process's nice value (``$LOOKALIKE_WRITER_NICE`` overrides): searches get the cores
#: first, writes take longer under load (benchmarks: read p99 under 10 writes/s 1.63x -> 1.51x of
#: reads alone, write p50 49 -> 55 ms; 10 and more made writes fall behind)
WRITER_NICE = 5


def load_token(path: str | os.PathLike | None, env: str) -> str | None:
    """A token from a file (first line) or, without one, from the environment variable ``env``."""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidQueryError(f"can't read the token file {path}: {exc.strerror or exc}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        where = f"the token file {path}"
    else:
        token = os.environ.get(env, "").strip()
        if not token:
            return None
        where = f"${env}"
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise InvalidQueryError(f"{where} must hold one token of at least {MIN_TOKEN_LENGTH} characters, no spaces")
    return token


class Refused(Exception):
    """An HTTP-level refusal: status, one-line detail, extra headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def check_bearer(authorization: str | None, token: str, realm: str) -> None:
    """401 without credentials, 403 with wrong ones; constant-time comparison."""
    challenge = {"WWW-Authenticate": f'Bearer realm="{realm}"'}
    if not authorization:
        raise Refused(401, f"this endpoint needs 'Authorization: Bearer <{realm} token>'", challenge)
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Refused(401, "the Authorization header must be 'Bearer <token>'", challenge)
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise Refused(403, f"the {realm} token is not valid")


def token_guard(token: str | None, realm: str) -> Callable[..., None]:
    """A FastAPI dependency enforcing a bearer token (a no-op without one)."""
    from fastapi import Request

    def guard(request: Request) -> None:
        if token is not None:
            check_bearer(request.headers.get("authorization"), token, realm)

    return guard


class WriterProcess:
    """One child process that applies a server worker's writes through :class:`lookalike.Index`,
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
                     suffix: str = ".jpg", *, if_match: str | None = None) -> Any:
        """Add or change one product (``photo`` None: metadata only), merged with the product as
        committed (see :class:`lookalike.writing.writer.Upload`); its batch's report."""
        from lookalike.writing.writer import Upload

        return await self._submit("upsert", pid, Upload(pid, fields, photo, suffix, if_match))

    async def remove(self, pid: str, *, if_match: str | None = None) -> Any:
        """Remove one product; its batch's report."""
        return await self._submit("remove", pid, (pid, if_match))

    async def _submit(self, kind: str, pid: str, payload: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((kind, pid, payload, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            kind, ids, batch, size = self._queue[0][0], set(), [], 0
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
    if kind == "remove":
        return index.remove([pid for pid, _ in payloads],
                            if_match={pid: tag for pid, tag in payloads if tag is not None})
    return index.upsert_uploads(payloads)


def add_write_routes(app: Any, *, index_path: Path, current: Callable[[], Any], refresh: Callable[[], Any],
                     write_token: str | None, read_body: Callable[..., Any], max_pixels: int, errors: dict[Any, Any],
                     error_model: Any) -> WriterProcess | None:
    """``PUT`` and ``DELETE /products/{id}`` on ``app``. ``current()`` is the recommender of the
    current generation; ``read_body(request)`` returns the request body within the upload limit
    (raising :class:`Refused` beyond it); ``refresh()`` opens the generation a write made, so this
    worker's next answer shows it (the others switch within milliseconds)."""
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    def writes_on(request: Request) -> None:
        if write_token is None:
            raise Refused(403, "writes are off on this server: start it with --write-token-file "
                               f"(or ${WRITE_TOKEN_ENV}) to allow them")
        check_bearer(request.headers.get("authorization"), write_token, "write")

    writer = None
    if write_token is not None:
        writer = WriterProcess(index_path, in_process=current().settings.index.milvus_lite)
    done = {
        200: {"description": "the change is committed; the body names its generation, the `ETag` header "
                             "the product's new version"},
        201: {"description": "a new product was added"},
        401: {"model": error_model, "description": "no bearer token"},
        403: {"model": error_model, "description": "wrong token, or writes are off"},
        **{k: v for k, v in errors.items() if k in (404, 422)},
        412: {"model": error_model, "description": "If-Match: the product changed since that version"},
        413: {"model": error_model, "description": "body or photo too large"},
        415: {"model": error_model, "description": "not an image, or neither multipart nor JSON"},
        503: {"model": error_model, "description": "the index can't be written now (disk, lock, writer "
                                                   "process): try again after `Retry-After` seconds"},
    }

    def answer(report: Any, pid: str) -> JSONResponse:
        change = next((c for c in report.changes if c.id == pid), None)
        if change is not None and change.status == "conflict":
            raise Refused(412, change.reason)
        if change is None or change.status == "skipped":
            reason = change.reason if change is not None else "nothing was applied"
            if "not indexed" in reason:
                raise UnknownProductError(f"unknown product id: {pid} (send a photo to add it)")
            if "unknown product" in reason:
                raise UnknownProductError(f"unknown product id: {pid}")
            raise InvalidQueryError(reason)
        body = {"id": pid, "status": change.status, "generation": report.generation}
        headers = {"Lookalike-Generation": str(report.generation)}
        if pid in report.versions:
            headers["ETag"] = body["etag"] = report.versions[pid]
        return JSONResponse(body, status_code=201 if change.status == "added" else 200, headers=headers)

    async def commit(request: Request, write: Any, pid: str) -> JSONResponse:
        report = await write
        await run_in_threadpool(refresh)  # this worker's next answer shows it; the others check CURRENT
        return answer(report, pid)

    @app.put("/products/{product_id}", responses=done, summary="Add or change a product",
             dependencies=[Depends(writes_on)],
             description="Multipart: a photo in the field `image` plus metadata fields (a new or re-shot "
             "product); or a JSON object of metadata fields alone (the photo and its vector are kept). "
             "Columns the index does not have are refused; columns not sent keep the values the product "
             "has when the write commits (empty for a new product), so writes to one product compose. "
             "`If-Match: <ETag>` (from a GET or an earlier write) makes the write conditional: 412 when "
             f"the product changed since. JSON bodies: at most {MAX_JSON_BYTES // 1024} KiB.",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "image": {"type": "string", "format": "binary"}}, "additionalProperties": {"type": "string"}}},
                 "application/json": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
             }}})
    async def put_product(product_id: str, request: Request) -> Any:
        pid = product_id.strip()
        if not pid:
            raise InvalidQueryError("the product id is empty")
        if_match = request.headers.get("if-match")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            fields = _json_fields(await read_body(request, MAX_JSON_BYTES))
            return await commit(request, writer.upsert(pid, fields, if_match=if_match), pid)
        if ctype != "multipart/form-data":
            raise Refused(415, "send multipart/form-data (field 'image' plus metadata) or application/json metadata")
        photo, fields = await _form(request, read_body)
        suffix = await run_in_threadpool(_check_photo, photo, max_pixels)
        return await commit(request, writer.upsert(pid, fields, photo, suffix, if_match=if_match), pid)

    @app.delete("/products/{product_id}", responses=done, summary="Remove a product",
                dependencies=[Depends(writes_on)],
                description="`If-Match: <ETag>` makes the removal conditional: 412 when the product changed since.")
    async def delete_product(product_id: str, request: Request) -> Any:
        pid = product_id.strip()
        return await commit(request, writer.remove(pid, if_match=request.headers.get("if-match")), pid)

    return writer


def _json_fields(body: bytes) -> dict[str, str]:
    import json

    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidQueryError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: refused, never a traceback
        raise InvalidQueryError("the body is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict) or not value:
        raise InvalidQueryError("send a JSON object of metadata fields, e.g. {\"ProductTitle\": \"...\"}")
    if len(value) > MAX_FIELDS:
        raise InvalidQueryError(f"at most {MAX_FIELDS} fields per write")
    bad = [k for k, v in value.items() if not isinstance(v, (str, int, float)) or isinstance(v, bool)]
    if bad:
        raise InvalidQueryError(f"field {bad[0]!r} must be text or a number")
    return {str(k): str(v) for k, v in value.items()}


async def _form(request: Any, read_body: Callable[..., Any]) -> tuple[bytes, dict[str, str]]:
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    body = await read_body(request)

    async def stream() -> Any:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=MAX_FIELDS)
    try:
        form = await parser.parse()
    except (MultiPartException, ValueError, KeyError) as exc:
        raise Refused(400, f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise Refused(422, "the multipart field 'image' (a photo file) is required; send JSON to change metadata only")
        photo = await upload.read()
        fields = {k: v for k, v in form.multi_items() if k != "image" and isinstance(v, str)}
    finally:
        await form.close()
    if not photo:
        raise ImageError("empty file")
    return photo, fields


def _check_photo(photo: bytes, max_pixels: int) -> str:
    """Refuse what can't be a product photo before it is stored; the file suffix from its bytes."""
    import io

    from PIL import Image

    from lookalike.reading.images import open_image

    open_image(photo, max_pixels=max_pixels, draft=64)  # ImageError for anything that is not a photo
    with Image.open(io.BytesIO(photo)) as img:
        kind = str(img.format or "").upper()
    return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}.get(
        kind, ".img")
