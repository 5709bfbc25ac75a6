"""Running the service: ``run_server`` and the uvicorn settings it runs with.

``run_server`` loads the index once, makes the model for photo queries ready, limits BLAS to one
thread per search, and runs uvicorn: in this process (one worker) or in pre-forked workers under
:class:`~lookalike.server.supervisor.Supervisor`. Every connection runs uvicorn's h11 protocol
with a deadline for each request's line and headers and one write per answer
(:func:`~lookalike.server.protocol.h11_protocol`).
"""

import logging
import os
from typing import Any

from lookalike.errors import InvalidQueryError, LookalikeError, require
from lookalike.reading.images import _cores, set_decode_slots
from lookalike.search.recommender import Recommender
from lookalike.server.app import create_app
from lookalike.server.caches import DEFAULT_RESULT_CACHE
from lookalike.server.edge import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_BYTES,
    READ_TOKEN_ENV,
    WRITE_TOKEN_ENV,
    load_token,
)
from lookalike.server.protocol import h11_protocol
from lookalike.server.supervisor import prefork

logger = logging.getLogger(__name__)

__all__ = ["run_server", "uvicorn_options", "prepare_photo_search", "DEFAULT_HOST",
           "DEFAULT_PORT", "DEFAULT_TIMEOUT_KEEP_ALIVE", "DEFAULT_TIMEOUT_HEADERS"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: seconds an idle keep-alive connection stays open after a response
DEFAULT_TIMEOUT_KEEP_ALIVE = 5
#: seconds a client has to send a request's line and headers, from connecting or from its first byte
DEFAULT_TIMEOUT_HEADERS = 10


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
    prepare_photo_search(rec)  # after the cheap checks: a taken port fails before a 10 s export
    _quiet_bomb_warnings()
    set_decode_slots(max(1, _cores() // workers))
    options = uvicorn_options(access_log=access_log, timeout_keep_alive=timeout_keep_alive,
                               timeout_headers=timeout_headers)
    logger.info("serving %d products from %s on http://%s:%d (docs at /docs; writes %s)", len(rec), index, host,
                port, "on" if write_token else "off")
    if workers <= 1:
        uvicorn.run(app, host=host, port=port, **options)
        return 0
    return prefork(uvicorn, app, host, port, workers, options)


def _quiet_bomb_warnings() -> None:
    """Pillow warns about photos past its own pixel limit; the server refuses them itself (413)."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def uvicorn_options(*, access_log: bool, timeout_keep_alive: float, timeout_headers: float) -> dict[str, Any]:
    """uvicorn settings shared by one process and pre-forked workers."""
    return {"access_log": access_log, "log_level": "info", "timeout_keep_alive": timeout_keep_alive,
            "http": h11_protocol(timeout_headers)}


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


def prepare_photo_search(rec: Recommender) -> None:
    """Export/quantize the model once, before workers fork, so the first photo upload of each
    worker does not wait for it (nor run it twice). A model that can't be had leaves search by
    id working: photo queries will then answer with the error."""
    try:
        prepare = getattr(rec.encoder, "prepare", None)
        if prepare is not None:
            prepare()
    except LookalikeError as exc:
        logger.warning("search by photo is unavailable: %s", exc)
