"""The HTTP service: a FastAPI app over one index (extra: ``server``).

It only translates: parse the request, call :class:`~lookalike.Recommender`, turn the
answer into JSON and every :class:`~lookalike.errors.LookalikeError` into a status code::

    UnknownProductError          404
    InvalidQueryError            422   (bad k, unknown column, bad filter, bad body)
    ImageError                   415 not an image, 413 too many pixels, 400 corrupt or empty
    ModelError, MissingDependencyError
                                 503   (photo queries need the model)
    StorageError                 503 + Retry-After (a write met a full or read-only disk, or
                                       the lock held elsewhere; the answer names no local path)
    anything else lookalike      500

Errors are ``{"detail": "one line"}``. Uploads are refused with 413 while they are read,
as soon as they pass ``max_upload_bytes`` (JSON bodies: ``MAX_JSON_BYTES``); photos with
more than ``max_pixels`` pixels are refused from their header, before decoding. Product
photos are served only as the index recorded them, checked again on every request
(``lookalike.reading.images.open_photo_file``). What the service trusts and refuses, and how to run
it behind a reverse proxy: docs/security.md.

::

    app = create_app("my-index")          # the index is loaded once, in the lifespan
    uvicorn.run(app)                      # or: lookalike serve my-index
"""

import hashlib
import io
import json
import logging
import os
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING, Any, AsyncIterator, BinaryIO, Callable, Hashable, Iterator, Optional, Union

from lookalike import __version__
from lookalike.config import DEFAULT_K
from lookalike.errors import (
    CatalogError,
    ImageError,
    InvalidQueryError,
    LookalikeError,
    MissingDependencyError,
    ModelError,
    StorageError,
    UnknownProductError,
    require,
)
from lookalike.reading.images import _cores, open_image, open_photo_file, set_decode_slots, sniff_image_type
from lookalike.search.recommender import MAX_IDS, MAX_K, LiveRecommender, Recommender
from lookalike.server_writes import (
    MAX_JSON_BYTES,
    READ_TOKEN_ENV,
    RETRY_AFTER_S,
    WRITE_TOKEN_ENV,
    Refused,
    add_write_routes,
    load_token,
    token_guard,
)
from lookalike.writing.writer import PHOTOS

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

__all__ = [
    "create_app",
    "run_server",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_THUMBNAIL",
    "MAX_JSON_BYTES",
    "THUMBNAIL_SIZES",
    "DEFAULT_TIMEOUT_KEEP_ALIVE",
    "DEFAULT_TIMEOUT_HEADERS",
    "MAX_WORKER_DEATHS",
    "WORKER_DEATHS_WINDOW",
    "SHUTDOWN_GRACE",
]

#: largest request body accepted by ``POST /similar`` (a photo upload or a JSON query)
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: uploaded photos with more pixels than this are refused from their header (40 MP)
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: answers of similar-by-id kept per worker (a new generation empties the cache)
DEFAULT_RESULT_CACHE = 4096
#: the largest side ``GET /products/{id}/image?size=N`` will draw
MAX_THUMBNAIL = 1024
#: the sides thumbnails are drawn at: a requested size is rounded up to the next one
THUMBNAIL_SIZES = (64, 128, 256, 512, MAX_THUMBNAIL)
#: bytes of JPEG thumbnails kept in memory per worker process
THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024
#: seconds an idle keep-alive connection stays open after a response
DEFAULT_TIMEOUT_KEEP_ALIVE = 5
#: seconds a client has to send a request's line and headers, from connecting or from its first byte
DEFAULT_TIMEOUT_HEADERS = 10
#: room for multipart boundaries and part headers on top of the photo itself
_MULTIPART_SLACK = 16 * 1024
_CACHE_CONTROL = "public, max-age=86400"


# -- error mapping --------------------------------------------------------------------
def _image_status(exc: ImageError) -> int:
    # ImageError has no reason code yet, so this reads the first words of lookalike.reading.images'
    # messages; tests/test_server.py pins each case (text file, huge PNG, truncated JPEG).
    msg = str(exc)
    if msg.startswith("not an image"):
        return 415
    if msg.startswith("image too large"):
        return 413
    return 400


def _status_for(exc: LookalikeError) -> int:
    """The HTTP status of a library error."""
    if isinstance(exc, UnknownProductError):
        return 404
    if isinstance(exc, (InvalidQueryError, CatalogError)):
        return 422
    if isinstance(exc, ImageError):
        return _image_status(exc)
    if isinstance(exc, (ModelError, MissingDependencyError, StorageError)):
        return 503
    return 500


_Refused = Refused  # an HTTP-level refusal (lookalike.server_writes.Refused)


# -- the app --------------------------------------------------------------------------
def _models():  # type: ignore[no-untyped-def]
    """Pydantic models of the HTTP edge (built on first use: pydantic is a server extra)."""
    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

    class ErrorOut(BaseModel):
        detail: str = Field(examples=["unknown product id: 99999"])

    class HealthOut(BaseModel):
        status: str = Field(examples=["ok"])
        rows: int
        model: str = Field(examples=["efficientnet-lite0/gem"])
        metric: str
        backend: str
        id_column: str
        columns: list[str]
        version: str

    class ProductOut(BaseModel):
        """A product: ``id`` plus every catalogue column, as text."""

        model_config = ConfigDict(extra="allow")
        __pydantic_extra__: dict[str, str]  # type: ignore[misc]
        id: str

    class RecommendationOut(BaseModel):
        """One result: ``id``, ``rank`` (1 = most alike), ``score`` (higher = more alike),
        and the product's catalogue columns."""

        model_config = ConfigDict(extra="allow")
        __pydantic_extra__: dict[str, str]  # type: ignore[misc]
        id: str
        rank: int
        score: float

    class SimilarOut(BaseModel):
        query: dict[str, Any] = Field(description="what was asked, as the library understood it")
        results: list[RecommendationOut]

    class SimilarIn(BaseModel):
        """Products that look like several products at once (e.g. recently viewed items)."""

        model_config = ConfigDict(extra="forbid")
        ids: list[Union[StrictStr, StrictInt]] = Field(
            max_length=MAX_IDS, description=f"product ids, at most {MAX_IDS}", examples=[["13683", "39386"]]
        )
        k: Optional[StrictInt] = Field(None, description=f"number of results, 1..{MAX_K} (default: the k in the URL)")
        same: Union[str, list[str], None] = Field(
            None, description="keep results to the query products' values of these columns", examples=[["Gender"]]
        )
        where: Optional[dict[str, Union[str, list[str]]]] = Field(
            None, description="keep results whose column holds one of the values", examples=[{"Colour": ["Blue"]}]
        )
        colour_weight: Optional[float] = Field(None, strict=True, description="share of the score given to colour, 0..1")
        collapse_duplicates: Optional[StrictBool] = Field(None, description="at most one product per identical photo")

    return ErrorOut, HealthOut, ProductOut, SimilarOut, SimilarIn


_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


def _search_query(params: Any) -> dict[str, Any]:
    """The similar-by-id query parameters, checked as pydantic checks them for the documented route."""
    opts: dict[str, Any] = {"k": DEFAULT_K, "same": params.getlist("same"), "where": params.getlist("where"),
                            "colour_weight": None, "collapse_duplicates": True}
    if "k" in params:
        text = params["k"].strip()
        if not text.lstrip("+-").isdigit():
            raise _Refused(422, "query.k: Input should be a valid integer, unable to parse string as an integer")
        opts["k"] = int(text)
    if "colour_weight" in params:
        try:
            opts["colour_weight"] = float(params["colour_weight"])
        except ValueError:
            raise _Refused(422, "query.colour_weight: Input should be a valid number, unable to parse string "
                                "as a number") from None
    if "collapse_duplicates" in params:
        text = params["collapse_duplicates"].strip().lower()
        if text not in _TRUE | _FALSE:
            raise _Refused(422, "query.collapse_duplicates: Input should be a valid boolean, unable to interpret input")
        opts["collapse_duplicates"] = text in _TRUE
    return opts


#: a request header naming the generation a search must see at least (the one a write returned)
MIN_GENERATION_HEADER = "lookalike-min-generation"


def _min_generation(request: Any) -> int:
    """The ``Lookalike-Min-Generation`` header: searches switch to a new generation in the
    background (milliseconds after it is committed); a client that must see its own write names
    the generation the write returned, and the worker opens it before answering."""
    text = request.headers.get(MIN_GENERATION_HEADER)
    if text is None:
        return 0
    if not text.strip().isdigit():
        raise _Refused(422, f"the {MIN_GENERATION_HEADER} header must be a generation number, not {text[:20]!r}")
    return int(text)


def _parse_where(items: list[str]) -> dict[str, list[str]]:
    """``["Gender:Men", "Colour:Blue", "Colour:Navy"]`` → ``{"Gender": ["Men"], "Colour": ["Blue", "Navy"]}``."""
    where: dict[str, list[str]] = {}
    for item in items:
        col, sep, value = item.partition(":")
        if not sep or not col.strip():
            raise InvalidQueryError(f"where must look like COLUMN:VALUE, not {item!r}")
        where.setdefault(col.strip(), []).append(value)
    return where


class _ResultCache:
    """Answers of similar-by-id as JSON bytes, LRU, keyed by generation and query: an answer
    from an older generation is never served (its key can't be asked for again)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._generation: Any = None
        self._lock = Lock()

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        if not self.capacity:
            return None
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
            return body

    def put(self, key: tuple[Any, ...], body: bytes) -> None:
        if not self.capacity:
            return
        with self._lock:
            if key[0] != self._generation:  # a new generation: what was kept can't be asked for again
                self._items.clear()
                self._generation = key[0]
            self._items[key] = body
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


class _Thumbnails:
    """JPEG thumbnails in an LRU bounded in bytes; a thumbnail being drawn is drawn once.

    Requested sides are rounded up to one of ``THUMBNAIL_SIZES``, so a photo has at most
    five entries however many sizes clients ask for, and each is decoded reduced (JPEG
    draft, ``Image.reduce``) through the one photo-opening path.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._drawing: dict[Hashable, Lock] = {}
        self._lock = Lock()

    @staticmethod
    def side(size: int) -> int:
        """The fixed side a requested size is drawn at."""
        return next((s for s in THUMBNAIL_SIZES if s >= size), THUMBNAIL_SIZES[-1])

    def _cached(self, key: Hashable) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def get(self, key: Hashable, draw: Callable[[], bytes]) -> bytes:
        with self._lock:
            data = self._cached(key)
            if data is not None:
                return data
            gate = self._drawing.setdefault(key, Lock())
        with gate:  # requests for a thumbnail being drawn wait for it instead of drawing it again
            with self._lock:
                data = self._cached(key)
            if data is not None:
                return data
            try:
                data = draw()
            finally:
                with self._lock:
                    if data is not None and len(data) <= self.max_bytes:
                        self._items[key] = data
                        self.bytes += len(data)
                        while self.bytes > self.max_bytes:
                            self.bytes -= len(self._items.popitem(last=False)[1])
                    self._drawing.pop(key, None)
        return data

    @staticmethod
    def draw(photo: BinaryIO, side: int) -> bytes:
        img = open_image(photo.read(), draft=side)
        img.thumbnail((side, side))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, optimize=True)
        return buf.getvalue()


def _open_photo(rec: Recommender, product_id: str) -> tuple[BinaryIO, os.stat_result, str]:
    """A product's photo, opened only if it is still the file the build indexed, and its media type.

    The path comes from the index, never from the request. It must still resolve to itself
    (no link swapped in since), lie inside the images folder the build recorded (unless the
    index was built with ``allow_outside_images``) and be a regular file. The media type is
    sniffed from the first bytes, never taken from the file name.
    """
    path = rec.image_path(product_id)
    catalog = rec.settings.catalog
    roots = [*catalog.photo_roots, str(rec.path.resolve() / PHOTOS)]  # and photos uploaded with PUT
    try:
        photo = open_photo_file(path, root=None if catalog.allow_outside_images else roots)
    except ImageError as exc:  # logged with the path; the answer names none
        logger.warning("not serving the photo of product %s (%s): %s", product_id, path, exc)
        what = "missing" if str(exc) == "file not found" else "not available"
        raise UnknownProductError(f"the photo of product {product_id} is {what} on the server") from None
    st = os.fstat(photo.fileno())
    media = sniff_image_type(photo.read(16)) or "application/octet-stream"
    photo.seek(0)
    return photo, st, media


def _chunks(photo: BinaryIO) -> Iterator[bytes]:
    with photo:
        while chunk := photo.read(1 << 16):
            yield chunk


def _photo_response(request: Any, rec: Recommender, product_id: str, size: int | None, thumbs: _Thumbnails) -> Any:
    """``GET /products/{id}/image``: the indexed file as it is, or a cached JPEG thumbnail."""
    from fastapi.responses import Response, StreamingResponse

    photo, st, media = _open_photo(rec, product_id)
    try:
        side = None if size is None else thumbs.side(size)
        tag = '"' + hashlib.sha1(f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{side}".encode()).hexdigest()[:20] + '"'
        headers = {"Cache-Control": _CACHE_CONTROL, "ETag": tag, "X-Content-Type-Options": "nosniff"}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        if side is None:
            headers["Content-Length"] = str(st.st_size)
            response = StreamingResponse(_chunks(photo), media_type=media, headers=headers)
            photo = None  # the response closes it
            return response
        try:
            data = thumbs.get((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, side), lambda: thumbs.draw(photo, side))
        except ImageError as exc:
            raise UnknownProductError(f"the photo of product {product_id} can't be read: {exc}") from None
        return Response(data, media_type="image/jpeg", headers=headers)
    finally:
        if photo is not None:
            photo.close()


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
    :mod:`lookalike.server_writes`). ``result_cache`` answers of ``GET /products/{id}/similar``
    are kept per worker (0: none); a new generation empties it.
    """
    require("fastapi", "server")
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be >= 1, not {max_upload_bytes}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, not {max_pixels}")
    ErrorOut, HealthOut, ProductOut, SimilarOut, SimilarIn = _models()

    holder: dict[str, LiveRecommender] = {}
    if isinstance(index, Recommender):
        holder["live"] = LiveRecommender(index.path, recommender=index)
    index_path = index.path if isinstance(index, Recommender) else Path(index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if "live" not in holder:
            holder["live"] = await run_in_threadpool(LiveRecommender, index_path)
            logger.info("serving %r", holder["live"].get())
        if writer is not None:
            writer.start()  # in the background: the model is ready before the first write
        try:
            yield
        finally:
            if writer is not None:
                await run_in_threadpool(writer.close)

    app = FastAPI(
        title="lookalike",
        version=__version__,
        description="Visual 'more like this' recommendations over one product catalogue.",
        lifespan=lifespan,
        openapi_url=None,  # the schema pages are added below, behind the read token
        docs_url=None,
        redoc_url=None,
    )
    _add_schema_routes(app, token_guard(read_token, "read"))
    thumbs = _Thumbnails(THUMBNAIL_CACHE_BYTES)
    results = _ResultCache(result_cache)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut, "description": why}
        for code, why in ((404, "unknown product id"), (422, "bad parameter: k, a column, a filter"))
    }

    def rec(fresh: bool = False, min_generation: int = 0) -> Recommender:
        """The current generation's recommender: a new one after every committed change
        (``fresh``: opened before answering, however young; see :meth:`LiveRecommender.get`)."""
        return holder["live"].get(fresh=fresh, min_generation=min_generation)

    def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    reads = [Depends(token_guard(read_token, "read"))]

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, exc.detail, exc.headers)

    @app.exception_handler(LookalikeError)
    async def _lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        status = _status_for(exc)
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, StorageError):  # the log has the path; the answer does not
            return error(status, exc.public, {"Retry-After": str(RETRY_AFTER_S)})
        return error(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _describe(exc.errors()))

    # -- endpoints -------------------------------------------------------------------
    @app.get("/health", response_model=HealthOut, summary="Liveness and what is served")
    def health() -> Any:
        r = rec()
        m = r.settings.model
        return JSONResponse({
            "status": "ok",
            "rows": len(r),
            "model": f"{m.name}/{m.pooling}",
            "metric": r.metric,
            "backend": r.settings.index.backend,
            "id_column": r.id_column,
            "columns": r.columns,
            "version": __version__,
            "generation": r.generation,
            "writes": write_token is not None,
        })

    @app.get("/products/{product_id}", response_model=ProductOut, responses={404: errors[404]},
             summary="A product's catalogue columns", dependencies=reads)
    def product(request: Request, product_id: str) -> Any:
        r = rec(fresh=True)  # read your writes: a write just acknowledged by any worker shows
        tag = r.etag(product_id)
        headers = {"ETag": tag, "Cache-Control": "no-cache", "Lookalike-Generation": str(r.generation)}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return JSONResponse({**r.product(product_id), "id": r.ids[r.row(product_id)]}, headers=headers)

    @app.get(
        "/products/{product_id}/image",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}, "image/*": {}}, "description": "the photo, or a JPEG thumbnail "
                  f"drawn at the next of {', '.join(map(str, THUMBNAIL_SIZES))} px"},
            304: {"description": "not modified (If-None-Match)"},
            404: errors[404],
            422: errors[422],
        },
        summary="A product's photo, by id only",
        dependencies=reads,
    )
    def image(
        request: Request,
        product_id: str,
        size: Optional[int] = Query(
            None, ge=16, le=MAX_THUMBNAIL, description=f"a JPEG thumbnail whose longest side is at most the next "
            f"of {', '.join(map(str, THUMBNAIL_SIZES))} at or above this, 16..{MAX_THUMBNAIL}"
        ),
    ) -> Any:
        return _photo_response(request, rec(fresh=True), product_id, size, thumbs)

    k_query = Query(
        DEFAULT_K, description=f"number of results, 1..{MAX_K}", json_schema_extra={"minimum": 1, "maximum": MAX_K}
    )
    same_query = Query(
        [], description="keep results to the query product's value of this column (repeatable)", examples=["Gender"]
    )
    where_query = Query(
        [], description="keep results whose COLUMN holds VALUE (repeatable; values of one column combine with OR, "
        "columns with AND)", examples=["Colour:Blue"]
    )
    weight_query = Query(None, description="share of the score given to colour, 0..1 (default: the index's)")
    collapse_query = Query(True, description="at most one product per group of identical or near-identical photos")

    def search_options(
        k: int = k_query,
        same: list[str] = same_query,
        where: list[str] = where_query,
        colour_weight: Optional[float] = weight_query,
        collapse_duplicates: bool = collapse_query,
    ) -> dict[str, Any]:
        """The query parameters both similar endpoints take; ``where`` still as COL:VALUE text."""
        return {"k": k, "same": same, "where": where, "colour_weight": colour_weight,
                "collapse_duplicates": collapse_duplicates}

    by_id = _SimilarById(rec, results, token_guard(read_token, "read"))

    @app.get("/products/{product_id}/similar", response_model=SimilarOut,
             responses={**errors, 304: {"description": "not modified (If-None-Match): the index has not changed"}},
             summary="Products that look like this one", dependencies=reads,
             description="Answers carry an `ETag` made of the index generation and the query, so a client "
             "or proxy can revalidate (`If-None-Match` → 304) without a search; answers are also kept in a "
             "per-worker cache that a new generation empties.")
    def similar(request: Request, product_id: str, opts: dict[str, Any] = Depends(search_options)) -> Any:
        # documents the route (OpenAPI); requests are answered by by_id.fast, placed in front, which
        # takes the same parameters with the same checks (the API suite and schemathesis run through it)
        return by_id.answer(request, product_id, opts)

    from starlette.routing import Route

    app.router.routes.insert(0, Route("/products/{product_id}/similar", by_id.fast, methods=["GET"]))

    ids_schema = SimilarIn.model_json_schema()
    upload_schema = {
        "type": "object",
        "properties": {"image": {"type": "string", "format": "binary", "description": "a photo: JPEG, PNG, WebP, GIF, BMP or TIFF"}},
        "required": ["image"],
    }

    @app.post(
        "/similar",
        response_model=SimilarOut,
        responses={
            **errors,
            400: {"model": ErrorOut, "description": "corrupt photo or malformed body"},
            413: {"model": ErrorOut, "description": "body over the size limit, or photo over the pixel limit"},
            415: {"model": ErrorOut, "description": "not an image, or neither multipart nor JSON"},
            503: {"model": ErrorOut, "description": "the model can't be loaded"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": upload_schema},
            "application/json": {"schema": ids_schema},
        }}},
        summary="Products that look like an uploaded photo, or like several products",
        dependencies=reads,
        description="Send either a multipart upload with the field `image`, or a JSON body with `ids` "
        "(recently viewed items; fields given in the body win over the URL's). `same` needs ids.",
    )
    async def similar_to(request: Request, opts: dict[str, Any] = Depends(search_options)) -> Any:
        try:
            found = await _similar_post(request, opts, rec, SimilarIn, max_upload_bytes, max_pixels)
        except _Refused as exc:
            return error(exc.status, exc.detail)
        return JSONResponse(found.to_dict())

    async def read_body(request: Request, limit: int | None = None) -> bytes:
        """A write's whole body, refused (413) as soon as it passes ``limit`` (default: the upload
        limit, with room for the multipart framing)."""
        shown = limit or max_upload_bytes
        limit = limit or max_upload_bytes + _MULTIPART_SLACK
        too_large = _Refused(413, f"request body is over the limit of {shown:,} bytes")
        return b"".join([chunk async for chunk in _limited_body(request, limit, too_large)])

    writer = add_write_routes(app, index_path=index_path, current=rec, refresh=lambda: holder["live"].refresh(),
                              write_token=write_token, read_body=read_body, max_pixels=max_pixels, errors=errors,
                              error_model=ErrorOut)
    return app


def _add_schema_routes(app: "FastAPI", guard: Callable[..., None]) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` as FastAPI serves them, each behind ``guard``
    (the read token, a no-op without one): the schema lists every endpoint and column filter,
    so it is a read like any other. A browser does not send the token by itself; behind a read
    token, open the pages through a proxy or an extension that adds the header."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import HTMLResponse, JSONResponse

    def schema_url(request: Any) -> str:
        return request.scope.get("root_path", "").rstrip("/") + "/openapi.json"

    async def openapi(request: Any) -> JSONResponse:
        guard(request)
        root_path = request.scope.get("root_path", "").rstrip("/")
        schema = app.openapi()
        if root_path and app.root_path_in_servers and root_path not in {s.get("url") for s in schema.get("servers", [])}:
            schema = {**schema, "servers": [{"url": root_path}, *schema.get("servers", [])]}
        return JSONResponse(schema)

    async def docs(request: Any) -> HTMLResponse:
        guard(request)
        return get_swagger_ui_html(openapi_url=schema_url(request), title=f"{app.title} - Swagger UI")

    async def redoc(request: Any) -> HTMLResponse:
        guard(request)
        return get_redoc_html(openapi_url=schema_url(request), title=f"{app.title} - ReDoc")

    for path, endpoint in (("/openapi.json", openapi), ("/docs", docs), ("/redoc", redoc)):
        app.add_route(path, endpoint, include_in_schema=False)


class _SimilarById:
    """``GET /products/{id}/similar``: an ETag and a result cache keyed by the generation, and a
    hot path that skips FastAPI's per-request dependency solving (measured at ~0.7 ms of a ~1.6 ms
    request, benchmarks/profile_request.py): the same parameters and checks, parsed by hand; the
    search is short, so it runs on the event loop."""

    def __init__(self, rec: Callable[..., Recommender], results: "_ResultCache", read_guard: Callable[..., None]) -> None:
        self.rec, self.results, self.read_guard = rec, results, read_guard

    def answer(self, request: Any, product_id: str, opts: dict[str, Any]) -> Any:
        from fastapi.responses import Response

        r = self.rec(min_generation=_min_generation(request))
        key = (r.generation, r.settings.created, product_id, tuple(sorted(request.query_params.multi_items())))
        tag = '"' + hashlib.sha1(repr(key).encode()).hexdigest()[:24] + '"'
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = self.results.get(key)
        if body is None:
            found = r.similar(product_id, **{**opts, "where": _parse_where(opts["where"])})
            body = json.dumps(found.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            self.results.put(key, body)
        return Response(body, media_type="application/json", headers=headers)

    async def fast(self, request: Any) -> Any:
        from fastapi.responses import JSONResponse

        self.read_guard(request)
        try:
            opts = _search_query(request.query_params)
        except _Refused as exc:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status)
        return self.answer(request, request.path_params["product_id"], opts)


async def _similar_post(request: Any, opts: dict[str, Any], rec: Callable[[], Recommender], model: Any,
                        max_upload_bytes: int, max_pixels: int) -> Any:
    """``POST /similar``: a photo upload (multipart) or ids (JSON), within the size limits."""
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/json"):
        raise _Refused(415, "send a photo as multipart/form-data (field 'image') or ids as application/json")
    if ctype == "application/json":
        limit = shown = min(max_upload_bytes, MAX_JSON_BYTES)
    else:
        limit, shown = max_upload_bytes + _MULTIPART_SLACK, max_upload_bytes
    too_large = _Refused(413, f"request body is over the limit of {shown:,} bytes")
    body = _limited_body(request, limit, too_large)
    opts["where"] = _parse_where(opts["where"])
    if ctype == "application/json":
        try:
            asked = model.model_validate_json(b"".join([chunk async for chunk in body]))
        except ValidationError as exc:
            raise _Refused(422, _describe(exc.errors())) from None
        opts.update({name: value for name, value in asked.model_dump(exclude={"ids"}).items() if value is not None})
        ids = [str(i) for i in asked.ids]
        at_least = _min_generation(request)
        return await run_in_threadpool(lambda: rec(min_generation=at_least).similar(ids, **opts))
    photo = await _read_upload(request.headers, body, max_upload_bytes, too_large)
    return await run_in_threadpool(_photo_query, rec(min_generation=_min_generation(request)), photo, max_pixels, opts)


async def _limited_body(request: Any, limit: int, too_large: Refused) -> AsyncIterator[bytes]:
    """The body as it arrives, cut off as soon as it passes ``limit`` (or its declared length does)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise too_large
            yield chunk
    except ClientDisconnect:
        raise _Refused(400, "the client went away while sending") from None


async def _read_upload(headers: Any, stream: AsyncIterator[bytes], max_bytes: int, too_large: _Refused) -> bytes:
    """The bytes of the multipart field ``image`` (the body streams through python-multipart)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(headers, stream, max_files=1, max_fields=16)  # type: ignore[arg-type]
    try:
        form = await parser.parse()
    except (MultiPartException, ValueError, KeyError) as exc:  # KeyError, ValueError: bad boundary or header
        raise _Refused(400, f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise _Refused(422, "the multipart field 'image' (a photo file) is required")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large
        return data
    finally:
        await form.close()


def _photo_query(rec: Recommender, data: bytes, max_pixels: int, opts: dict[str, Any]) -> Any:
    # the library's own reader, with the upload's pixel cap; it checks the header first
    img = open_image(data, draft=rec.encoder.preprocess.draft, max_pixels=max_pixels)
    return rec.similar(image=img, **opts)


def _describe(errors: Any) -> str:
    """Pydantic's error list as one line: ``query.k: Input should be a valid integer``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"


def _limit_blas_threads(n: int) -> None:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        if not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
            logger.warning("threadpoolctl is not installed: set OPENBLAS_NUM_THREADS=%d (or OMP_NUM_THREADS) "
                           "before starting, or concurrent searches will fight over BLAS threads", n)
        return
    threadpool_limits(limits=n, user_api="blas")


def run_server(
    index: str | os.PathLike,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    access_log: bool = False,
    blas_threads: int | None = 1,
    workers: int | None = None,
    timeout_keep_alive: float = DEFAULT_TIMEOUT_KEEP_ALIVE,
    timeout_headers: float = DEFAULT_TIMEOUT_HEADERS,
    write_token_file: str | os.PathLike | None = None,
    read_token_file: str | os.PathLike | None = None,
    result_cache: int = DEFAULT_RESULT_CACHE,
) -> int:
    """Serve an index with uvicorn until interrupted; returns the exit code (1: workers in a crash loop).

    The index is loaded before the server starts, so a bad folder fails at once with an
    :class:`~lookalike.errors.IndexFormatError` instead of a half-started server.

    ``blas_threads`` caps the BLAS threads of each search (``None`` leaves them alone):
    requests already run in parallel on the thread pool, and per-search BLAS threads on
    top of them oversubscribe the cores (on 2 cores, 8 clients fell from ~40 to ~14 req/s).

    ``workers > 1`` pre-forks that many processes after the index is loaded: they share
    its memory copy-on-write, each listens on the port with SO_REUSEPORT (the kernel spreads
    connections evenly) and TCP_NODELAY (which uvicorn's own multi-worker mode leaves off).
    ``None``: two where the machine has two cores or more and can fork, else one. Each
    worker decodes at most its share of the cores' photos at once (``set_decode_slots``).
    The parent supervises them: a worker that dies is replaced (the log names its exit
    status or signal); ``MAX_WORKER_DEATHS`` deaths within ``WORKER_DEATHS_WINDOW`` seconds
    (a crash loop) stop the others and return 1; SIGTERM or SIGINT stops every worker and
    returns 0; workers stop when the parent dies, however it dies.

    Writes (``PUT``/``DELETE``) are on only with a write token, read from ``write_token_file``
    or ``$LOOKALIKE_WRITE_TOKEN``; ``read_token_file`` or ``$LOOKALIKE_READ_TOKEN`` guards reads.

    ``timeout_keep_alive`` closes a connection idle that long after a response;
    ``timeout_headers`` closes one that has not sent a whole request line and headers that
    long after connecting, or after the first byte of its next request (slow-header clients).
    """
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if hasattr(os, "fork") else 1
    for name, seconds in (("timeout_keep_alive", timeout_keep_alive), ("timeout_headers", timeout_headers)):
        if not seconds > 0:
            raise ValueError(f"{name} must be a number of seconds > 0, not {seconds}")
    uvicorn = require("uvicorn", "server")
    if blas_threads is not None:
        _limit_blas_threads(blas_threads)
    write_token = load_token(write_token_file, WRITE_TOKEN_ENV)
    read_token = load_token(read_token_file, READ_TOKEN_ENV)
    rec = Recommender.load(index)
    if rec.settings.index.milvus_lite and workers > 1:
        logger.warning("an index in Milvus Lite (%s) is served by one process; use a Milvus server for more "
                       "workers", rec.settings.index.uri)
        workers = 1
    app = create_app(rec, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, write_token=write_token,
                     read_token=read_token, result_cache=result_cache)
    _check_address(host, port)
    _prepare_photo_search(rec)  # after the cheap checks: a taken port fails before a 10 s export
    _quiet_bomb_warnings()
    set_decode_slots(max(1, _cores() // workers))
    options = _uvicorn_options(access_log=access_log, timeout_keep_alive=timeout_keep_alive,
                               timeout_headers=timeout_headers)
    logger.info("serving %d products from %s on http://%s:%d (docs at /docs; writes %s)", len(rec), index, host,
                port, "on" if write_token else "off")
    if workers <= 1:
        uvicorn.run(app, host=host, port=port, **options)
        return 0
    return _prefork(uvicorn, app, host, port, workers, options)


def _quiet_bomb_warnings() -> None:
    """Pillow warns about photos past its own pixel limit; the server refuses them itself (413)."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _uvicorn_options(*, access_log: bool, timeout_keep_alive: float, timeout_headers: float) -> dict[str, Any]:
    """uvicorn settings shared by one process and pre-forked workers."""
    return {"access_log": access_log, "log_level": "info", "timeout_keep_alive": timeout_keep_alive,
            "http": _header_timeout_protocol(timeout_headers)}


def _header_timeout_protocol(seconds: float) -> Any:
    """uvicorn's h11 protocol with a deadline for each request's line and headers.

    uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline
    for headers: a client that connects and sends nothing, or half a request line, holds
    its connection for ever (slowloris). The clock starts when the connection opens and
    when the first byte of a next request arrives, and stops once the headers are in.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            before = self.cycle
            if before is None or before.response_complete:
                self._arm()  # bytes of a new request: its headers are due within the deadline
            super().data_received(data)
            if self.cycle is not before:
                self._disarm()  # a whole request line and headers arrived

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutProtocol


def _check_address(host: str, port: int) -> None:
    """Fail at once, with one line, when the address can't be listened on (e.g. port taken)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise InvalidQueryError(f"can't listen on {host}:{port}: {exc.strerror or exc}") from None


def _prepare_photo_search(rec: Recommender) -> None:
    """Export/quantize the model once, before workers fork, so the first photo upload of each
    worker does not wait for it (nor run it twice). A model that can't be had leaves search by
    id working: photo queries will then answer with the error."""
    try:
        prepare = getattr(rec.encoder, "prepare", None)
        if prepare is not None:
            prepare()
    except LookalikeError as exc:
        logger.warning("search by photo is unavailable: %s", exc)


def _prefork(uvicorn: Any, app: Any, host: str, port: int, workers: int, options: dict[str, Any]) -> int:
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def listener() -> socket.socket:
        # one socket per worker on the same port: with SO_REUSEPORT the kernel spreads new
        # connections evenly, where a shared socket lets whichever worker wakes first take
        # a burst of keep-alive connections (and keep them)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(2048)
        return sock

    # built here, once: uvicorn sets up its loggers as it builds the config, so the parent's
    # lines look like the workers'; each worker loads the app from its own copy of it
    config = uvicorn.Config(app, host=host, port=port, **options)
    sockets = []
    try:
        for _ in range(workers):
            sockets.append(listener())
        return _Supervisor(uvicorn, config, sockets).run()
    finally:
        for sock in sockets:
            sock.close()


#: a crash loop: this many worker deaths within ``WORKER_DEATHS_WINDOW`` seconds stop ``serve``,
#: which then exits 1 (a service manager such as systemd restarts it or reports it failed)
MAX_WORKER_DEATHS = 5
WORKER_DEATHS_WINDOW = 60.0
#: seconds the workers get to finish their requests after SIGTERM; those still running are killed
SHUTDOWN_GRACE = 30.0
_STARTUP_FAILURE = 3  # uvicorn's exit status for a server that never started (uvicorn.config)


class _Supervisor:
    """The parent of pre-forked workers: replaces one that dies, stops on a crash loop, and
    passes SIGTERM/SIGINT on.

    Written here rather than taken from uvicorn or gunicorn: uvicorn's ``supervisors.Multiprocess``
    spawns fresh interpreters (each loads the index again: no copy-on-write sharing) that share
    one socket, and gunicorn's arbiter shares one socket too (plus a dependency and its worker
    class); neither keeps one SO_REUSEPORT socket per worker, and neither bounds a crash loop
    (uvicorn stops only when a worker fails to start; gunicorn restarts for ever).

    The parent keeps every worker's listening socket open, so a dead worker's socket, and the
    connections waiting in its queue, pass to its replacement instead of being reset. Workers
    get SIGTERM from the kernel when the parent dies (``PR_SET_PDEATHSIG`` on Linux, a watch of
    the parent elsewhere), so none keeps serving the port as an orphan.
    """

    def __init__(self, uvicorn: Any, config: Any, sockets: list[Any]) -> None:
        self.uvicorn, self.config, self.sockets = uvicorn, config, sockets
        self.parent = os.getpid()
        self.workers: dict[int, int] = {}  # pid -> the slot (socket) it serves
        self.deaths: list[float] = []
        self.stop_at: float | None = None  # when the workers were told to stop
        self.killed = False
        self.code = 0
        self._wake: tuple[int, int] = (-1, -1)
        self._handlers: dict[int, Any] = {}

    def run(self) -> int:
        import select
        import signal
        import time

        # signal handlers only note the signal (set_wakeup_fd writes its number to a pipe);
        # the loop below does the work, so a fork never happens inside a handler
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        self._handlers = {sig: signal.signal(sig, lambda *_: None) for sig in watched}
        old_wakeup = signal.set_wakeup_fd(self._wake[1])
        try:
            for slot in range(len(self.sockets)):
                self._start(slot)
            address = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
            logging.getLogger("uvicorn.error").info(  # the line `lookalike serve` shows with one worker too
                "Uvicorn running on http://%s:%d with %d workers (Press CTRL+C to quit)", address,
                self.config.port, len(self.sockets))
            while self.workers:
                ready, _, _ = select.select([self._wake[0]], [], [], 1.0)
                received = os.read(self._wake[0], 512) if ready else b""
                for signum in received:
                    if signum in (signal.SIGTERM, signal.SIGINT):
                        self._stop(signal.Signals(signum).name)
                self._reap()
                if self.stop_at is not None and not self.killed and time.monotonic() > self.stop_at + SHUTDOWN_GRACE:
                    for pid in self.workers:
                        logger.warning("worker %d did not stop within %g s: killing it", pid, SHUTDOWN_GRACE)
                        self._signal(pid, signal.SIGKILL)
                    self.killed = True
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)
        return self.code

    def _start(self, slot: int) -> None:
        import signal

        watched = set(self._handlers)
        signal.pthread_sigmask(signal.SIG_BLOCK, watched)  # none lands in the child before it resets them
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                self._worker(slot)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
        self.workers[pid] = slot
        logger.debug("started worker %d", pid)

    def _worker(self, slot: int) -> None:  # pragma: no cover - runs in the child, never returns
        import signal

        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)
            for fd in self._wake:
                os.close(fd)
            for i, sock in enumerate(self.sockets):
                if i != slot:
                    sock.close()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, set(self._handlers))
            _die_with_parent(self.parent)
            server = self.uvicorn.Server(self.config)
            server.run(sockets=[self.sockets[slot]])
            code = 0 if server.started else _STARTUP_FAILURE
        except KeyboardInterrupt:  # uvicorn re-raises the SIGINT that stopped it
            code = 0
        except SystemExit as exc:  # uvicorn's own exit when the app's startup fails
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            logger.exception("worker %d failed", os.getpid())
        finally:
            os._exit(code)

    def _reap(self) -> None:
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == 0:
                continue
            slot = self.workers.pop(pid)
            if self.stop_at is None:
                self._died(pid, slot, status)

    def _died(self, pid: int, slot: int, status: int) -> None:
        import time

        now = time.monotonic()
        self.deaths = [t for t in self.deaths if t > now - WORKER_DEATHS_WINDOW] + [now]
        how = _exit_status(status)
        if len(self.deaths) >= MAX_WORKER_DEATHS:
            logger.error("worker %d %s: %d worker deaths within %g s, a crash loop: stopping the server", pid, how,
                         len(self.deaths), WORKER_DEATHS_WINDOW)
            self.code = 1
            self._stop("a crash loop")
            return
        logger.warning("worker %d %s; starting another (deaths within %g s: %d; %d stop the server)", pid, how,
                       WORKER_DEATHS_WINDOW, len(self.deaths), MAX_WORKER_DEATHS)
        self._start(slot)

    def _stop(self, why: str) -> None:
        import signal
        import time

        if self.stop_at is not None:  # a second Ctrl-C: the workers stop without waiting for requests
            for pid in self.workers:
                self._signal(pid, signal.SIGINT)
            return
        logger.info("stopping %d workers (%s)", len(self.workers), why)
        self.stop_at = time.monotonic()
        for sock in self.sockets:  # no new connections queue up for workers that are leaving
            sock.close()
        for pid in self.workers:
            self._signal(pid, signal.SIGTERM)

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # gone already; reaped on the next round
            pass


def _exit_status(status: int) -> str:
    """A wait status in words: ``was killed by SIGKILL (signal 9)``, ``exited with status 3``."""
    import signal

    if os.WIFSIGNALED(status):
        num = os.WTERMSIG(status)
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by {name} (signal {num})"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the worker
    """Have this worker get SIGTERM when the supervisor dies, however it dies (kill -9 included).

    Linux: ``prctl(PR_SET_PDEATHSIG)``, then a check that the parent did not die before the call
    (the worker would never get the signal). Elsewhere a thread watches the parent.
    """
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
            return
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="lookalike-parent-watch", daemon=True).start()
