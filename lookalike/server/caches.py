"""What a worker keeps in memory between requests: answers of similar-by-id and JPEG thumbnails.

Both are per worker process and bounded; neither can serve a stale answer: a result is keyed by
the index generation, a thumbnail by the photo file's identity (device, inode, mtime, size).
"""

import io
from collections import OrderedDict
from threading import Lock
from typing import Any, BinaryIO, Callable, Hashable

from lookalike.reading.images import open_image

__all__ = ["DEFAULT_RESULT_CACHE", "MAX_THUMBNAIL", "THUMBNAIL_SIZES", "THUMBNAIL_CACHE_BYTES", "ResultCache",
           "Thumbnails"]

#: answers of similar-by-id kept per worker (a new generation empties the cache)
DEFAULT_RESULT_CACHE = 4096
#: the largest side ``GET /products/{id}/image?size=N`` will draw
MAX_THUMBNAIL = 1024
#: the sides thumbnails are drawn at: a requested size is rounded up to the next one
THUMBNAIL_SIZES = (64, 128, 256, 512, MAX_THUMBNAIL)
#: bytes of JPEG thumbnails kept in memory per worker process
THUMBNAIL_CACHE_BYTES = 32 * 1024 * 1024


class ResultCache:
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


class Thumbnails:
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
