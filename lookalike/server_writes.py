"""Writes over HTTP (``PUT`` and ``DELETE /products/{id}``) and the bearer tokens that guard them.

Writes are off unless the app is given a write token; with one, a write needs
``Authorization: Bearer <token>`` (401 without it, 403 with another). Tokens are compared in
constant time and never logged. A read token, when given, guards every read endpoint the same
way (``/health`` stays open for load balancers). Every write goes through
:class:`lookalike.Index`, which serialises writers across processes and commits one generation
per change; every server worker follows the new generation on its next request.
"""


import hmac
import logging
import os
from pathlib import Path
from typing import Any, Callable

from .errors import ImageError, InvalidQueryError, UnknownProductError

logger = logging.getLogger(__name__)

__all__ = ["load_token", "token_guard", "add_write_routes", "WRITE_TOKEN_ENV", "READ_TOKEN_ENV"]

WRITE_TOKEN_ENV = "LOOKALIKE_WRITE_TOKEN"
READ_TOKEN_ENV = "LOOKALIKE_READ_TOKEN"
#: the shortest token accepted: a guessable token is no guard
MIN_TOKEN_LENGTH = 16
#: metadata fields one write may carry
MAX_FIELDS = 64


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


def add_write_routes(app: Any, *, index_path: Path, current: Callable[[], Any], refresh: Callable[[], Any],
                     write_token: str | None, read_body: Callable[..., Any], max_pixels: int, errors: dict[Any, Any],
                     error_model: Any) -> None:
    """``PUT`` and ``DELETE /products/{id}`` on ``app``. ``current()`` is the recommender of the
    current generation; ``read_body(request)`` returns the request body within the upload limit
    (raising :class:`Refused` beyond it); ``refresh()`` opens the generation a write made, so this
    worker's next answer shows it (the others switch within milliseconds)."""
    from fastapi import Depends, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .live import Index

    def writes_on(request: Request) -> None:
        if write_token is None:
            raise Refused(403, "writes are off on this server: start it with --write-token-file "
                               f"(or ${WRITE_TOKEN_ENV}) to allow them")
        check_bearer(request.headers.get("authorization"), write_token, "write")

    # one thread for the model and one decode: an upload must not take every core from the searches
    index = Index(index_path, lock_timeout=30.0, threads=1, workers=1)
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
            row = {**existing, **fields, rec.id_column: pid, rec.manifest["catalog"]["image_column"]: ""}
            report = await run_in_threadpool(index.upsert, [row])
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
        report = await run_in_threadpool(index.upsert_photo, pid, photo, fields, suffix=suffix)
        await run_in_threadpool(refresh)
        return answer(report, pid)

    @app.delete("/products/{product_id}", responses=done, summary="Remove a product",
                dependencies=[Depends(writes_on)])
    async def delete_product(product_id: str) -> Any:
        pid = product_id.strip()
        report = await run_in_threadpool(index.remove, [pid])
        await run_in_threadpool(refresh)
        return answer(report, pid)


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
