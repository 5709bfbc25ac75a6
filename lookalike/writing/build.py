"""``build()``: catalogue -> photos -> embeddings -> index folder.

The photo stage (read, decode, describe, embed) runs on an engine (:mod:`lookalike.engines`):
in this process by default, or on a Ray cluster. Rows whose photo can't be used are
reported, never dropped silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lookalike.config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_IMAGE_SEPARATOR,
    DEFAULT_METRIC,
    DEFAULT_WORKERS,
    METRICS,
    check_colour_weight,
    progress_enabled,
)
from lookalike.encoders import (
    DEFAULT_MODEL,
    DEFAULT_POOLING,
    DEFAULT_RESIZE,
    DEFAULT_TRIM,
    Encoder,
    get_encoder,
    l2_normalize,
    prepare_once,
    runtime_record,
)
from lookalike.engines import DEFAULT_ENGINE, get_engine
from lookalike.errors import CatalogError, InvalidQueryError, LookalikeError
from lookalike.folder.manifest import BackendSettings, CatalogSettings, Manifest, ModelSettings
from lookalike.folder.projection import DEFAULT_PROJECTION_DIM, Projection
from lookalike.folder.rows import StoredRows, file_sha1s, hidden_columns, photo_keys, searchable, stored_vectors
from lookalike.folder.store import Store
from lookalike.reading.catalog import Catalog, RowProblem, load_catalog
from lookalike.reading.images import COLOUR_DIM
from lookalike.search.backends import BACKENDS, DEFAULT_BACKEND, make_index
from lookalike.search.filters import numeric_columns
from lookalike.writing.duplicates import NEAR_COLOUR, NEAR_COSINE, NEAR_HAMMING, find_duplicate_groups

logger = logging.getLogger(__name__)

__all__ = ["build", "BuildReport", "report_table"]


@dataclass
class BuildReport:
    """What a build did: how many rows it indexed, which it could not, and why."""

    out: Path
    total_rows: int
    indexed: int  # products
    problems: list[RowProblem] = field(default_factory=list)
    reused: int = 0
    seconds: float = 0.0
    duplicate_groups: int = 0
    duplicate_rows: int = 0
    #: the per-row report the build saved in the index (``generations/<N>.report.csv``)
    report_path: Path | None = None
    #: photos indexed (``indexed`` when every product has one)
    photos: int = 0
    #: the products indexed (a problem of one of these is a photo it lost, not the product)
    indexed_ids: frozenset[str] = frozenset()

    @property
    def skipped(self) -> int:
        return len(self.problems)

    @property
    def photo_problems(self) -> list[RowProblem]:
        """Problems of photos whose product was indexed with its other photos."""
        return [p for p in self.problems if p.photo and p.id in self.indexed_ids]

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            key = p.reason.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        what = (f"{self.indexed} of {self.total_rows} catalogue rows" if self.photos in (0, self.indexed)
                else f"{self.indexed} products ({self.photos} photos) from {self.total_rows} catalogue rows")
        lines = [f"indexed {what} into {self.out} in {self.seconds:.1f} s"
                 + (f" ({self.reused} reused)" if self.reused else "")]
        if self.problems:
            lost = len(self.photo_problems)
            also = f", {lost} of them photos of products indexed with their others" if lost else ""
            lines.append(f"skipped {self.skipped} rows{also} (see {self.report_path or 'the reasons below'}):")
            lines += [f"  {n:6d}  {reason}" for reason, n in self.reasons().items()]
        if self.duplicate_groups:
            lines.append(
                f"{self.duplicate_rows} products share a photo with another "
                f"({self.duplicate_groups} groups; `lookalike duplicates {self.out}`)"
            )
        return "\n".join(lines)


def report_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A per-row report: one line per catalogue row touched, sorted by row."""
    return pd.DataFrame(rows, columns=["row", "id", "image", "status", "reason"]).sort_values("row", kind="stable")


def _check_settings(metric: str, backend: str, colour_weight: float | None, batch_size: int, workers: int,
                    projection_dim: int | None) -> float:
    if metric not in METRICS:
        raise InvalidQueryError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if backend not in BACKENDS:
        raise InvalidQueryError(f"unknown index back end {backend!r}; choose one of {', '.join(BACKENDS)}")
    if colour_weight is None:  # the default blend for cosine; euclidean has no blend
        colour_weight = DEFAULT_COLOUR_WEIGHT if metric == "cosine" else 0.0
    colour_weight = check_colour_weight(colour_weight)
    if metric == "euclidean" and colour_weight:
        raise InvalidQueryError("colour blending needs metric cosine")
    if batch_size < 1 or workers < 0:
        raise InvalidQueryError("batch size must be >= 1 and workers >= 0")
    Projection.check_dim(projection_dim)
    return float(colour_weight)


def build(
    catalog: str | os.PathLike | pd.DataFrame | Catalog,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    id_column: str = DEFAULT_ID_COLUMN,
    image_column: str | Sequence[str] = DEFAULT_IMAGE_COLUMN,
    image_separator: str = DEFAULT_IMAGE_SEPARATOR,
    parent_column: str | None = None,
    allow_outside_images: bool = False,
    photo_cache: str | os.PathLike | None = None,
    private_urls: bool = True,
    model: str = DEFAULT_MODEL,
    pooling: str = DEFAULT_POOLING,
    metric: str = DEFAULT_METRIC,
    weights: str | os.PathLike | None = None,
    resize: str = DEFAULT_RESIZE,
    trim: bool = DEFAULT_TRIM,
    size: int | None = None,
    precision: str | None = None,
    projection_dim: int | None = DEFAULT_PROJECTION_DIM,
    projection: Projection | None = None,
    runtime: str = "auto",
    backend: str = DEFAULT_BACKEND,
    colour_weight: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    update: bool = False,
    encoder: Encoder | None = None,
    milvus_uri: str | os.PathLike | None = None,
    collection: str | None = None,
    numeric: Sequence[str] = (),
    photo_credit: str = "",
    engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None,
    actors: int | None = None,
    show_progress_bar: bool | None = None,
) -> BuildReport:
    """Build an index folder from a catalogue; see :mod:`lookalike.folder.artifacts` for its layout.

    The new index becomes the folder's next generation in one atomic step: readers see the old
    index or the new one, and a build in which no row could be indexed is refused (raises
    :class:`CatalogError`) instead of replacing an index with an empty one.

    With ``update=True`` rows of an existing index at ``out`` whose id and photo bytes are
    unchanged are reused instead of encoded again: adding products costs only the new ones.
    ``size`` is the side of the square model input (``None``: the model's default, 256 px for
    efficientnet-lite0, 224 px for resnet50); ``precision`` is ``"int8"`` or ``"fp32"``
    (``None``: the model's default, int8 for efficientnet-lite0, about twice as fast).
    ``projection`` applies an already fitted projection instead of fitting one. Photos must lie
    inside ``images`` unless ``allow_outside_images`` (absolute paths, ``../``, outside links).
    Photo URLs are fetched into ``photo_cache`` (:func:`~lookalike.reading.catalog.load_catalog`; by Ray tasks
    on ray). Columns whose cells are all numbers are recorded as numeric; ``numeric`` declares more. The page
    shows ``photo_credit`` under the photos (a rebuild without one keeps the index's). A product may have several
    photos (``image_column`` several columns, cells split by ``image_separator``, several rows with its id); it
    scores by its best. ``parent_column`` names a variant's parent.

    ``backend="milvus"`` writes the vectors to a new Milvus collection (``collection``, default the folder's
    name, with a suffix per build) at ``milvus_uri``: a ``.db`` path for Milvus Lite, ``http(s)://host:19530``
    for a server (token in ``$LOOKALIKE_MILVUS_TOKEN``).
    ``engine`` runs the photo stage: ``"local"`` in this process, ``"ray"`` on Ray Data actors (extra ``ray``;
    ``ray_address`` a cluster, ``actors`` their number); both write the same index (:mod:`lookalike.engines`).
    """
    t0 = time.perf_counter()
    opts = _Options(metric, backend, _check_settings(metric, backend, colour_weight, batch_size, workers, projection_dim),
                    projection_dim, projection, batch_size, workers, update, milvus_uri, collection, runtime,
                    show_progress_bar, tuple(numeric), str(photo_credit or "").strip())
    runner = get_engine(engine, ray_address=ray_address, actors=actors)
    out = _check_out(Path(out), opts)
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(
        catalog, images=images, id_column=id_column, image_column=image_column,
        image_separator=image_separator, parent_column=parent_column, allow_outside_images=allow_outside_images,
        photo_cache=photo_cache, private_urls=private_urls, show_progress_bar=show_progress_bar,
        fetch_urls=not runner.fetches_urls)  # else the engine fetches them (the ray engine, in its actors)
    _check_numeric(cat, opts.numeric)
    enc = encoder or get_encoder(
        model, pooling=pooling, weights=weights, runtime=runtime, resize=resize, trim=trim, size=size,
        precision=precision, streams=workers if runner.name == "local" else 1)  # each local worker embeds its own batches
    with runner.session() if cat.unfetched else contextlib.nullcontext():  # one Ray for both stages
        return _build(_fetched(cat, runner, show_progress_bar), out, enc, runner, opts, t0)


def _fetched(cat: Catalog, runner: Any, show_progress_bar: bool | None) -> Catalog:
    """The catalogue with the photo URLs it left unfetched fetched by the engine (the ray engine's
    actors), into the photo cache, resolved as ``load_catalog`` resolves those it fetches."""
    if not cat.unfetched:
        return cat
    assert cat.photo_cache is not None and cat.fetch_settings is not None  # set with unfetched
    got = runner.fetch(cat.unfetched, cat.photo_cache, cat.fetch_settings, show_progress_bar=show_progress_bar)
    return cat.with_fetched(got)


def _check_out(out: Path, opts: "_Options") -> Path:
    """Where the index goes, and a Milvus build's location, checked before any work."""
    if opts.backend == "milvus" and (not opts.milvus_uri or opts.metric != "cosine"):
        raise InvalidQueryError("--backend milvus needs --milvus-uri (a .db path or http://host:19530) and metric cosine")
    if out.exists() and not out.is_dir():
        raise InvalidQueryError(f"--out {out} is a file; give a folder for the index")
    return out


def _check_numeric(cat: Catalog, numeric: Sequence[str]) -> None:
    """Columns declared numeric must be catalogue columns (not a photo column)."""
    for col in numeric:
        if col not in cat.table.columns or col in cat.image_columns:
            raise InvalidQueryError(f"can't declare {col!r} numeric: the catalogue's columns are "
                                    f"{', '.join(c for c in cat.table.columns if c not in cat.image_columns)}")


@dataclass(frozen=True)
class _Options:
    """A build's settings beyond the catalogue, the model and the engine (see :func:`build`)."""

    metric: str
    backend: str
    colour_weight: float
    projection_dim: int | None
    projection: Projection | None
    batch_size: int
    workers: int
    update: bool
    milvus_uri: str | os.PathLike | None
    collection: str | None
    runtime: str
    show_progress_bar: bool | None
    numeric: tuple[str, ...] = ()
    photo_credit: str = ""


def _build(cat: Catalog, out: Path, enc: Encoder, runner: Any, opts: _Options, t0: float) -> BuildReport:
    """The stages: plan (what to embed, what to reuse) -> the engine's photo stage -> finalize
    (projection, duplicates, rows) -> commit."""
    model = ModelSettings(name=enc.name, pooling=enc.pooling, dim=enc.dim, resize=enc.preprocess.resize,
                          trim=enc.preprocess.trim, input_size=enc.preprocess.size,
                          precision=getattr(enc, "precision", "fp32"), projection_dim=opts.projection_dim or 0,
                          weights=getattr(enc, "weights_id", ""),
                          requested_runtime=str(getattr(enc, "runtime", opts.runtime)))
    plan = _plan(cat, out, model, opts.projection, update=opts.update, workers=opts.workers)
    if plan.todo:  # photos to embed: a model made on this machine first says so, before the bar
        prepare_once(enc, show_progress_bar=opts.show_progress_bar)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(cat.image_paths), unit="photo", desc="build",
               disable=not progress_enabled(opts.show_progress_bar))
    bar.update(len(plan.reused))
    try:
        encoded = runner.encode(cat, plan.todo, enc, batch_size=opts.batch_size, workers=opts.workers, bar=bar)
    finally:
        bar.close()
    rows = _finalize(cat, plan, encoded, enc.dim, opts.projection_dim, opts.metric, out)
    build_info = {"engine": runner.name, "batch_size": opts.batch_size, "workers": opts.workers,
                  "seconds": round(time.perf_counter() - t0, 3), "reused": len(plan.reused)}
    settings = _manifest(cat, rows, replace(model, **runtime_record(enc)), opts, build_info)  # runtime: chosen now
    settings = _kept_steering(out, settings)
    _commit(out, rows, settings, milvus_uri=opts.milvus_uri, collection=opts.collection)
    result = BuildReport(out=out, total_rows=cat.total_rows, indexed=len(rows.products), problems=rows.problems,
                         reused=len(plan.reused), seconds=time.perf_counter() - t0,
                         duplicate_groups=rows.duplicate_groups, duplicate_rows=rows.duplicate_rows,
                         report_path=Store(out).report_path(), photos=len(rows.positions),
                         indexed_ids=frozenset(rows.products))
    logger.info("%s", result.summary())
    return result


def _kept_steering(out: Path, settings: Manifest) -> Manifest:
    """A rebuild keeps the shop's query defaults and rules (``lookalike settings``/``rules``) of
    the index it replaces; a rule whose products the catalogue lost stays, inert, until removed."""
    store = Store(out)
    try:
        previous = Manifest.from_json(store.generation_record(store.current_generation()), out)
    except LookalikeError:  # no index there yet, or one that can't be read: nothing to keep
        return settings
    return settings.steered_like(previous)


def _manifest(cat: Catalog, rows: "_Rows", model: ModelSettings, opts: _Options, build_info: dict[str, Any]) -> Manifest:
    """The settings the new generation records (the back end's location is added at commit)."""
    return Manifest(
        model=model,
        dim=int(rows.vectors.shape[1]),
        projection=None if rows.projection is None else {"kind": "pca", "dim": rows.projection.dim,
                                                         "input_dim": rows.projection.input_dim},
        colour_dim=COLOUR_DIM,
        metric=opts.metric,
        index=BackendSettings(opts.backend),
        colour_weight=opts.colour_weight,
        duplicates={"near_cosine": NEAR_COSINE, "near_hamming": NEAR_HAMMING, "near_colour": NEAR_COLOUR,
                    "groups": rows.duplicate_groups, "rows": rows.duplicate_rows},
        catalog=CatalogSettings(
            path=str(cat.source.resolve()) if cat.source else None, sha256=cat.sha256, rows_total=cat.total_rows,
            id_column=cat.id_column, image_column=cat.image_column, image_columns=tuple(cat.image_columns),
            image_separator=cat.image_separator, parent_column=cat.parent_column, layout=cat.layout,
            images_root=str(cat.images_root) if cat.images_root else None,
            allow_outside_images=cat.allow_outside_images, columns=tuple(cat.table.columns),
            photo_cache=str(cat.photo_cache) if cat.photo_cache else None, private_urls=cat.private_urls,
            numeric_columns=_numeric(cat, rows.positions, opts.numeric), photo_credit=opts.photo_credit),
        build=build_info,
        report={"indexed": len(rows.products), "skipped": len(rows.problems),
                **({"photos": len(rows.positions)} if len(rows.positions) != len(rows.products) else {})},
    )


def _numeric(cat: Catalog, positions: list[int], declared: Sequence[str]) -> tuple[str, ...]:
    """The columns recorded as numeric: all numbers in the indexed rows, or declared, in table order."""
    found = numeric_columns(cat.table.iloc[positions], skip=cat.image_columns)
    return tuple(str(c) for c in cat.table.columns if c in found or c in declared)


@dataclass
class _Plan:
    """What a build embeds and what it reuses: catalogue positions, and for the reused ones the
    stored arrays (of an ``--update``'s previous generation, whose projection is kept)."""

    todo: list[int]
    reused: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None
    colour: np.ndarray | None = None
    dhash: np.ndarray | None = None
    sha1: list[str] = field(default_factory=list)
    projection: Projection | None = None


def _plan(cat: Catalog, out: Path, model: ModelSettings, projection: Projection | None, *, update: bool,
          workers: int) -> _Plan:
    """Stage 1: with ``update``, the rows of the index at ``out`` built with the same model
    settings whose photo bytes the catalogue still has (the same reuse path as a live change,
    :class:`~lookalike.folder.rows.StoredRows`); everything else is to embed. Reused rows are projected
    already, so their projection is kept; a given ``projection`` makes them incomparable."""
    everything = _Plan(list(range(len(cat.image_paths))), projection=projection)
    if not update or not out.exists() or projection is not None:
        return everything
    try:
        snap = Store(out).snapshot()
        if not snap.settings.model.same_vectors(model):
            logger.info("existing index was built with other settings; encoding everything")
            return everything
        meta = snap.dense_columns()
    except LookalikeError as exc:
        logger.info("can't reuse %s: %s", out, exc)
        return everything
    stored = StoredRows.of(meta, snap.id_column)
    digests = file_sha1s(cat.image_paths, workers)
    at = [stored.reuse(pid, digest)[0] if digest else None for pid, digest in zip(cat.ids, digests)]
    reused = [i for i, row in enumerate(at) if row is not None]
    rows = np.array([at[i] for i in reused], dtype=np.int64)
    vectors, colour = snap.take(rows)
    dhash = np.asarray(meta["_dhash"], dtype=np.int64)[rows].view(np.uint64)
    return _Plan([i for i, row in enumerate(at) if row is None], reused, vectors, colour, dhash,
                 [digests[i] for i in reused], snap.projection)


@dataclass
class _Rows:
    """A build's rows in catalogue order, ready to commit (stage 3's output)."""

    positions: list[int]
    vectors: np.ndarray
    colour: np.ndarray
    meta: pd.DataFrame
    exact: np.ndarray
    near: np.ndarray
    report: pd.DataFrame
    problems: list[RowProblem]
    projection: Projection | None
    products: list[str] = field(default_factory=list)  # each once, in catalogue order

    @property
    def duplicate_rows(self) -> int:
        return int((self.near >= 0).sum())

    @property
    def duplicate_groups(self) -> int:
        return int(len(np.unique(self.near[self.near >= 0])))


def _finalize(cat: Catalog, plan: _Plan, encoded: Any, dim: int, projection_dim: int | None, metric: str,
              out: Path) -> _Rows:
    """Stage 3: the projection (fitted on the new photos unless kept), reused and new rows merged
    in catalogue order, their hidden columns, duplicate groups and the per-row report. A build in
    which no row could be indexed is refused: :class:`CatalogError`, the index left as it was."""
    problems = sorted([*cat.problems, *encoded.problems], key=lambda p: p.row)
    projection = plan.projection
    if projection is None and not plan.reused and projection_dim and dim > projection_dim and len(encoded.positions) > 1:
        projection = Projection.fit(encoded.raw, projection_dim)
    fresh = stored_vectors(encoded.raw, projection, metric)
    order = np.argsort(np.array(plan.reused + encoded.positions, dtype=np.int64), kind="stable")
    positions = [int(p) for p in np.array(plan.reused + encoded.positions, dtype=np.int64)[order]]
    if not positions:
        reasons = BuildReport(out, cat.total_rows, 0, problems).reasons()
        top = ", ".join(f"{n} {reason}" for reason, n in list(reasons.items())[:3])
        raise CatalogError(f"nothing could be indexed: all {cat.total_rows} catalogue rows failed ({top}); "
                           f"{'the index at ' + str(out) + ' was left as it was' if out.exists() else 'no index written'}")
    width = projection.dim if projection is not None else dim
    old_vec = plan.vectors if plan.vectors is not None else np.zeros((0, width), np.float32)
    old_col = plan.colour if plan.colour is not None else np.zeros((0, COLOUR_DIM), np.float32)
    old_dh = plan.dhash if plan.dhash is not None else np.zeros(0, np.uint64)
    vectors = np.concatenate([old_vec.reshape(-1, width), fresh.reshape(-1, width)])[order]
    colour = np.concatenate([old_col.reshape(-1, COLOUR_DIM), encoded.colour.reshape(-1, COLOUR_DIM)])[order]
    dhashes = np.concatenate([old_dh.astype(np.uint64), np.asarray(encoded.dhash, np.uint64)])[order]
    sha1s = [(plan.sha1 + list(encoded.sha1))[j] for j in order]
    meta = cat.table.iloc[positions].reset_index(drop=True).astype(str)
    for col, values in hidden_columns([cat.image_paths[i] for i in positions], [cat.rows[i] for i in positions],
                                      sha1s, dhashes, [cat.refs[i] for i in positions],
                                      [cat.photo_numbers[i] for i in positions]).items():
        meta[col] = values
    # compare photos in a centred space (projected vectors already are), where cosine spreads
    unit = l2_normalize(vectors if projection is not None else vectors - vectors.mean(axis=0))
    exact, near = find_duplicate_groups(sha1s, dhashes, unit, colour)
    ids = cat.ids
    products = list(dict.fromkeys(ids[i] for i in positions))
    indexed = set(products)
    report = report_table(
        [{"row": cat.rows[i], "id": ids[i], "image": cat.refs[i], "status": "indexed", "reason": ""} for i in positions]
        + [{"row": p.row, "id": p.id, "image": p.image, "status": "photo skipped" if p.photo and p.id in indexed else "skipped",
            "reason": p.reason} for p in problems]
    )
    return _Rows(positions, vectors, colour, meta, exact, near, report, problems, projection, products)


def _commit(out: Path, rows: _Rows, settings: Manifest, *, milvus_uri: str | os.PathLike | None,
            collection: str | None) -> None:
    """Stage 4: the vectors to their back end (a new Milvus collection, or the folder's own
    index file), then one segment and one generation, committed atomically."""
    extra: dict[str, bytes] = {}
    if settings.index.backend == "milvus":
        from lookalike.search.backends.milvus import MilvusTarget

        columns = list(settings.catalog.columns)
        target = MilvusTarget.create(out, str(milvus_uri), collection, rows.vectors.shape[1] + rows.colour.shape[1],
                                     columns)
        try:
            target.write(photo_keys(rows.meta[settings.catalog.id_column].tolist(), rows.meta["_photo"].tolist()),
                         rows.vectors, rows.colour, {c: rows.meta[c].tolist() for c in columns})
        finally:
            target.close()
        settings = replace(settings, index=target.settings)
    else:
        extra = make_index(settings.index.backend, searchable(rows.vectors, rows.colour, settings.metric),
                           metric=settings.metric).serialize()
    with Store(out).writer(create=True) as w:
        seg = w.add_segment(rows.vectors, rows.colour, rows.meta, projection=rows.projection, extra=extra)
        w.commit(settings=settings.to_json(), segments=[seg], live=np.ones(len(rows.positions), bool),
                 dup_exact=rows.exact, dup_near=rows.near, report=rows.report, operation={"kind": "build"},
                 projection_segment=seg["name"] if rows.projection is not None else None)
