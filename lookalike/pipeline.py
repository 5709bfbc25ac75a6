"""``build()``: catalogue -> photos -> embeddings -> index folder.

The photo stage (read, decode, describe, embed) runs on an engine (:mod:`lookalike.engines`):
in this process by default, or on a Ray cluster. Rows whose photo can't be used are
reported, never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .catalog import Catalog, RowProblem, load_catalog
from .config import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_COLOUR_WEIGHT,
    DEFAULT_ID_COLUMN,
    DEFAULT_IMAGE_COLUMN,
    DEFAULT_METRIC,
    DEFAULT_WORKERS,
    METRICS,
    progress_enabled,
)
from .duplicates import NEAR_COLOUR, NEAR_COSINE, NEAR_HAMMING, find_duplicate_groups
from .encoders import (
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
from .engines import DEFAULT_ENGINE, get_engine
from .engines.local import Encoded, encode_rows
from .errors import CatalogError, InvalidQueryError, LookalikeError
from .images import COLOUR_DIM
from .index import BACKENDS, DEFAULT_BACKEND, make_index
from .manifest import BackendSettings, CatalogSettings, Manifest, ModelSettings
from .projection import DEFAULT_PROJECTION_DIM, Projection
from .store import Store

logger = logging.getLogger(__name__)

__all__ = ["build", "BuildReport", "Encoded", "encode_rows", "stored_vectors", "hidden_columns", "report_table"]


@dataclass
class BuildReport:
    """What a build did: how many rows it indexed, which it could not, and why."""

    out: Path
    total_rows: int
    indexed: int
    problems: list[RowProblem] = field(default_factory=list)
    reused: int = 0
    seconds: float = 0.0
    duplicate_groups: int = 0
    duplicate_rows: int = 0
    #: the per-row report the build saved in the index (``generations/<N>.report.csv``)
    report_path: Path | None = None

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            key = p.reason.split(":")[0]
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def summary(self) -> str:
        lines = [
            f"indexed {self.indexed} of {self.total_rows} catalogue rows into {self.out} "
            f"in {self.seconds:.1f} s" + (f" ({self.reused} reused)" if self.reused else ""),
        ]
        if self.problems:
            lines.append(f"skipped {self.skipped} rows (see {self.report_path or 'the reasons below'}):")
            lines += [f"  {n:6d}  {reason}" for reason, n in self.reasons().items()]
        if self.duplicate_groups:
            lines.append(
                f"{self.duplicate_rows} products share a photo with another "
                f"({self.duplicate_groups} groups; `lookalike duplicates {self.out}`)"
            )
        return "\n".join(lines)


def stored_vectors(raw: np.ndarray, projection: Projection | None, metric: str) -> np.ndarray:
    """What the index stores for pooled model output: projected, L2-normalised for cosine."""
    out = projection.apply(raw) if projection is not None else np.asarray(raw, dtype=np.float32)
    return l2_normalize(out) if metric == "cosine" else out


def hidden_columns(cat: Catalog, positions: list[int], sha1s: list[str], dhashes: np.ndarray) -> dict[str, Any]:
    """The columns a segment stores beside the catalogue's own (see :mod:`lookalike.artifacts`)."""
    return {
        "_image": [str(cat.image_paths[i].resolve()) for i in positions],
        "_row": [cat.rows[i] for i in positions],
        "_sha1": list(sha1s),
        "_dhash": np.asarray(dhashes, dtype=np.uint64).astype(np.int64),  # parquet has no uint64 everywhere
    }


def report_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A per-row report: one line per catalogue row touched, sorted by row."""
    return pd.DataFrame(rows, columns=["row", "id", "image", "status", "reason"]).sort_values("row", kind="stable")


def _reusable(
    out: Path, model: ModelSettings
) -> tuple[dict[str, tuple[str, np.ndarray, np.ndarray, int]], Projection | None]:
    """Rows of an existing index built with the same settings: id -> (sha1, vector, colour, dhash).

    Reused rows are already projected, so the old projection is kept for the new rows too.
    """
    try:
        snap = Store(out).snapshot()
        if not snap.settings.model.same_vectors(model):
            logger.info("existing index was built with other settings; encoding everything")
            return {}, None
        vectors, colour, meta = snap.dense()
    except LookalikeError as exc:
        logger.info("can't reuse %s: %s", out, exc)
        return {}, None
    id_col = snap.id_column
    # cosine indexes keep normalised vectors; normalising them again changes nothing
    rows = {
        pid: (sha, np.asarray(vectors[i]), colour[i], int(np.int64(dh).view(np.uint64)))
        for i, (pid, sha, dh) in enumerate(zip(meta[id_col], meta["_sha1"], meta["_dhash"]))
    }
    return rows, snap.projection


def _check_settings(metric: str, backend: str, colour_weight: float | None, batch_size: int, workers: int,
                    projection_dim: int | None) -> float:
    if metric not in METRICS:
        raise InvalidQueryError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if backend not in BACKENDS:
        raise InvalidQueryError(f"unknown index back end {backend!r}; choose one of {', '.join(BACKENDS)}")
    if colour_weight is None:  # the default blend for cosine; euclidean has no blend
        colour_weight = DEFAULT_COLOUR_WEIGHT if metric == "cosine" else 0.0
    if not 0.0 <= colour_weight <= 1.0:
        raise InvalidQueryError(f"colour weight must be between 0 and 1, not {colour_weight}")
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
    image_column: str = DEFAULT_IMAGE_COLUMN,
    allow_outside_images: bool = False,
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
    engine: str = DEFAULT_ENGINE,
    ray_address: str | None = None,
    actors: int | None = None,
    show_progress_bar: bool | None = None,
) -> BuildReport:
    """Build an index folder from a catalogue; see :mod:`lookalike.artifacts` for its layout.

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

    ``backend="milvus"`` writes the vectors to a new Milvus collection (``collection``, default
    the folder's name, with a suffix per build) at ``milvus_uri``: a ``.db`` path for Milvus Lite,
    ``http(s)://host:19530`` for a server (token in ``$LOOKALIKE_MILVUS_TOKEN``).

    ``engine`` runs the photo stage: ``"local"`` in this process, ``"ray"`` on Ray Data actors
    (extra ``ray``; ``ray_address`` joins a cluster, ``actors`` sets their number); both write
    the same index (see :mod:`lookalike.engines`).
    """
    t0 = time.perf_counter()
    colour_weight = _check_settings(metric, backend, colour_weight, batch_size, workers, projection_dim)
    if backend == "milvus" and (not milvus_uri or metric != "cosine"):
        raise InvalidQueryError("--backend milvus needs --milvus-uri (a .db path or http://host:19530) and metric cosine")
    runner = get_engine(engine, ray_address=ray_address, actors=actors)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidQueryError(f"--out {out} is a file; give a folder for the index")
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(
        catalog, images=images, id_column=id_column, image_column=image_column,
        allow_outside_images=allow_outside_images,
    )
    enc = encoder or get_encoder(
        model, pooling=pooling, weights=weights, runtime=runtime, resize=resize, trim=trim, size=size,
        precision=precision,
        streams=workers if runner.name == "local" else 1,  # each local worker decodes and embeds its own batches
    )
    model_settings = ModelSettings(name=enc.name, pooling=enc.pooling, dim=enc.dim, resize=enc.preprocess.resize,
                                   trim=enc.preprocess.trim, input_size=enc.preprocess.size,
                                   precision=getattr(enc, "precision", "fp32"), projection_dim=projection_dim or 0,
                                   weights=getattr(enc, "weights_id", ""),
                                   requested_runtime=str(getattr(enc, "runtime", runtime)))
    reuse, old_projection = _reusable(out, model_settings) if update and out.exists() else ({}, None)
    if reuse and projection is None:
        projection = old_projection
    elif reuse:
        reuse = {}  # a given projection makes the old vectors incomparable

    n = len(cat.image_paths)
    ids = cat.ids
    if len(reuse) < n:  # photos to embed: a model made on this machine first says so, before the bar
        prepare_once(enc, show_progress_bar=show_progress_bar)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="photo", desc="build", disable=not progress_enabled(show_progress_bar))
    reused_pos: list[int] = []
    reused_rows: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    todo: list[int] = []
    for i, pid in enumerate(ids):
        hit = reuse.get(pid)
        if hit is not None:
            try:
                digest = hashlib.sha1(cat.image_paths[i].read_bytes()).hexdigest()
            except OSError:
                digest = ""
            if digest == hit[0]:
                reused_pos.append(i)
                reused_rows.append(hit)
                bar.update(1)
                continue
        todo.append(i)
    try:
        enc_rows = runner.encode(cat, todo, enc, batch_size=batch_size, workers=workers, bar=bar)
    finally:
        bar.close()
    problems = list(cat.problems) + enc_rows.problems
    if projection is None and projection_dim and enc.dim > projection_dim and len(enc_rows.positions) > 1:
        projection = Projection.fit(enc_rows.raw, projection_dim)
    fresh = stored_vectors(enc_rows.raw, projection, metric)
    # rows in catalogue order: reused and freshly encoded alike
    order = np.argsort(np.array(reused_pos + enc_rows.positions, dtype=np.int64), kind="stable")
    dim = projection.dim if projection is not None else enc.dim
    reused_vec = np.array([r[1] for r in reused_rows], dtype=np.float32).reshape(-1, dim)
    positions = list(np.array(reused_pos + enc_rows.positions, dtype=np.int64)[order])
    vectors = np.concatenate([reused_vec, fresh])[order]
    colour = np.concatenate([np.array([r[2] for r in reused_rows], np.float32).reshape(-1, COLOUR_DIM),
                             enc_rows.colour])[order]
    dhashes = np.concatenate([np.array([r[3] for r in reused_rows], np.uint64), enc_rows.dhash])[order]
    sha1s = [([r[0] for r in reused_rows] + enc_rows.sha1)[j] for j in order]
    if not positions:
        reasons = BuildReport(out, cat.total_rows, 0, problems).reasons()
        top = ", ".join(f"{n} {reason}" for reason, n in list(reasons.items())[:3])
        raise CatalogError(f"nothing could be indexed: all {cat.total_rows} catalogue rows failed ({top}); "
                           f"{'the index at ' + str(out) + ' was left as it was' if out.exists() else 'no index written'}")
    meta = cat.table.iloc[positions].reset_index(drop=True).astype(str)
    for col, values in hidden_columns(cat, positions, sha1s, dhashes).items():
        meta[col] = values
    # compare photos in a centred space (projected vectors already are), where cosine spreads
    unit = l2_normalize(vectors if projection is not None else vectors - vectors.mean(axis=0))
    exact_groups, near_groups = find_duplicate_groups(sha1s, dhashes, unit, colour)
    problems.sort(key=lambda p: p.row)
    report = report_table(
        [{"row": cat.rows[i], "id": ids[i], "image": str(cat.table[cat.image_column].iat[i]), "status": "indexed",
          "reason": ""} for i in positions]
        + [{"row": p.row, "id": p.id, "image": p.image, "status": "skipped", "reason": p.reason} for p in problems]
    )
    remote = None
    if backend == "milvus":
        remote = _write_milvus(out, str(milvus_uri), collection, vectors, colour, meta, cat)
        extra: dict[str, bytes] = {}
    else:
        extra = make_index(backend, np.hstack([vectors, colour]) if metric == "cosine" else vectors,
                           metric=metric).serialize()
    dup_rows = int((near_groups >= 0).sum())
    n_groups = int(len(np.unique(near_groups[near_groups >= 0])))
    remote = dict(remote or {})
    manifest = Manifest(
        model=replace(model_settings, **runtime_record(enc)),  # the runtime is chosen once photos ran
        dim=int(vectors.shape[1]),
        projection=None if projection is None else {"kind": "pca", "dim": projection.dim,
                                                    "input_dim": projection.input_dim},
        colour_dim=COLOUR_DIM,
        metric=metric,
        index=BackendSettings(backend, uri=remote.pop("uri", ""), collection=remote.pop("collection", ""), extra=remote),
        colour_weight=colour_weight,
        duplicates={"near_cosine": NEAR_COSINE, "near_hamming": NEAR_HAMMING, "near_colour": NEAR_COLOUR,
                    "groups": n_groups, "rows": dup_rows},
        catalog=CatalogSettings(
            path=str(cat.source.resolve()) if cat.source else None, sha256=cat.sha256, rows_total=cat.total_rows,
            id_column=cat.id_column, image_column=cat.image_column,
            images_root=str(cat.images_root) if cat.images_root else None,
            allow_outside_images=cat.allow_outside_images, columns=tuple(cat.table.columns)),
        build={"engine": runner.name, "batch_size": batch_size, "workers": workers,
               "seconds": round(time.perf_counter() - t0, 3), "reused": len(reused_pos)},
        report={"indexed": len(positions), "skipped": len(problems)},
    )
    with Store(out).writer(create=True) as w:
        seg = w.add_segment(vectors, colour, meta, projection=projection, extra=extra)
        w.commit(settings=manifest.to_json(), segments=[seg], live=np.ones(len(positions), bool), dup_exact=exact_groups,
                 dup_near=near_groups, report=report, operation={"kind": "build"},
                 projection_segment=seg["name"] if projection is not None else None)
    result = BuildReport(out=out, total_rows=cat.total_rows, indexed=len(positions), problems=problems,
                         reused=len(reused_pos), seconds=time.perf_counter() - t0,
                         duplicate_groups=n_groups, duplicate_rows=dup_rows, report_path=Store(out).report_path())
    logger.info("%s", result.summary())
    return result


def _write_milvus(out: Path, uri: str, collection: str | None, vectors: np.ndarray, colour: np.ndarray,
                  meta: pd.DataFrame, cat: Catalog) -> dict[str, Any]:
    """A new collection holding every product (readers of the previous build keep theirs)."""
    from .index.milvus import MilvusStore, collection_name, write_rows

    name = collection_name(collection or out.resolve().name)
    columns = [c for c in cat.table.columns]
    local = not uri.startswith(("http://", "https://", "tcp://"))
    uri = str(Path(uri).expanduser().resolve()) if local else uri
    store = MilvusStore(uri)
    try:
        store.create(name, vectors.shape[1] + colour.shape[1], columns)
        write_rows(store, meta[cat.id_column].tolist(), vectors, colour, {c: meta[c].tolist() for c in columns})
        kind = store.index.index_type
    finally:
        store.close()
    return {"uri": uri, "collection": name, "index_type": kind}
