"""Photo URLs, fetched as a well-behaved client into a content-addressed cache.

:class:`PhotoFetcher` fetches many ``http(s)://`` photos with httpx: at most ``concurrency``
at once and ``per_host`` from one host; connect and read timeouts and a deadline per photo; a
size limit counted while the body streams, before anything decodes it; the first bytes must be
one of the photo formats read (``reading/images.ALLOWED_FORMATS``, by magic number, never by
the ``Content-Type``); retries with exponential backoff after a timeout, a lost connection, a
429 or a 5xx, honouring ``Retry-After`` up to ``max_retry_wait``; at most
:data:`~lookalike.config.MAX_REDIRECTS` redirects, each to ``http(s)`` only.

It never sends a credential: a URL with ``user:pass@`` (or a redirect to one) is refused,
not stripped, since the photo behind it is not meant for anyone; no cookie is kept
(the jar refuses every one), no ``.netrc`` or environment proxy is read (``trust_env=False``).

The cache folder holds each photo once, named by the SHA-1 of its bytes (``<sha1>.jpg``), and
``index.json``: URL → file, size, ``ETag``, ``Last-Modified``. A URL already in it is
fetched with ``If-None-Match``/``If-Modified-Since``; a 304 reuses the file, so the photo's
bytes, hence its identity (``folder/rows``), are unchanged and nothing is embedded again.

Every failure is a reason, per photo (:class:`Fetched`): ``HTTP 404``, ``timeout after 30 s``,
``larger than 10 MB``, ``not an image (content-type text/html)``, ``redirect refused: to
file:///…``, ``too many redirects``. Nothing here raises for one photo.
"""

from __future__ import annotations

import email.utils
import fcntl
import hashlib
import http.cookiejar
import ipaddress
import json
import logging
import os
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from lookalike.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FETCH_CONCURRENCY,
    DEFAULT_FETCH_DEADLINE,
    DEFAULT_FETCH_PER_HOST,
    DEFAULT_FETCH_RETRIES,
    DEFAULT_MAX_PHOTO_BYTES,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_READ_TIMEOUT,
    MAX_REDIRECTS,
    FetchSettings,
    photo_cache_dir,
    progress_enabled,
)
from lookalike.reading.images import sniff_image_type

logger = logging.getLogger(__name__)

__all__ = ["Fetched", "PhotoCache", "PhotoFetcher"]

INDEX_FILE = "index.json"
_SUFFIX = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
           "image/bmp": ".bmp", "image/tiff": ".tif"}
_SNIFF = 16
_CHUNK = 1 << 16
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class Fetched:
    """One URL's outcome: the cached file, or why there is none."""

    url: str
    path: Path | None  # the photo in the cache folder
    reason: str = ""  # why not, when path is None
    status: str = ""  # "downloaded", "not modified"; "" when it failed
    nbytes: int = 0  # bytes that came over the network for it (0 for a 304)


def _size(n: int) -> str:
    return f"{n / (1 << 20):.3g} MB" if n >= 1 << 20 else f"{n / 1024:.3g} kB"


def _redacted(url: str) -> str:
    """The URL without its user and password, for reasons and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}")) if "@" in parts.netloc else url


def _refused(url: str) -> str:
    """Why a URL is not fetched at all, or ''."""
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # a port out of range raises here
    except ValueError:
        return f"not a valid URL: {url}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http(s) URL: {url}"
    if "@" in parts.netloc:
        return f"URL with credentials refused: {_redacted(url)} (lookalike never sends credentials)"
    if not host:
        return f"URL without a host: {url}"
    return ""


def _private_address(url: str) -> str:
    """The first address of ``url``'s host that is not a public one (loopback, private,
    link-local, reserved), or ''. A host that does not resolve is left to the request."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme.lower() == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return ""
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        if not (mapped or ip).is_global:
            return str(ip)
    return ""


class PhotoCache:
    """A folder of photos named by the SHA-1 of their bytes, and ``index.json`` (URL → file,
    size, ETag, Last-Modified). Several processes may share it: files are written whole
    under a temporary name, then renamed; the index is merged and replaced under a lock.

    ``writes_index=False`` (a ray engine actor's cache) writes photo files but never the
    index: :meth:`save` keeps this run's entries, :meth:`take_changes` hands them over, and
    the one process that writes the index (the build's driver) :meth:`merge` s them."""

    def __init__(self, folder: str | os.PathLike | None = None, *, writes_index: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else photo_cache_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder = self.folder.resolve()
        self.writes_index = writes_index
        self._entries = self._read()
        self._changed: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.folder / INDEX_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:  # a damaged index costs full fetches, not a failure
            logger.warning("photo cache index %s can't be read (%s); fetching again", self.folder / INDEX_FILE, exc)
            return {}
        urls = data.get("urls") if isinstance(data, dict) else None
        return {str(k): v for k, v in urls.items() if isinstance(v, dict)} if isinstance(urls, dict) else {}

    def lookup(self, url: str) -> tuple[Path, dict[str, Any]] | None:
        """The cached file of ``url`` and its entry, when the file is still there whole."""
        with self._lock:
            entry = self._changed.get(url) or self._entries.get(url)
        if not entry or not isinstance(entry.get("file"), str):
            return None
        path = self.folder / Path(entry["file"]).name
        try:
            if path.stat().st_size != entry.get("size"):
                return None
        except OSError:
            return None
        return path, entry

    def add(self, url: str, tmp: Path, sha1: str, suffix: str, size: int, headers: httpx.Headers) -> Path:
        """Move a downloaded file into place (once per content) and remember the URL's validators."""
        path = self.folder / f"{sha1}{suffix}"
        if path.is_file() and path.stat().st_size == size:
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
        entry = {"file": path.name, "sha1": sha1, "size": size, "etag": headers.get("etag"),
                 "last_modified": headers.get("last-modified"), "fetched": time.time()}
        with self._lock:
            self._changed[url] = entry
        return path

    def touch(self, url: str) -> None:
        """A 304: the entry stays, with the time of the check."""
        with self._lock:
            entry = self._changed.get(url) or self._entries.get(url)
            if entry is not None:
                self._changed[url] = {**entry, "checked": time.time()}

    def take_changes(self) -> dict[str, dict[str, Any]]:
        """This run's entries not saved yet (URL → entry), handed over and forgotten here; they
        stay known to :meth:`lookup` of this cache."""
        with self._lock:
            changed, self._changed = self._changed, {}
            self._entries.update(changed)
        return changed

    def merge(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Take entries another process made (:meth:`take_changes`) and save them with this run's."""
        with self._lock:
            self._changed.update({str(url): dict(entry) for url, entry in changes.items()})
        self.save()

    def save(self) -> None:
        """Merge this run's entries into ``index.json`` (under a lock; replaced whole); a cache
        that does not write the index keeps them for :meth:`take_changes`."""
        if not self.writes_index:
            return
        with self._lock:
            changed, self._changed = self._changed, {}
        if not changed:
            return
        with open(self.folder / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = {**self._read(), **changed}
            fd, tmp = tempfile.mkstemp(prefix=".index-", dir=self.folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"format": 1, "urls": entries}, f)
            os.replace(tmp, self.folder / INDEX_FILE)
        self._entries = entries


class _Retry(Exception):
    """An attempt that may succeed later; ``wait`` is what the server asked for (Retry-After)."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds, or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """A cookie policy that accepts none and returns none."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class PhotoFetcher:
    """Fetches photo URLs into a :class:`PhotoCache` (see the module docstring).

    ``cache`` is the folder (default ``cache_dir()/photos``) or a :class:`PhotoCache`;
    ``transport`` an httpx transport (tests, or a proxy's). Timeouts are in seconds.
    ``private_urls=False`` refuses hosts that resolve to a loopback, private, link-local or
    reserved address, redirects included (checked at the resolver before each request: a
    firewall is the guarantee against DNS rebinding).
    """

    def __init__(
        self,
        cache: str | os.PathLike | PhotoCache | None = None,
        *,
        concurrency: int = DEFAULT_FETCH_CONCURRENCY,
        per_host: int = DEFAULT_FETCH_PER_HOST,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        deadline: float = DEFAULT_FETCH_DEADLINE,
        max_bytes: int = DEFAULT_MAX_PHOTO_BYTES,
        retries: int = DEFAULT_FETCH_RETRIES,
        backoff: float = 0.5,
        max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT,
        transport: httpx.BaseTransport | None = None,
        private_urls: bool = True,
    ) -> None:
        #: every limit of this fetcher, in one record (what the ray engine ships to its tasks)
        self.settings = FetchSettings(concurrency, per_host, connect_timeout, read_timeout, deadline, max_bytes,
                                      retries, backoff, max_retry_wait, private_urls)
        self.cache = cache if isinstance(cache, PhotoCache) else PhotoCache(cache)
        self.transport = transport
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()

    @classmethod
    def from_settings(cls, cache: str | os.PathLike | PhotoCache | None, settings: FetchSettings,
                      *, transport: httpx.BaseTransport | None = None) -> PhotoFetcher:
        """A fetcher with ``settings`` (what the ray engine's actors make theirs from)."""
        return cls(cache, transport=transport, **asdict(settings))

    @property
    def folder(self) -> Path:
        return self.cache.folder

    def _client(self) -> httpx.Client:
        from lookalike import __version__

        return httpx.Client(
            timeout=httpx.Timeout(connect=self.settings.connect_timeout, read=self.settings.read_timeout, write=self.settings.read_timeout,
                                  pool=None),
            limits=httpx.Limits(max_connections=self.settings.concurrency, max_keepalive_connections=self.settings.concurrency),
            follow_redirects=False,  # followed here, each target checked
            trust_env=False,  # no .netrc credentials, no proxy from the environment
            cookies=http.cookiejar.CookieJar(policy=_NoCookies()),
            headers={"User-Agent": f"lookalike/{__version__} (photo fetcher; +https://github.com/lookalike)",
                     "Accept": "image/*"},
            transport=self.transport,
        )

    @contextmanager
    def _host(self, url: str) -> Iterator[None]:
        host = (urllib.parse.urlsplit(url).hostname or "").lower()
        with self._hosts_lock:
            gate = self._hosts.setdefault(host, threading.BoundedSemaphore(self.settings.per_host))
        with gate:
            yield

    def fetch(self, urls: Iterable[str], *, show_progress_bar: bool | None = None) -> dict[str, Fetched]:
        """Every URL's :class:`Fetched`, fetched concurrently (each distinct URL once)."""
        from tqdm.auto import tqdm

        todo = list(dict.fromkeys(urls))
        out: dict[str, Fetched] = {}
        if not todo:
            return out
        bar = tqdm(total=len(todo), unit="photo", desc="fetch", disable=not progress_enabled(show_progress_bar))
        nbytes = 0
        try:
            with self._client() as client, ThreadPoolExecutor(min(self.settings.concurrency, len(todo)),
                                                              thread_name_prefix="lookalike-fetch") as pool:
                futures = {pool.submit(self.fetch_one, url, client): url for url in _by_host(todo)}
                for future in as_completed(futures):
                    try:
                        got = future.result()
                    except Exception as exc:  # a surprise (a bug): that photo's reason, with its traceback logged
                        logger.warning("fetching %s failed", _redacted(futures[future]), exc_info=True)
                        got = Fetched(futures[future], None, f"fetch failed: {type(exc).__name__}")
                    out[got.url] = got
                    nbytes += got.nbytes
                    bar.update(1)
                    bar.set_postfix_str(_size(nbytes), refresh=False)
        finally:
            bar.close()
            self.cache.save()
        failed = sum(1 for f in out.values() if f.path is None)
        unchanged = sum(1 for f in out.values() if f.status == "not modified")
        logger.info("fetched %d photo URLs (%d unchanged, %d failed, %s)", len(out), unchanged, failed, _size(nbytes))
        return {url: out[url] for url in todo}

    def fetch_one(self, url: str, client: httpx.Client | None = None) -> Fetched:
        """One URL's :class:`Fetched`, with retries; never raises for the URL's sake."""
        refused = _refused(url)
        if refused:
            return Fetched(url, None, refused)
        if client is None:
            with self._client() as own:
                got = self.fetch_one(url, own)
            self.cache.save()
            return got
        with self._host(url):
            for attempt in range(self.settings.retries + 1):
                try:
                    got = self._attempt(client, url)
                except OSError as exc:  # the cache folder, not the server: no retry
                    got = Fetched(url, None, f"can't write the photo cache: {exc.strerror or exc}")
                    break
                except _Retry as exc:
                    if attempt == self.settings.retries:
                        got = Fetched(url, None, exc.reason)
                        break
                    if exc.wait is not None and exc.wait > self.settings.max_retry_wait:
                        got = Fetched(url, None, f"{exc.reason} (Retry-After {exc.wait:g} s, more than the "
                                                 f"{self.settings.max_retry_wait:g} s waited)")
                        break
                    wait = exc.wait if exc.wait is not None else min(self.settings.backoff * 2 ** attempt, self.settings.max_retry_wait)
                    logger.debug("%s: %s; retrying in %.2f s", _redacted(url), exc.reason, wait)
                    time.sleep(wait)
                    continue
                break
        if got.path is None:
            logger.debug("photo URL %s not fetched: %s", url, got.reason)
        return got

    def _attempt(self, client: httpx.Client, url: str) -> Fetched:
        cached = self.cache.lookup(url)
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            headers = {}
            if cached is not None:  # the validators of the last hop's answer, sent on every hop
                if cached[1].get("etag"):
                    headers["If-None-Match"] = str(cached[1]["etag"])
                if cached[1].get("last_modified"):
                    headers["If-Modified-Since"] = str(cached[1]["last_modified"])
            private = "" if self.settings.private_urls else _private_address(current)
            if private:
                what = "private address refused" if current == url else f"redirect refused: to {_redacted(current)}"
                return Fetched(url, None, f"{what} ({urllib.parse.urlsplit(current).hostname} is {private}; "
                                          "--no-private-urls)")
            try:
                with client.stream("GET", current, headers=headers) as resp:
                    code = resp.status_code
                    if code in _REDIRECTS and "location" in resp.headers:
                        location = resp.headers["location"]
                        try:
                            target = str(resp.url.join(location))
                        except httpx.InvalidURL:
                            return Fetched(url, None, f"redirect refused: to {location!r}")
                        if _refused(target):  # the reason names the target as the server wrote it
                            return Fetched(url, None, f"redirect refused: to {_redacted(location)}")
                        current = target
                        continue
                    if code == 304 and cached is not None:
                        self.cache.touch(url)
                        return Fetched(url, cached[0], status="not modified")
                    if code == 429 or code >= 500:
                        raise _Retry(f"HTTP {code}", _retry_after(resp.headers.get("retry-after")))
                    if code != 200:
                        return Fetched(url, None, f"HTTP {code}")
                    return self._download(url, resp)
            except httpx.ConnectTimeout:
                raise _Retry(f"connect timeout after {self.settings.connect_timeout:g} s") from None
            except httpx.TimeoutException:
                raise _Retry(f"timeout after {self.settings.read_timeout:g} s") from None
            except httpx.InvalidURL as exc:
                return Fetched(url, None, f"not a valid URL: {exc}")
            except httpx.TransportError as exc:
                raise _Retry(f"connection failed: {str(exc) or type(exc).__name__}") from None
        return Fetched(url, None, f"too many redirects (more than {MAX_REDIRECTS})")

    def _download(self, url: str, resp: httpx.Response) -> Fetched:
        """The body into the cache, refused as soon as it is too large or not a photo (the
        connection is then closed unread)."""
        ctype = resp.headers.get("content-type", "none").split(";")[0].strip() or "none"
        length = resp.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.settings.max_bytes:
            return Fetched(url, None, f"larger than {_size(self.settings.max_bytes)} ({_size(int(length))} announced)")
        too_large = Fetched(url, None, f"larger than {_size(self.settings.max_bytes)}")
        not_image = Fetched(url, None, f"not an image (content-type {ctype})")
        fd, name = tempfile.mkstemp(prefix=".part-", dir=self.cache.folder)
        tmp = Path(name)
        try:
            digest, n, head = hashlib.sha1(), 0, b""
            end = time.monotonic() + self.settings.deadline
            with os.fdopen(fd, "wb") as f:
                for chunk in resp.iter_bytes(_CHUNK):
                    n += len(chunk)
                    if n > self.settings.max_bytes:
                        return too_large
                    if len(head) < _SNIFF:
                        head += chunk[:_SNIFF]
                        if len(head) >= _SNIFF and sniff_image_type(head) is None:
                            return not_image
                    digest.update(chunk)
                    f.write(chunk)
                    if time.monotonic() > end:
                        raise _Retry(f"timeout after {self.settings.deadline:g} s (the whole photo)")
            media = sniff_image_type(head)
            if media is None:
                return not_image if n else Fetched(url, None, "empty body")
            path = self.cache.add(url, tmp, digest.hexdigest(), _SUFFIX[media], n, resp.headers)
            return Fetched(url, path, status="downloaded", nbytes=n)
        finally:
            tmp.unlink(missing_ok=True)


def _by_host(urls: list[str]) -> list[str]:
    """URLs interleaved host by host, so that no host's gate holds every worker."""
    hosts: dict[str, list[str]] = {}
    for url in urls:
        try:
            host = urllib.parse.urlsplit(url).hostname or ""
        except ValueError:
            host = ""
        hosts.setdefault(host, []).append(url)
    queues = list(hosts.values())
    out: list[str] = []
    for i in range(max(map(len, queues))):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def fetch_photos(urls: Iterable[str], *, photo_cache: str | os.PathLike | None = None,
                 fetcher: PhotoFetcher | None = None, private_urls: bool = True,
                 show_progress_bar: bool | None = None) -> tuple[Mapping[str, Fetched], Path]:
    """Fetch ``urls`` with ``fetcher`` (default: one on ``photo_cache``); the results and the cache folder."""
    fetcher = fetcher or PhotoFetcher(photo_cache, private_urls=private_urls)
    return fetcher.fetch(urls, show_progress_bar=show_progress_bar), fetcher.folder
