"""The app's wiring: ``create_app`` builds a :class:`Service` (what every route shares) and hangs
the schema pages, the read routes and the write routes on one FastAPI app."""

import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator

from lookalike import __version__
from lookalike.errors import LookalikeError, StorageError, require
from lookalike.search.recommender import LiveRecommender, Recommender
from lookalike.server.caches import DEFAULT_RESULT_CACHE, THUMBNAIL_CACHE_BYTES, ResultCache, Thumbnails
from lookalike.server.edge import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    MULTIPART_SLACK,
    RETRY_AFTER_S,
    Refused,
    describe,
    error_response,
    limited_body,
    status_for,
    token_guard,
)
from lookalike.server.reads import add_read_routes
from lookalike.server.schema import add_schema_routes, schemas
from lookalike.server.writes import add_write_routes

if TYPE_CHECKING:
    from fastapi import FastAPI

    from lookalike.server.writer import WriterProcess

logger = logging.getLogger(__name__)

__all__ = ["create_app", "Service"]


class Service:
    """What the routes share: the index they follow, the limits, the tokens, the caches and the
    worker's writer (clip-retrieval's resource with its dependencies passed in)."""

    def __init__(self, index: str | os.PathLike | Recommender, *, max_upload_bytes: int, max_pixels: int,
                 write_token: str | None, read_token: str | None, result_cache: int) -> None:
        self.live: LiveRecommender | None = None
        if isinstance(index, Recommender):
            self.live = LiveRecommender(index.path, recommender=index)
        self.index_path = index.path if isinstance(index, Recommender) else Path(index)
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.write_token = write_token
        self.read_guard = token_guard(read_token, "read")
        self.thumbs = Thumbnails(THUMBNAIL_CACHE_BYTES)
        self.results = ResultCache(result_cache)
        self.writer: "WriterProcess | None" = None

    def rec(self, fresh: bool = False, min_generation: int = 0) -> Recommender:
        """The current generation's recommender: a new one after every committed change
        (``fresh``: opened before answering, however young; see :meth:`LiveRecommender.get`)."""
        return self.live.get(fresh=fresh, min_generation=min_generation)  # type: ignore[union-attr]  # set at startup, before any route runs

    def refresh(self) -> Any:
        """Open the newest generation now (after this worker's own write)."""
        return self.live.refresh()  # type: ignore[union-attr]  # set at startup, before any route runs

    async def read_body(self, request: Any, limit: int | None = None) -> bytes:
        """A write's whole body, refused (413) as soon as it passes ``limit`` (default: the upload
        limit, with room for the multipart framing)."""
        shown = limit or self.max_upload_bytes
        limit = limit or self.max_upload_bytes + MULTIPART_SLACK
        too_large = Refused(413, f"request body is over the limit of {shown:,} bytes")
        return b"".join([chunk async for chunk in limited_body(request, limit, too_large)])


def create_app(
    index: str | os.PathLike | Recommender,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    write_token: str | None = None,
    read_token: str | None = None,
    result_cache: int = DEFAULT_RESULT_CACHE,
) -> "FastAPI":
    """The FastAPI app over one index.

    ``index`` is an index folder (loaded when the app starts) or a loaded :class:`Recommender`;
    either way the app follows the folder's new generations (live changes) on the next request.
    ``max_upload_bytes`` caps a request body (413 beyond); ``max_pixels`` caps an uploaded
    photo's width x height (413 beyond, never decoded). ``write_token`` turns on ``PUT`` and
    ``DELETE /products/{id}`` for requests bearing it; ``read_token`` guards every read but
    ``/health``, the schema pages ``/openapi.json``, ``/docs`` and ``/redoc`` included (see
    :mod:`lookalike.server.writes`). ``result_cache`` answers of ``GET /products/{id}/similar``
    are kept per worker (0: none); a new generation empties it.
    """
    require("fastapi", "server")
    from fastapi import FastAPI

    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, not {max_upload_bytes}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, not {max_pixels}")
    service = Service(index, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, write_token=write_token,
                      read_token=read_token, result_cache=result_cache)
    app = FastAPI(
        title="lookalike",
        version=__version__,
        description="Visual 'more like this' recommendations over one product catalogue.",
        lifespan=_lifespan(service),
        openapi_url=None,  # the schema pages are added below, behind the read token
        docs_url=None,
        redoc_url=None,
    )
    add_schema_routes(app, service.read_guard)
    _add_error_handlers(app)
    models = schemas()
    add_read_routes(app, service, models)
    service.writer = add_write_routes(app, service, models)
    return app


def _lifespan(service: Service) -> Any:
    """Loads the index (unless given loaded) before the first request; starts and stops the writer."""
    from starlette.concurrency import run_in_threadpool

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if service.live is None:
            service.live = await run_in_threadpool(LiveRecommender, service.index_path)
            logger.info("serving %r", service.live.get())
        if service.writer is not None:
            service.writer.in_process = service.rec().settings.index.milvus_lite  # Milvus Lite: one process owns the .db
            service.writer.start()  # in the background: the model is ready before the first write
        try:
            yield
        finally:
            if service.writer is not None:
                await run_in_threadpool(service.writer.close)

    return lifespan


def _add_error_handlers(app: Any) -> None:
    """Refusals, library errors (by type: ``edge.STATUS_OF_ERROR``) and bad parameters as
    ``{"detail": "one line"}``."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.headers)

    @app.exception_handler(LookalikeError)
    async def _lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, StorageError):  # the log has the path; the answer does not
            return error_response(status, exc.public, {"Retry-After": str(RETRY_AFTER_S)})
        return error_response(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, describe(exc.errors()))
