"""The HTTP edge every route shares: refusals, the error → status table, bearer tokens, body limits.

Nothing here knows an index: these are the pieces of HTTP that reads and writes use alike.
"""

import hmac
import os
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from lookalike.errors import (
    CatalogError,
    ImageError,
    ImageTooLargeError,
    InvalidQueryError,
    LookalikeError,
    MissingDependencyError,
    ModelError,
    NotAnImageError,
    StorageError,
    UnknownProductError,
)

__all__ = [
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_JSON_BYTES",
    "RETRY_AFTER_S",
    "WRITE_TOKEN_ENV",
    "READ_TOKEN_ENV",
    "MIN_TOKEN_LENGTH",
    "STATUS_OF_ERROR",
    "Refused",
    "status_for",
    "error_response",
    "load_token",
    "check_bearer",
    "token_guard",
    "limited_body",
    "describe",
]

#: largest request body accepted by ``POST /similar`` (a photo upload or a JSON query)
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: uploaded photos with more pixels than this are refused from their header (40 MP)
DEFAULT_MAX_PIXELS = 40_000_000
#: the largest JSON body, of a search or a metadata write (a product's few fields need far less)
MAX_JSON_BYTES = 64 * 1024
#: room for multipart boundaries and part headers on top of the photo itself
MULTIPART_SLACK = 16 * 1024
#: seconds a client is told to wait (``Retry-After``) after a 503 of the write path
RETRY_AFTER_S = 5
WRITE_TOKEN_ENV = "LOOKALIKE_WRITE_TOKEN"
READ_TOKEN_ENV = "LOOKALIKE_READ_TOKEN"
#: the shortest token accepted: a guessable token is no guard
MIN_TOKEN_LENGTH = 16

#: the HTTP status of each library error; an error takes the status of the nearest class in its
#: MRO listed here (NotAnImageError 415 before ImageError 400), any other LookalikeError is a 500
STATUS_OF_ERROR: dict[type[LookalikeError], int] = {
    UnknownProductError: 404,
    InvalidQueryError: 422,  # bad k, unknown column, bad filter, bad body
    CatalogError: 422,  # a write naming a column the index does not have
    NotAnImageError: 415,
    ImageTooLargeError: 413,  # too many pixels, seen from the photo's header
    ImageError: 400,  # corrupt, truncated, empty
    ModelError: 503,  # photo queries need the model
    MissingDependencyError: 503,
    StorageError: 503,  # with Retry-After: a full or read-only disk, the lock held elsewhere
}


class Refused(Exception):
    """An HTTP-level refusal: status, one-line detail, extra headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def status_for(exc: LookalikeError) -> int:
    """The HTTP status of a library error, by its type (``STATUS_OF_ERROR``)."""
    return next((STATUS_OF_ERROR[cls] for cls in type(exc).__mro__ if cls in STATUS_OF_ERROR), 500)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Any:
    """Every error answer: ``{"detail": "one line"}``."""
    from starlette.responses import JSONResponse

    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


# -- bearer tokens ----------------------------------------------------------------------------
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


# -- bodies -----------------------------------------------------------------------------------
async def limited_body(request: Any, limit: int, too_large: Refused) -> AsyncIterator[bytes]:
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
        raise Refused(400, "the client went away while sending") from None


def describe(errors: Any) -> str:
    """Pydantic's error list as one line: ``query.k: Input should be a valid integer``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request"
