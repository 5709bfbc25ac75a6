"""Defaults and small settings shared by the modules. Nothing heavy happens at import."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_K",
    "DEFAULT_EXPORT_K",
    "DEFAULT_MODEL",
    "DEFAULT_POOLING",
    "DEFAULT_RESIZE",
    "DEFAULT_TRIM",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_WORKERS",
    "DEFAULT_METRIC",
    "DEFAULT_ID_COLUMN",
    "DEFAULT_IMAGE_COLUMN",
    "DEFAULT_IMAGE_SEPARATOR",
    "DEFAULT_COLOUR_WEIGHT",
    "METRICS",
    "SCORINGS",
    "DEFAULT_MAX_PHOTO_BYTES",
    "DEFAULT_FETCH_CONCURRENCY",
    "DEFAULT_FETCH_PER_HOST",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_FETCH_DEADLINE",
    "DEFAULT_FETCH_RETRIES",
    "DEFAULT_MAX_RETRY_WAIT",
    "MAX_REDIRECTS",
    "FetchSettings",
    "cache_dir",
    "photo_cache_dir",
    "check_colour_weight",
    "progress_enabled",
]

DEFAULT_K = 5
#: results per product in ``export`` (a shop's "more like this" strip shows more than a page of 5)
DEFAULT_EXPORT_K = 10
DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_POOLING = "grid2"
#: how photos become the square model input, after cutting the studio background around the
#: product (trim): fitted into the square on white ("pad"). Trimmed and padded at 256 px, P@5
#: equals the untrimmed squash at 320 px for 36% less model work (docs/quality.md).
DEFAULT_RESIZE = "pad"
DEFAULT_TRIM = True
DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
DEFAULT_METRIC = "cosine"
METRICS = ("cosine", "euclidean")
#: how a product of several photos scores against one query photo: by its best photo (what every
#: search does), or by the mean of its photos' scores (``Recommender.similar_to_rows``,
#: ``evaluate_views``; measured in docs/quality.md, "Other views (issue 20)")
SCORINGS = ("best", "mean")
DEFAULT_ID_COLUMN = "ProductId"
DEFAULT_IMAGE_COLUMN = "Image"
#: what splits an image cell into several photos (Magento and Merchant Center write ``,``)
DEFAULT_IMAGE_SEPARATOR = "|"
#: share of the score given to the colour descriptor (0 = shape only); chosen with `evaluate`
#: on the 2,906-product set (docs/quality.md): 0.15 lifts P@5 same Colour from about 0.35 to
#: 0.46 for about -0.01 ProductType, the same trade on photos cut down to 80 px
DEFAULT_COLOUR_WEIGHT = 0.15

# -- photo URLs (reading/fetch) -------------------------------------------------------------
#: the most bytes a fetched photo may have, counted while it streams (the HTTP service's upload limit)
DEFAULT_MAX_PHOTO_BYTES = 10 * 1024 * 1024
#: photos fetched at once, in all, and from one host (a shop's CDN is one host: be polite)
DEFAULT_FETCH_CONCURRENCY = 16
DEFAULT_FETCH_PER_HOST = 4
#: seconds to connect, and to wait for the next bytes; a whole photo gets at most the deadline
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_FETCH_DEADLINE = 120.0
#: retries after a timeout, a lost connection, a 429 or a 5xx, waiting 0.5, 1, 2 s (or Retry-After,
#: when the server asks for at most the longest wait)
DEFAULT_FETCH_RETRIES = 3
DEFAULT_MAX_RETRY_WAIT = 30.0
#: redirects followed, only to http(s)
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class FetchSettings:
    """How photo URLs are fetched (``reading/fetch.PhotoFetcher``), defined once: what the
    driver's fetcher uses and what the ray engine ships to the actors that fetch there.
    Timeouts in seconds; ``concurrency`` and ``per_host`` bound the whole fetch (the ray engine
    shares them out among its fetching actors); ``private_urls=False`` refuses hosts at
    loopback, private, link-local or reserved addresses."""

    concurrency: int = DEFAULT_FETCH_CONCURRENCY
    per_host: int = DEFAULT_FETCH_PER_HOST
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    deadline: float = DEFAULT_FETCH_DEADLINE
    max_bytes: int = DEFAULT_MAX_PHOTO_BYTES
    retries: int = DEFAULT_FETCH_RETRIES
    backoff: float = 0.5
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    private_urls: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host < 1 or self.retries < 0 or self.max_bytes < 1:
            raise ValueError("concurrency and per_host must be >= 1, retries >= 0, max_bytes >= 1")


def check_colour_weight(weight: float) -> float:
    """A colour weight as a float, or :class:`InvalidQueryError` outside 0..1 (the one check of it)."""
    from lookalike.errors import InvalidQueryError

    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise InvalidQueryError(f"colour weight must be between 0 and 1, not {w}")
    return w


def cache_dir() -> Path:
    """Where exported ONNX models and downloaded weights live (``LOOKALIKE_CACHE_DIR``)."""
    env = os.environ.get("LOOKALIKE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lookalike"


def photo_cache_dir() -> Path:
    """Where fetched photo URLs are kept when no ``photo_cache`` folder is given."""
    return cache_dir() / "photos"


def progress_enabled(show_progress_bar: bool | None) -> bool:
    """Progress bars follow the flag, or default to on when lookalike logs at INFO or below."""
    if show_progress_bar is not None:
        return show_progress_bar
    return logging.getLogger("lookalike").getEffectiveLevel() <= logging.INFO
