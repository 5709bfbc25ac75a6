"""The local engine: the photo stage of a build in this process.

With an encoder that takes several callers at once (``streams``, as ``build`` makes it), each
of ``workers`` threads reads, decodes and embeds whole batches of its own: every core runs one
thread, and no model thread waits at a barrier for a core a decoder holds. Otherwise a thread
pool decodes (Pillow releases the GIL while it decodes, and JPEG draft mode decodes big photos
at 1/2 to 1/8 scale) while this thread embeds the previous batch. Rows whose photo can't be
used are reported, never dropped silently. This is the exact engine: every other engine is
tested against it.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from lookalike.config import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, FetchSettings
from lookalike.encoders import Encoder
from lookalike.folder.rows import photo_sha1
from lookalike.reading.catalog import Catalog, RowProblem
from lookalike.reading.images import COLOUR_DIM, Decoded, Preprocess, load

if TYPE_CHECKING:
    from lookalike.reading.fetch import Fetched

__all__ = ["LocalEngine", "Encoded", "encode_rows", "row_problem"]


def row_problem(cat: Catalog, position: int, reason: str) -> RowProblem:
    """The report line of catalogue row ``position`` (0-based) whose photo could not be used."""
    return RowProblem(cat.rows[position], cat.ids[position], cat.refs[position], reason, photo=True)


def _read_and_decode(path: Path, pre: Preprocess) -> tuple[Decoded | None, str, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable file: {exc.strerror or exc}", ""
    if not data:
        return None, "empty file", ""
    digest = photo_sha1(data)
    decoded, reason = load(data, pre)
    return decoded, reason, digest


def _in_order(pool: ThreadPoolExecutor, fn: Any, items: Iterable[Any], ahead: int) -> Iterator[Any]:
    """``fn(item)`` for each item, in order, run on ``pool`` at most ``ahead`` items in advance
    of the one being read. The first ``ahead`` are submitted now, before the first read."""
    todo = iter(items)
    pending: deque[Future[Any]] = deque(pool.submit(fn, item) for item in islice(todo, ahead))

    def results() -> Iterator[Any]:
        while pending:
            done = pending.popleft()
            for item in islice(todo, 1):
                pending.append(pool.submit(fn, item))
            yield done.result()

    return results()


def _decoded_stream(
    paths: list[Path], pre: Preprocess, workers: int, ahead: int
) -> Iterator[tuple[int, Decoded | None, str, str]]:
    """Yield (position, decoded, reason, sha1) in order, decoding ``ahead`` items in advance."""
    if workers <= 1:
        for i, p in enumerate(paths):
            yield (i, *_read_and_decode(p, pre))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-decode") as pool:
        for i, result in enumerate(_in_order(pool, lambda p: _read_and_decode(p, pre), paths, ahead)):
            yield (i, *result)


@dataclass
class Encoded:
    """Catalogue rows through the photo stage: what the model and the descriptors made of them.

    ``positions`` are the catalogue rows (0-based, in ``Catalog`` order) that succeeded; the
    arrays follow them. Every other requested row is in ``problems`` with its reason.
    """

    positions: list[int]
    raw: np.ndarray  # float32 (m, encoder dim): pooled model output, before any projection
    colour: np.ndarray  # float32 (m, COLOUR_DIM)
    dhash: np.ndarray  # uint64 (m,)
    sha1: list[str]
    problems: list[RowProblem]


def encode_rows(
    cat: Catalog,
    positions: list[int],
    enc: Encoder,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    bar: Any = None,
) -> Encoded:
    """Decode, describe and embed some rows of a catalogue (the stage ``build`` and live changes share)."""
    if workers > 1 and getattr(enc, "streams", 1) > 1 and len(positions) > batch_size:
        return _encode_in_workers(cat, positions, enc, batch_size=batch_size, workers=workers, bar=bar)
    out = _Collected(cat, positions, enc.dim)
    batch_pos: list[int] = []
    batch_px: list[np.ndarray] = []

    def flush() -> None:
        if batch_pos:
            out.raw[batch_pos] = enc.encode_pixels(np.stack(batch_px))
            if bar is not None:
                bar.update(len(batch_pos))
            batch_pos.clear()
            batch_px.clear()

    stream = _decoded_stream([cat.image_paths[i] for i in positions], enc.preprocess, workers,
                             ahead=max(2 * batch_size, 4 * workers))
    for j, decoded, reason, digest in stream:
        if not out.add(j, decoded, reason, digest):
            if bar is not None:
                bar.update(1)
            continue
        batch_pos.append(j)
        batch_px.append(decoded.pixels)  # type: ignore[union-attr]  # None was handled above (a problem row)
        if len(batch_pos) >= batch_size:
            flush()
    flush()
    return out.encoded()


class _Collected:
    """What the photo stage makes of some catalogue rows, filled in as they come."""

    def __init__(self, cat: Catalog, positions: list[int], dim: int) -> None:
        m = len(positions)
        self.cat, self.positions = cat, positions
        self.raw = np.zeros((m, dim), dtype=np.float32)
        self.colour = np.zeros((m, COLOUR_DIM), dtype=np.float32)
        self.dhash = np.zeros(m, dtype=np.uint64)
        self.sha1 = [""] * m
        self.ok = np.zeros(m, dtype=bool)
        self.problems: list[RowProblem] = []

    def add(self, j: int, decoded: Decoded | None, reason: str, digest: str) -> bool:
        """Keep item ``j``'s descriptors, or report why it has none; whether it has them."""
        if decoded is None:
            self.problems.append(row_problem(self.cat, self.positions[j], reason))
            return False
        self.colour[j], self.dhash[j], self.sha1[j] = decoded.colour, decoded.dhash, digest
        self.ok[j] = True
        return True

    def encoded(self) -> Encoded:
        keep = np.flatnonzero(self.ok)
        return Encoded([self.positions[j] for j in keep], self.raw[keep], self.colour[keep], self.dhash[keep],
                       [self.sha1[j] for j in keep], self.problems)


def _encode_in_workers(
    cat: Catalog, positions: list[int], enc: Encoder, *, batch_size: int, workers: int, bar: Any
) -> Encoded:
    """:func:`encode_rows` with each worker decoding and embedding batches of its own."""
    m = len(positions)
    paths = [cat.image_paths[i] for i in positions]
    # batches small enough that the last ones keep every worker busy to the end
    size = max(4, min(batch_size, -(-m // (4 * workers))))
    batches = [range(s, min(s + size, m)) for s in range(0, m, size)]

    def work(batch: range) -> tuple[list[tuple[int, Decoded | None, str, str]], np.ndarray | None]:
        items = [(j, *_read_and_decode(paths[j], enc.preprocess)) for j in batch]
        pixels = [d.pixels for _, d, _, _ in items if d is not None]
        return items, enc.encode_pixels(np.stack(pixels)) if pixels else None

    out = _Collected(cat, positions, enc.dim)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-embed") as pool:
        results = _in_order(pool, work, batches, workers + 1)
        load = getattr(enc, "load", None)
        if load is not None:
            load()  # while the workers decode their first photos
        for items, vectors in results:
            done = [j for j, decoded, reason, digest in items if out.add(j, decoded, reason, digest)]
            if done:
                out.raw[done] = vectors
            if bar is not None:
                bar.update(len(items))
    return out.encoded()


class LocalEngine:
    """Decode with a thread pool and embed in this process (the default engine)."""

    name = "local"
    fetches_urls = False  # load_catalog fetches photo URLs in this process

    def session(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def fetch(self, urls: list[str], folder: str | os.PathLike, settings: FetchSettings, *,
              show_progress_bar: bool | None = None) -> dict[str, Fetched]:
        """Fetch photo URLs here (what ``load_catalog`` does), for a catalogue read without."""
        from lookalike.reading.fetch import PhotoFetcher

        return PhotoFetcher.from_settings(folder, settings).fetch(urls, show_progress_bar=show_progress_bar)

    def encode(
        self,
        cat: Catalog,
        positions: list[int],
        enc: Encoder,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
        bar: Any = None,
    ) -> Encoded:
        return encode_rows(cat, positions, enc, batch_size=batch_size, workers=workers, bar=bar)

    def __repr__(self) -> str:
        return "LocalEngine()"
