"""The HTTP service: a FastAPI app over one index (extra: ``server``).

It only translates: parse the request, call :class:`~lookalike.Recommender` (reads) or
:class:`~lookalike.IndexWriter` (writes), turn the answer into JSON and every
:class:`~lookalike.errors.LookalikeError` into a status code, by its type
(``edge.STATUS_OF_ERROR``)::

    UnknownProductError          404
    InvalidQueryError            422   (bad k, unknown column, bad filter, bad body)
    CatalogError                 422   (a write naming a column the index does not have)
    NotAnImageError              415
    ImageTooLargeError           413   (too many pixels, from the photo's header)
    ImageError                   400   (corrupt, truncated, empty)
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

The modules, each one concern::

    app.py         create_app: a Service (what the routes share) + the routes and error handlers
    reads.py       /health, a product, its photo, similar by id (the hand-parsed hot path), POST /similar
    writes.py      PUT and DELETE /products/{id}, behind the write token
    writer.py      WriterProcess: a worker's writes in a child process, committed together
    edge.py        Refused, the error → status table, bearer tokens, body limits
    caches.py      the result cache and the thumbnails, per worker
    schema.py      the pydantic models and the schema pages behind the read token
    serve.py       run_server and the uvicorn options
    protocol.py    uvicorn's h11 protocol with a header deadline and one write per answer
    supervisor.py  pre-forked workers and the parent that replaces them

::

    app = create_app("my-index")          # the index is loaded once, in the lifespan
    uvicorn.run(app)                      # or: lookalike serve my-index
"""

from lookalike.server.app import create_app
from lookalike.server.caches import DEFAULT_RESULT_CACHE, MAX_THUMBNAIL, THUMBNAIL_CACHE_BYTES, THUMBNAIL_SIZES
from lookalike.server.edge import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    MAX_JSON_BYTES,
    READ_TOKEN_ENV,
    RETRY_AFTER_S,
    WRITE_TOKEN_ENV,
)
from lookalike.server.serve import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT_HEADERS,
    DEFAULT_TIMEOUT_KEEP_ALIVE,
    run_server,
)
from lookalike.server.supervisor import MAX_WORKER_DEATHS, SHUTDOWN_GRACE, WORKER_DEATHS_WINDOW

__all__ = [
    "create_app",
    "run_server",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_RESULT_CACHE",
    "MAX_THUMBNAIL",
    "MAX_JSON_BYTES",
    "THUMBNAIL_SIZES",
    "THUMBNAIL_CACHE_BYTES",
    "DEFAULT_TIMEOUT_KEEP_ALIVE",
    "DEFAULT_TIMEOUT_HEADERS",
    "MAX_WORKER_DEATHS",
    "WORKER_DEATHS_WINDOW",
    "SHUTDOWN_GRACE",
    "WRITE_TOKEN_ENV",
    "READ_TOKEN_ENV",
    "RETRY_AFTER_S",
]
