"""The read routes: ``/health``, a product, its photo, and the two searches.

``GET /products/{id}/similar`` is the hot route. It is documented as a FastAPI route (OpenAPI,
the checks of its query parameters) and answered by a plain Starlette route placed in front of
it, which parses the same parameters by hand with the same checks (``search_query``): FastAPI's
per-request dependency solving cost about as much as the search (benchmarks/profile_request.py).
"""

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, AsyncIterator, BinaryIO, Callable, Iterator, Optional

from lookalike import __version__
from lookalike.config import DEFAULT_K
from lookalike.errors import ImageError, ImageNotFoundError, UnknownProductError
from lookalike.reading.images import open_image, open_photo_file, sniff_image_type
from lookalike.search.conditions import Condition, parse_condition
from lookalike.search.recommender import MAX_K, Recommender
from lookalike.server.caches import MAX_THUMBNAIL, THUMBNAIL_SIZES, Thumbnails
from lookalike.server.edge import MAX_JSON_BYTES, MULTIPART_SLACK, Refused, describe, error_response, limited_body
from lookalike.writing.writer import PHOTOS

if TYPE_CHECKING:
    from lookalike.server.app import Service
    from lookalike.server.schema import Schemas

logger = logging.getLogger(__name__)

__all__ = ["add_read_routes", "MIN_GENERATION_HEADER", "SimilarById", "search_query", "parse_where"]

#: a request header naming the generation a search must see at least (the one a write returned)
MIN_GENERATION_HEADER = "lookalike-min-generation"
_CACHE_CONTROL = "public, max-age=86400"
_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


def add_read_routes(app: Any, service: "Service", schemas: "Schemas") -> None:
    """Every read route on ``app``, each behind the read token but ``/health``."""
    from fastapi import Depends

    reads = [Depends(service.read_guard)]
    _add_health(app, service, schemas)
    _add_product_routes(app, service, schemas, reads)
    options = _search_options()
    _add_similar_by_id(app, service, schemas, reads, options)
    _add_similar_post(app, service, schemas, reads, options)


# -- query parameters -------------------------------------------------------------------------
def _search_options() -> Callable[..., dict[str, Any]]:
    """The FastAPI dependency of the query parameters both similar endpoints take."""
    from fastapi import Query

    k_query = Query(
        DEFAULT_K, description=f"number of results, 1..{MAX_K}", json_schema_extra={"minimum": 1, "maximum": MAX_K}
    )
    same_query = Query(
        [], description="keep results to the query product's value of this column (repeatable)", examples=["Gender"]
    )
    where_query = Query(
        [], description="keep results that meet a condition (repeatable): COLUMN:VALUE or COLUMN=VALUE (several "
        "for one column: any of them), COLUMN!=VALUE, COLUMN<N, <=, >, >= or COLUMN=LOW..HIGH (inclusive, either end "
        "open); a product without a number in COLUMN never meets a numeric condition; conditions combine with AND",
        examples=["Colour:Blue", "price<50", "price=10..50"]
    )
    weight_query = Query(None, description="share of the score given to colour, 0..1 (default: the index's)")
    collapse_query = Query(True, description="at most one product per group of identical or near-identical photos")
    siblings_query = Query(False, description="in an index with a parent column: list the query's siblings too")
    parent_query = Query(False, description="at most one product of each parent in a list")
    negative_query = Query([], description="less like this product (repeatable): the query moves away from its "
                           "look, and it is never listed", examples=["21838"])
    boost_query = Query([], description="raise or lower scores (repeatable): CONDITION:+W adds W where the "
                        "condition holds, CONDITION:*W multiplies by W, COLUMN:+W adds W x a numeric column's value, "
                        "COLUMN:*W multiplies by 1 + W x value", examples=["in_stock=yes:+0.05", "popularity:*0.01"])
    max_per_query = Query([], description="at most N results with one value of a column (repeatable)",
                          examples=["Brand=2"])
    diversity_query = Query(None, description="0..1: choose results by maximal marginal relevance (0: plain ranking)")
    explain_query = Query(False, description="each result's score in parts (shape, colour, each boost)")
    defaults_query = Query(True, description="apply the index's query defaults (a default where, boosts, caps)")
    rules_query = Query(True, description="apply the index's pinned and blocked pairs")
    box_query = Query(None, description="a photo query's region X,Y,W,H: pixels, or fractions of the photo when "
                      "all four are at most 1", examples=["0.25,0.1,0.5,0.6"])

    def search_options(
        k: int = k_query,
        same: list[str] = same_query,
        where: list[str] = where_query,
        colour_weight: Optional[float] = weight_query,
        collapse_duplicates: bool = collapse_query,
        siblings: bool = siblings_query,
        collapse_parent: bool = parent_query,
        negative_ids: list[str] = negative_query,
        boost: list[str] = boost_query,
        max_per: list[str] = max_per_query,
        diversity: Optional[float] = diversity_query,
        explain: bool = explain_query,
        defaults: bool = defaults_query,
        rules: bool = rules_query,
        box: Optional[str] = box_query,
    ) -> dict[str, Any]:
        """The query parameters both similar endpoints take; ``where`` still as COL:VALUE text."""
        return {"k": k, "same": same, "where": where, "colour_weight": colour_weight,
                "collapse_duplicates": collapse_duplicates, "siblings": siblings, "collapse_parent": collapse_parent,
                "negative_ids": negative_ids, "boost": boost, "max_per": max_per, "diversity": diversity,
                "explain": explain, "defaults": defaults, "rules": rules, "box": box}

    return search_options


def search_query(params: Any) -> dict[str, Any]:
    """The similar-by-id query parameters, checked as pydantic checks them for the documented route."""
    opts: dict[str, Any] = {"k": DEFAULT_K, "same": params.getlist("same"), "where": params.getlist("where"),
                            "colour_weight": None, "collapse_duplicates": True, "siblings": False,
                            "collapse_parent": False, "negative_ids": params.getlist("negative_ids"),
                            "boost": params.getlist("boost"), "max_per": params.getlist("max_per"), "diversity": None,
                            "explain": False, "defaults": True, "rules": True}
    if "k" in params:
        text = params["k"].strip()
        if not text.lstrip("+-").isdigit():
            raise Refused(422, "query.k: Input should be a valid integer, unable to parse string as an integer")
        opts["k"] = int(text)
    for name in ("colour_weight", "diversity"):
        if name in params:
            try:
                opts[name] = float(params[name])
            except ValueError:
                raise Refused(422, f"query.{name}: Input should be a valid number, unable to parse string "
                                   "as a number") from None
    if "box" in params:
        raise Refused(400, "a box is a region of a photo: send it with a photo (POST /similar)")
    for name in ("collapse_duplicates", "siblings", "collapse_parent", "explain", "defaults", "rules"):
        if name in params:
            text = params[name].strip().lower()
            if text not in _TRUE | _FALSE:
                raise Refused(422, f"query.{name}: Input should be a valid boolean, unable to interpret input")
            opts[name] = text in _TRUE
    return opts


def min_generation(request: Any) -> int:
    """The ``Lookalike-Min-Generation`` header: searches switch to a new generation in the
    background (milliseconds after it is committed); a client that must see its own write names
    the generation the write returned, and the worker opens it before answering."""
    text = request.headers.get(MIN_GENERATION_HEADER)
    if text is None:
        return 0
    if not text.strip().isdigit():
        raise Refused(422, f"the {MIN_GENERATION_HEADER} header must be a generation number, not {text[:20]!r}")
    return int(text)


def parse_where(items: list[str]) -> list[Condition]:
    """The ``where`` parameters as conditions, one value each (no comma splits a value):
    ``["Gender:Men", "Colour:Blue", "Colour:Navy"]`` (any of the colours), ``["price<50"]``,
    ``["price=10..50"]``, ``["Colour!=Black"]`` (:func:`~lookalike.search.conditions.parse_condition`)."""
    return [parse_condition(item, split=False, name="where") for item in items]


# -- health and products ----------------------------------------------------------------------
def _add_health(app: Any, service: "Service", schemas: "Schemas") -> None:
    from fastapi.responses import JSONResponse

    @app.get("/health", response_model=schemas.HealthOut, summary="Liveness and what is served")
    def health() -> Any:
        r = service.rec()
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
            "writes": service.write_token is not None,
            "text_queries": r.supports_text,
        })


def _add_product_routes(app: Any, service: "Service", schemas: "Schemas", reads: list[Any]) -> None:
    from fastapi import Query, Request
    from fastapi.responses import JSONResponse, Response

    errors = schemas.lookup_errors

    @app.get("/products/{product_id}", response_model=schemas.ProductOut, responses={404: errors[404]},
             summary="A product's catalogue columns", dependencies=reads)
    def product(request: Request, product_id: str) -> Any:
        r = service.rec(fresh=True)  # read your writes: a write just acknowledged by any worker shows
        tag = r.etag(product_id)
        headers = {"ETag": tag, "Cache-Control": "no-cache", "Lookalike-Generation": str(r.generation)}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        cells = r.product(product_id)
        photos = "photos" if "photos" not in cells else "_photos"  # a catalogue column of that name stays
        return JSONResponse({**cells, "id": r.ids[r.row(product_id)], photos: r.photos(product_id)}, headers=headers)

    @app.get(
        "/products/{product_id}/image",
        response_class=Response,
        responses={
            200: {"content": {"image/jpeg": {}, "image/*": {}}, "description": "the photo, or a JPEG thumbnail "
                  f"drawn at the next of {', '.join(map(str, THUMBNAIL_SIZES))} px"},
            304: {"description": "not modified (If-None-Match)"},
            **errors,
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
        photo: int = Query(0, ge=0, description="which of the product's photos (0: the main one; the product's "
                           "`photos` lists them in this order)"),
    ) -> Any:
        return _photo_response(request, service.rec(fresh=True), product_id, size, service.thumbs, photo)


def _open_photo(rec: Recommender, product_id: str, number: int = 0) -> tuple[BinaryIO, os.stat_result, str]:
    """A product's photo, opened only if it is still the file the build indexed, and its media type.

    The path comes from the index, never from the request. It must still resolve to itself
    (no link swapped in since), lie inside the images folder the build recorded (unless the
    index was built with ``allow_outside_images``) and be a regular file. The media type is
    sniffed from the first bytes, never taken from the file name.
    """
    paths = rec.photo_paths(product_id)
    if number >= len(paths):
        raise UnknownProductError(f"product {product_id} has {len(paths)} photo(s); there is no photo {number}")
    path = paths[number]
    catalog = rec.settings.catalog
    roots = [*catalog.photo_roots, str(rec.path.resolve() / PHOTOS)]  # and photos uploaded with PUT
    try:
        photo = open_photo_file(path, root=None if catalog.allow_outside_images else roots)
    except ImageError as exc:  # logged with the path; the answer names none
        logger.warning("not serving the photo of product %s (%s): %s", product_id, path, exc)
        what = "missing" if isinstance(exc, ImageNotFoundError) else "not available"
        raise UnknownProductError(f"the photo of product {product_id} is {what} on the server") from None
    st = os.fstat(photo.fileno())
    media = sniff_image_type(photo.read(16)) or "application/octet-stream"
    photo.seek(0)
    return photo, st, media


def _chunks(photo: BinaryIO) -> Iterator[bytes]:
    with photo:
        while chunk := photo.read(1 << 16):
            yield chunk


def _photo_response(request: Any, rec: Recommender, product_id: str, size: int | None, thumbs: Thumbnails,
                    number: int = 0) -> Any:
    """``GET /products/{id}/image``: the indexed file as it is, or a cached JPEG thumbnail."""
    from fastapi.responses import Response, StreamingResponse

    photo: BinaryIO | None
    photo, st, media = _open_photo(rec, product_id, number)
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


# -- similar by id ----------------------------------------------------------------------------
def _add_similar_by_id(app: Any, service: "Service", schemas: "Schemas", reads: list[Any],
                       options: Callable[..., dict[str, Any]]) -> None:
    from fastapi import Depends, Request
    from starlette.routing import Route

    by_id = SimilarById(service)

    @app.get("/products/{product_id}/similar", response_model=schemas.SimilarOut,
             responses={**schemas.lookup_errors,
                        304: {"description": "not modified (If-None-Match): the index has not changed"}},
             summary="Products that look like this one", dependencies=reads,
             description="Answers carry an `ETag` made of the index generation and the query, so a client "
             "or proxy can revalidate (`If-None-Match` → 304) without a search; answers are also kept in a "
             "per-worker cache that a new generation empties.")
    def similar(request: Request, product_id: str, opts: dict[str, Any] = Depends(options)) -> Any:
        # documents the route (OpenAPI); requests are answered by by_id.fast, placed in front, which
        # takes the same parameters with the same checks (the API suite and schemathesis run through it)
        return by_id.answer(request, product_id, opts)

    app.router.routes.insert(0, Route("/products/{product_id}/similar", by_id.fast, methods=["GET"]))


class SimilarById:
    """``GET /products/{id}/similar``: an ETag and a result cache keyed by the generation, and a
    hot path that skips FastAPI's per-request dependency solving (measured at ~0.7 ms of a ~1.6 ms
    request, benchmarks/profile_request.py): the same parameters and checks, parsed by hand; the
    search is short, so it runs on the event loop."""

    def __init__(self, service: "Service") -> None:
        self.service = service

    def answer(self, request: Any, product_id: str, opts: dict[str, Any]) -> Any:
        from fastapi.responses import Response

        r = self.service.rec(min_generation=min_generation(request))
        key = (r.generation, r.settings.created, product_id, tuple(sorted(request.query_params.multi_items())))
        tag = '"' + hashlib.sha1(repr(key).encode()).hexdigest()[:24] + '"'
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        body = self.service.results.get(key)
        if body is None:
            found = r.similar(product_id, **{**opts, "where": parse_where(opts["where"])})
            body = json.dumps(found.to_dict(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            self.service.results.put(key, body)
        return Response(body, media_type="application/json", headers=headers)

    async def fast(self, request: Any) -> Any:
        self.service.read_guard(request)
        try:
            opts = search_query(request.query_params)
        except Refused as exc:
            return error_response(exc.status, exc.detail)
        return self.answer(request, request.path_params["product_id"], opts)


# -- POST /similar: a photo or several ids ----------------------------------------------------
def _add_similar_post(app: Any, service: "Service", schemas: "Schemas", reads: list[Any],
                      options: Callable[..., dict[str, Any]]) -> None:
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse

    upload_schema = {
        "type": "object",
        "properties": {"image": {"type": "string", "format": "binary",
                                 "description": "a photo: JPEG, PNG, WebP, GIF, BMP or TIFF"}},
        "required": ["image"],
    }

    @app.post(
        "/similar",
        response_model=schemas.SimilarOut,
        responses={
            **schemas.lookup_errors,
            400: schemas.error("corrupt photo or malformed body"),
            413: schemas.error("body over the size limit, or photo over the pixel limit"),
            415: schemas.error("not an image, or neither multipart nor JSON"),
            503: schemas.error("the model can't be loaded"),
        },
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": upload_schema},
            "application/json": {"schema": schemas.SimilarIn.model_json_schema()},
        }}},
        summary="Products that look like an uploaded photo, several products, or words",
        dependencies=reads,
        description="Send either a multipart upload with the field `image`, or a JSON body with `ids` "
        "(recently viewed items) or `text` (words, where the index's model has a text tower; fields given in the "
        "body win over the URL's). `same` needs ids.",
    )
    async def similar_to(request: Request, opts: dict[str, Any] = Depends(options)) -> Any:
        try:
            found = await _similar_post(request, opts, service, schemas.SimilarIn)
        except Refused as exc:
            return error_response(exc.status, exc.detail)
        return JSONResponse(found.to_dict())


async def _similar_post(request: Any, opts: dict[str, Any], service: "Service", model: Any) -> Any:
    """``POST /similar``: a photo upload (multipart) or ids (JSON), within the size limits."""
    from pydantic import ValidationError
    from starlette.concurrency import run_in_threadpool

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/json"):
        raise Refused(415, "send a photo as multipart/form-data (field 'image') or ids as application/json")
    max_upload_bytes = service.max_upload_bytes
    if ctype == "application/json":
        limit = shown = min(max_upload_bytes, MAX_JSON_BYTES)
    else:
        limit, shown = max_upload_bytes + MULTIPART_SLACK, max_upload_bytes
    too_large = Refused(413, f"request body is over the limit of {shown:,} bytes")
    body = limited_body(request, limit, too_large)
    opts["where"] = parse_where(opts["where"])
    if ctype == "application/json":
        try:
            asked = model.model_validate_json(b"".join([chunk async for chunk in body]))
        except ValidationError as exc:
            raise Refused(422, describe(exc.errors())) from None
        opts.update({name: value for name, value in asked.model_dump(exclude={"ids"}).items() if value is not None})
        ids = None if asked.ids is None else [str(i) for i in asked.ids]
        if opts.pop("box", None) is not None:
            raise Refused(400, "a box is a region of a photo: send it with a photo (multipart field 'image')")
        at_least = min_generation(request)
        return await run_in_threadpool(lambda: service.rec(min_generation=at_least).similar(ids, **opts))
    photo, box = await _read_upload(request.headers, body, max_upload_bytes, too_large)
    if box is not None:
        opts["box"] = box
    rec = service.rec(min_generation=min_generation(request))
    return await run_in_threadpool(_photo_query, rec, photo, service.max_pixels, opts)


async def _read_upload(headers: Any, stream: AsyncIterator[bytes], max_bytes: int,
                       too_large: Refused) -> tuple[bytes, str | None]:
    """The bytes of the multipart field ``image`` (the body streams through python-multipart),
    and the field ``box`` if sent."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    parser = MultiPartParser(headers, stream, max_files=1, max_fields=16)  # type: ignore[arg-type]  # starlette types headers as its Headers; any mapping works
    try:
        form = await parser.parse()
    except (MultiPartException, ValueError, KeyError) as exc:  # KeyError, ValueError: bad boundary or header
        raise Refused(400, f"malformed multipart body: {exc}") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise Refused(422, "the multipart field 'image' (a photo file) is required")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise too_large
        box = form.get("box")
        return data, box if isinstance(box, str) else None
    finally:
        await form.close()


def _photo_query(rec: Recommender, data: bytes, max_pixels: int, opts: dict[str, Any]) -> Any:
    # the library's own reader, with the upload's pixel cap; it checks the header first
    # a region is cut from the whole photo (a draft-size decode would move its pixel coordinates)
    img = open_image(data, draft=None if opts.get("box") else rec.encoder.preprocess.draft, max_pixels=max_pixels)
    return rec.similar(image=img, **opts)
