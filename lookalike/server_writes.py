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
makes fewer generations for the workers to open (benchmarks/bench_reads_under_writes.py).
"""


import asyncio
import contextlib
import hmac
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from .errors import ImageError, InvalidQueryError, UnknownProductError

logger = logging.getLogger(__name__)

__all__ = ["load_token", "token_guard", "add_write_routes", "WriterProcess", "WRITE_TOKEN_ENV", "READ_TOKEN_ENV"]

WRITE_TOKEN_ENV = "LOOKALIKE_WRITE_TOKEN"
READ_TOKEN_ENV = "LOOKALIKE_READ_TOKEN"
#: the shortest token accepted: a guessable token is no guard
MIN_TOKEN_LENGTH = 16
#: metadata fields one write may carry
MAX_FIELDS = 64
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
    generation switch per batch instead of one per write. A batch that fails as a whole (e.g.
    an unknown column in one write) is applied again one write at a time, so each write gets
    its own answer.

    The child ends with the worker: :meth:`close` at shutdown, and a watch on its parent for a
    worker killed outright. A child that died (killed, out of memory) is replaced at the next
    write; the writes it was doing answer 503 (committed or not, as a crash leaves them: the
    store never keeps half a change).
    """

    def __init__(self, index_path: str | os.PathLike) -> None:
        self.index_path = str(index_path)
        self._pool: Any = None
        self._ready: Any = None
        self._guard = threading.Lock()
        self._queue: list[tuple[str, str, Any, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    def start(self) -> Any:
        """Start the child (idempotent); returns the future of its warm-up."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with self._guard:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_start,
                    initargs=(self.index_path, os.getpid(), writer_nice()))
                self._ready = self._pool.submit(_child_ready)
            return self._ready

    async def upsert(self, pid: str, metadata: dict[str, str], photo: bytes | None = None,
                     suffix: str = ".jpg") -> Any:
        """Add or change one product (``photo`` None: metadata only); its batch's report."""
        return await self._submit("upsert", pid, (pid, metadata, photo, suffix))

    async def remove(self, pid: str) -> Any:
        """Remove one product; its batch's report."""
        return await self._submit("remove", pid, pid)

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
                size += len(item[2][2] or b"") if kind == "upsert" else 0
            try:
                report = await self._run(kind, [item[2] for item in batch])
                outcomes: list[Any] = [report] * len(batch)
            except Refused as exc:
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

        from .errors import LookalikeError

        self.start()
        try:
            return await asyncio.wrap_future(self._pool.submit(_child_batch, kind, payloads))
        except BrokenProcessPool:
            logger.error("the writer process of %s ended; a new one starts with the next write", self.index_path)
            self.close()
            raise Refused(503, "the write was interrupted (the writer process ended): check the product "
                               "and send it again") from None
        except LookalikeError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the lock not had in time, in one line
            raise Refused(503, f"the write failed: {type(exc).__name__}: {exc}") from None

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


def _child_start(index_path: str, parent: int, nice: int) -> None:  # pragma: no cover - runs in the child
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the worker stops us
    with contextlib.suppress(OSError):
        os.nice(nice)
    threading.Thread(target=_watch_parent, args=(parent,), name="lookalike-parent-watch", daemon=True).start()
    from .live import Index

    # one thread for the model and one decode: an upload must not take every core from the searches
    _CHILD["index"] = Index(index_path, lock_timeout=30.0, threads=1, workers=1)


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
    return index.remove(payloads) if kind == "remove" else index.upsert_uploads(payloads)


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

    writer = WriterProcess(index_path) if write_token is not None else None
    done = {
        200: {"description": "the change is committed and visible to every worker's next search"},
        201: {"description": "a new product was added"},
        401: {"model": error_model, "description": "no bearer token"},
        403: {"model": error_model, "description": "wrong token, or writes are off"},
        **{k: v for k, v in errors.items() if k in (404, 422)},
        413: {"model": error_model, "description": "body or photo too large"},
        415: {"model": error_model, "description": "not an image, or neither multipart nor JSON"},
    }

    def answer(report: Any, pid: str) -> JSONResponse:
        change = next((c for c in report.changes if c.id == pid), None)
        if change is None or change.status == "skipped":
            reason = change.reason if change is not None else "nothing was applied"
            if "not indexed" in reason or "unknown product" in reason:
                raise UnknownProductError(f"unknown product id: {pid}")
            raise InvalidQueryError(reason)
        body = {"id": pid, "status": change.status, "generation": report.generation}
        return JSONResponse(body, status_code=201 if change.status == "added" else 200)

    @app.put("/products/{product_id}", responses=done, summary="Add or change a product",
             dependencies=[Depends(writes_on)],
             description="Multipart: a photo in the field `image` plus metadata fields (a new or re-shot "
             "product); or a JSON object of metadata fields alone (the photo and its vector are kept). "
             "Columns the index does not have are refused; missing ones are left empty for a new product "
             "and unchanged for an existing one.",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "properties": {
                     "image": {"type": "string", "format": "binary"}}, "additionalProperties": {"type": "string"}}},
                 "application/json": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
             }}})
    async def put_product(product_id: str, request: Request) -> Any:
        pid = product_id.strip()
        if not pid:
            raise InvalidQueryError("the product id is empty")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            fields = _json_fields(await read_body(request))
            rec = current()
            if pid not in rec:
                raise UnknownProductError(f"unknown product id: {pid} (send a photo to add it)")
            existing = rec.product(pid)
            row = {**existing, **fields}
            row.pop(rec.manifest["catalog"]["image_column"], None)
            report = await writer.upsert(pid, row)
            await run_in_threadpool(refresh)
            return answer(report, pid)
        if ctype != "multipart/form-data":
            raise Refused(415, "send multipart/form-data (field 'image' plus metadata) or application/json metadata")
        photo, fields = await _form(request, read_body)
        suffix = await run_in_threadpool(_check_photo, photo, max_pixels)
        rec = current()
        if pid in rec:  # unchanged columns keep their values
            fields = {**{k: v for k, v in rec.product(pid).items() if k != rec.manifest["catalog"]["image_column"]},
                      **fields}
        fields.pop(rec.id_column, None)
        report = await writer.upsert(pid, fields, photo, suffix)
        await run_in_threadpool(refresh)
        return answer(report, pid)

    @app.delete("/products/{product_id}", responses=done, summary="Remove a product",
                dependencies=[Depends(writes_on)])
    async def delete_product(product_id: str) -> Any:
        pid = product_id.strip()
        report = await writer.remove(pid)
        await run_in_threadpool(refresh)
        return answer(report, pid)

    return writer


def _json_fields(body: bytes) -> dict[str, str]:
    import json

    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidQueryError(f"the body is not valid JSON: {exc}") from None
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

    from .images import open_image

    open_image(photo, max_pixels=max_pixels, draft=64)  # ImageError for anything that is not a photo
    with Image.open(io.BytesIO(photo)) as img:
        kind = str(img.format or "").upper()
    return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}.get(
        kind, ".img")
