"""Build engines: where the photo stage of a build runs (read, decode, describe, embed).

An engine is one method with one signature::

    engine.encode(cat, positions, enc, *, batch_size, workers, bar) -> Encoded

``positions`` are catalogue rows (0-based); the result holds the rows that succeeded with
their pooled model output, colour descriptor, dHash and SHA-1, and every other requested
row as a :class:`~lookalike.reading.catalog.RowProblem` with its reason. ``bar`` (a tqdm bar or
``None``) advances by one per row. Engines:

``local``  (default) a thread pool decodes, this process embeds; the exact reference.
``ray``    Ray Data actors each read, decode and embed shards of rows, on this machine or
           a Ray cluster (extra ``ray``). The encoder itself never travels: the engine ships
           :class:`~lookalike.encoders.EncoderSettings` and the exported model file.

Photo URLs: an engine whose ``fetches_urls`` is true fetches a catalogue's ``http(s)://``
photos itself (``engine.fetch(urls, folder, settings) -> {url: Fetched}``; the ray engine, in
its actors), so ``build`` reads the catalogue with ``load_catalog(fetch_urls=False)`` and
resolves them with ``Catalog.with_fetched``; otherwise ``load_catalog`` fetches them in this
process. ``engine.session()`` holds what the stages run on (one private Ray for both).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from lookalike.config import FetchSettings
from lookalike.encoders import Encoder
from lookalike.engines.local import Encoded, LocalEngine, encode_rows
from lookalike.errors import InvalidQueryError
from lookalike.reading.catalog import Catalog

if TYPE_CHECKING:
    from lookalike.reading.fetch import Fetched

__all__ = ["Engine", "ENGINES", "DEFAULT_ENGINE", "get_engine", "LocalEngine", "Encoded", "encode_rows"]

ENGINES = ("local", "ray")
DEFAULT_ENGINE = "local"


class Engine(Protocol):
    """Runs the photo stage of a build for some catalogue rows."""

    name: str
    #: whether :meth:`fetch` runs elsewhere than this process (else load_catalog fetches here)
    fetches_urls: bool

    def session(self) -> AbstractContextManager[Any]: ...

    def fetch(self, urls: list[str], folder: str | os.PathLike, settings: FetchSettings, *,
              show_progress_bar: bool | None = None) -> dict[str, Fetched]: ...

    def encode(
        self,
        cat: Catalog,
        positions: list[int],
        enc: Encoder,
        *,
        batch_size: int,
        workers: int,
        bar: Any = None,
    ) -> Encoded: ...


def get_engine(name: str = DEFAULT_ENGINE, *, ray_address: str | None = None, actors: int | None = None) -> Engine:
    """The engine called ``name``; ``ray_address`` and ``actors`` are the ray engine's options.

    Raises :class:`~lookalike.errors.MissingDependencyError` for ``ray`` without the extra.
    """
    if name not in ENGINES:
        raise InvalidQueryError(f"unknown build engine {name!r}; choose one of {', '.join(ENGINES)}")
    if actors is not None and (isinstance(actors, bool) or actors < 1):
        raise InvalidQueryError(f"actors must be 1 or more, not {actors}")
    if name == "local":
        if ray_address is not None or actors is not None:
            raise InvalidQueryError("ray_address and actors are options of the ray engine (engine='ray')")
        return LocalEngine()
    from lookalike.engines.ray import RayEngine

    return RayEngine(address=ray_address, actors=actors)
