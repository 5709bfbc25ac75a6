"""Writes over HTTP: ``PUT`` and ``DELETE /products/{id}``, behind the write token.

Writes are off unless the app is given a write token; with one, a write needs
``Authorization: Bearer <token>`` (401 without it, 403 with another). Every write goes to the
worker's :class:`~lookalike.server.writer.WriterProcess`, which applies it through
:class:`lookalike.IndexWriter` (writers serialised across processes, one generation per commit);
every server worker follows the new generation on its next request.

What a write guarantees (docs/server.md): a partial write is merged with the product as the
index holds it when the write commits, under the writer lock, so writes to one product always
compose; its answer names the generation that holds it and the product's new ``ETag``; a
``PUT``/``DELETE`` with ``If-Match`` answers 412 when the product changed since that version;
the machine's faults (a full or read-only disk, the lock held elsewhere) answer 503 with
``Retry-After``, naming no local path.
"""

from typing import TYPE_CHECKING, Any, Callable

from lookalike.errors import ImageError, InvalidQueryError, UnknownProductError
from lookalike.server.edge import MAX_JSON_BYTES, WRITE_TOKEN_ENV, Refused, check_bearer
from lookalike.server.writer import WriterProcess

if TYPE_CHECKING:
    from lookalike.server.app import Service
    from lookalike.server.schema import Schemas

__all__ = ["add_write_routes", "MAX_FIELDS"]

#: metadata fields one write may carry
MAX_FIELDS = 64
_PUT_DESCRIPTION = (
    "Multipart: a photo in the field `image` (repeat it for several: the product's photos, main first) "
    "plus metadata fields (a new or re-shot "
    "product); or a JSON object of metadata fields alone (the photo and its vector are kept). "
    "Columns the index does not have are refused; columns not sent keep the values the product "
    "has when the write commits (empty for a new product), so writes to one product compose. "
    "`If-Match: <ETag>` (from a GET or an earlier write) makes the write conditional: 412 when "
    f"the product changed since. JSON bodies: at most {MAX_JSON_BYTES // 1024} KiB."
)
_PUT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "image": {"type": "string", "format": "binary"}}, "additionalProperties": {"type": "string"}}},
    "application/json": {"schema": {"type": "object", "additionalProperties": {"type": "string"}}},
}}}


def add_write_routes(app: Any, service: "Service", schemas: "Schemas") -> WriterProcess | None:
    """``PUT`` and ``DELETE /products/{id}`` on ``app``; the worker's writer (None: writes are off).
    After a write commits, ``service.refresh()`` opens its generation, so this worker's next answer
    shows it (the others switch within milliseconds)."""
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    write_token = service.write_token

    def writes_on(request: Request) -> None:
        if write_token is None:
            raise Refused(403, "writes are off on this server: start it with --write-token-file "
                               f"(or ${WRITE_TOKEN_ENV}) to allow them")
        check_bearer(request.headers.get("authorization"), write_token, "write")

    writer = None
    if write_token is not None:
        # in_process is set again once the index is loaded (create_app given a path loads it at startup)
        writer = WriterProcess(service.index_path,
                               in_process=service.live is not None and service.rec().settings.index.milvus_lite)
    done = _write_responses(schemas)

    def the_writer() -> WriterProcess:
        assert writer is not None, "writes_on refuses every write when writes are off"
        return writer

    async def commit(write: Any, pid: str) -> JSONResponse:
        report = await write
        await run_in_threadpool(service.refresh)  # this worker's next answer shows it; the others check CURRENT
        return _answer(report, pid)

    @app.put("/products/{product_id}", responses=done, summary="Add or change a product",
             dependencies=[Depends(writes_on)], description=_PUT_DESCRIPTION, openapi_extra=_PUT_BODY)
    async def put_product(product_id: str, request: Request) -> Any:
        pid = product_id.strip()
        if not pid:
            raise InvalidQueryError("the product id is empty")
        if_match = request.headers.get("if-match")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            fields = _json_fields(await service.read_body(request, MAX_JSON_BYTES))
            return await commit(the_writer().upsert(pid, fields, if_match=if_match), pid)
        if ctype != "multipart/form-data":
            raise Refused(415, "send multipart/form-data (field 'image' plus metadata) or application/json metadata")
        photos, fields = await _form(request, service.read_body)
        suffixes = [await run_in_threadpool(_check_photo, photo, service.max_pixels) for photo in photos]
        return await commit(the_writer().upsert(pid, fields, photos[0], suffixes[0], if_match=if_match,
                                                more=photos[1:]), pid)

    @app.delete("/products/{product_id}", responses=done, summary="Remove a product",
                dependencies=[Depends(writes_on)],
                description="`If-Match: <ETag>` makes the removal conditional: 412 when the product changed since.")
    async def delete_product(product_id: str, request: Request) -> Any:
        pid = product_id.strip()
        return await commit(the_writer().remove(pid, if_match=request.headers.get("if-match")), pid)

    from lookalike.server.steering import add_steering_routes

    add_steering_routes(app, service, writes_on, writer)
    return writer


def _write_responses(schemas: "Schemas") -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": "the change is committed; the body names its generation, the `ETag` header "
                             "the product's new version"},
        201: {"description": "a new product was added"},
        401: schemas.error("no bearer token"),
        403: schemas.error("wrong token, or writes are off"),
        **schemas.lookup_errors,
        412: schemas.error("If-Match: the product changed since that version"),
        413: schemas.error("body or photo too large"),
        415: schemas.error("not an image, or neither multipart nor JSON"),
        503: schemas.error("the index can't be written now (disk, lock, writer process): try again after "
                           "`Retry-After` seconds"),
    }


def _answer(report: Any, pid: str) -> Any:
    """A write's answer from its batch's report: the row of ``pid``, its generation and version."""
    from fastapi.responses import JSONResponse

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


#: photos one PUT may carry (the ``image`` field repeated: the product's photos, main first)
MAX_PHOTOS = 16


async def _form(request: Any, read_body: Callable[..., Any]) -> tuple[list[bytes], dict[str, str]]:
    """A PUT's photos (every ``image`` field, main photo first) and its metadata fields."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    body = await read_body(request)

    async def stream() -> Any:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=MAX_PHOTOS, max_fields=MAX_FIELDS)
    try:
        form = await parser.parse()
    except (MultiPartException, ValueError, KeyError) as exc:
        raise Refused(400, f"malformed multipart body: {exc}") from None
    try:
        uploads = [u for u in form.getlist("image") if isinstance(u, UploadFile)]
        if not uploads:
            raise Refused(422, "the multipart field 'image' (a photo file) is required; send JSON to change metadata only")
        photos = [await u.read() for u in uploads]
        fields = {k: v for k, v in form.multi_items() if k != "image" and isinstance(v, str)}
    finally:
        await form.close()
    if not all(photos):
        raise ImageError("empty file")
    return photos, fields


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
