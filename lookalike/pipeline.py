"""``build()``: catalogue -> photos -> embeddings -> index folder.

Photos are read and decoded by a thread pool (Pillow releases the GIL while it decodes,
and JPEG draft mode decodes big photos at 1/2 to 1/8 scale) while the model encodes the
previous batch. Rows whose photo can't be used are reported, never dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from . import __version__
from .artifacts import commit_dir, read_manifest, staging_dir, write_manifest
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
from .encoders import DEFAULT_MODEL, DEFAULT_POOLING, DEFAULT_RESIZE, Encoder, get_encoder, l2_normalize
from .errors import InvalidQueryError, LookalikeError
from .images import COLOUR_DIM, Decoded, Preprocess, load
from .index import BACKENDS, DEFAULT_BACKEND, make_index
from .projection import DEFAULT_PROJECTION_DIM, Projection

logger = logging.getLogger(__name__)

__all__ = ["build", "BuildReport"]


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
            lines.append(f"skipped {self.skipped} rows (see {self.out / 'report.csv'}):")
            lines += [f"  {n:6d}  {reason}" for reason, n in self.reasons().items()]
        if self.duplicate_groups:
            lines.append(
                f"{self.duplicate_rows} products share a photo with another "
                f"({self.duplicate_groups} groups; `lookalike duplicates {self.out}`)"
            )
        return "\n".join(lines)


def _read_and_decode(path: Path, pre: Preprocess) -> tuple[Decoded | None, str, str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable file: {exc.strerror or exc}", ""
    if not data:
        return None, "empty file", ""
    digest = hashlib.sha1(data).hexdigest()
    decoded, reason = load(data, pre)
    return decoded, reason, digest


def _decoded_stream(
    paths: list[Path], pre: Preprocess, workers: int, ahead: int
) -> Iterator[tuple[int, Decoded | None, str, str]]:
    """Yield (position, decoded, reason, sha1) in order, decoding ``ahead`` items in advance."""
    if workers <= 1:
        for i, p in enumerate(paths):
            yield (i, *_read_and_decode(p, pre))
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-decode") as pool:
        pending: deque[tuple[int, Future[Any]]] = deque()
        it = iter(enumerate(paths))
        for i, p in it:
            pending.append((i, pool.submit(_read_and_decode, p, pre)))
            if len(pending) >= ahead:
                break
        while pending:
            i, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt[0], pool.submit(_read_and_decode, nxt[1], pre)))
            yield (i, *fut.result())


def _reusable(
    out: Path, settings: dict[str, Any]
) -> tuple[dict[str, tuple[str, np.ndarray, np.ndarray, int]], Projection | None]:
    """Rows of an existing index built with the same settings: id -> (sha1, vector, colour, dhash).

    Reused rows are already projected, so the old projection is kept for the new rows too.
    """
    from .artifacts import load_arrays

    try:
        manifest = read_manifest(out)
        if any(manifest.get("model", {}).get(k) != v for k, v in settings.items()):
            logger.info("existing index was built with other settings; encoding everything")
            return {}, None
        vectors, colour, meta = load_arrays(out, manifest)
    except LookalikeError as exc:
        logger.info("can't reuse %s: %s", out, exc)
        return {}, None
    id_col = manifest["catalog"]["id_column"]
    # cosine indexes keep normalised vectors; normalising them again changes nothing
    rows = {
        pid: (sha, np.asarray(vectors[i]), colour[i], int(np.int64(dh).view(np.uint64)))
        for i, (pid, sha, dh) in enumerate(zip(meta[id_col], meta["_sha1"], meta["_dhash"]))
    }
    return rows, Projection.load(out)


def build(
    catalog: str | os.PathLike | pd.DataFrame | Catalog,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike | None = None,
    id_column: str = DEFAULT_ID_COLUMN,
    image_column: str = DEFAULT_IMAGE_COLUMN,
    model: str = DEFAULT_MODEL,
    pooling: str = DEFAULT_POOLING,
    metric: str = DEFAULT_METRIC,
    weights: str | os.PathLike | None = None,
    resize: str = DEFAULT_RESIZE,
    size: int | None = None,
    precision: str | None = None,
    projection_dim: int | None = DEFAULT_PROJECTION_DIM,
    runtime: str = "onnx",
    backend: str = DEFAULT_BACKEND,
    colour_weight: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    update: bool = False,
    encoder: Encoder | None = None,
    show_progress_bar: bool | None = None,
) -> BuildReport:
    """Build an index folder from a catalogue; see :mod:`lookalike.artifacts` for its layout.

    With ``update=True`` rows of an existing index at ``out`` whose id and photo bytes are
    unchanged are reused instead of encoded again: adding products costs only the new ones.
    ``size`` is the side of the square model input (``None``: the model's default, 320 px for
    efficientnet-lite0, 224 px for resnet50); ``precision`` is ``"int8"`` or ``"fp32"``
    (``None``: the model's default, int8 for efficientnet-lite0, about twice as fast).
    """
    t0 = time.perf_counter()
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
    out = Path(out)
    cat = catalog if isinstance(catalog, Catalog) else load_catalog(
        catalog, images=images, id_column=id_column, image_column=image_column
    )
    enc = encoder or get_encoder(
        model, pooling=pooling, weights=weights, runtime=runtime, resize=resize, size=size, precision=precision
    )
    settings = {"name": enc.name, "pooling": enc.pooling, "resize": enc.preprocess.resize,
                "input_size": enc.preprocess.size, "precision": getattr(enc, "precision", "fp32"),
                "dim": enc.dim, "projection_dim": projection_dim or 0}
    reuse, projection = _reusable(out, settings) if update and out.exists() else ({}, None)
    if not reuse:
        projection = None
    stored_dim = projection.dim if projection is not None else enc.dim

    n = len(cat.image_paths)
    raw = np.zeros((n, enc.dim), dtype=np.float32)
    reused_vec = np.zeros((n, stored_dim), dtype=np.float32) if reuse else None
    was_reused = np.zeros(n, dtype=bool)
    colour = np.zeros((n, COLOUR_DIM), dtype=np.float32)
    dhashes = np.zeros(n, dtype=np.uint64)
    sha1s = [""] * n
    ok = np.zeros(n, dtype=bool)
    problems = list(cat.problems)
    reused = 0

    from tqdm.auto import tqdm

    bar = tqdm(total=n, unit="photo", desc="build", disable=not progress_enabled(show_progress_bar))
    batch_pos: list[int] = []
    batch_px: list[np.ndarray] = []

    def flush() -> None:
        if batch_pos:
            raw[batch_pos] = enc.encode_pixels(np.stack(batch_px))
            bar.update(len(batch_pos))
            batch_pos.clear()
            batch_px.clear()

    ids = cat.ids
    todo: list[int] = []
    for i, pid in enumerate(ids):
        hit = reuse.get(pid)
        if hit is not None:
            try:
                digest = hashlib.sha1(cat.image_paths[i].read_bytes()).hexdigest()
            except OSError:
                digest = ""
            if digest == hit[0] and reused_vec is not None and len(hit[1]) == stored_dim:
                reused_vec[i], colour[i], dhashes[i], sha1s[i] = hit[1], hit[2], hit[3], digest
                ok[i] = True
                was_reused[i] = True
                reused += 1
                bar.update(1)
                continue
        todo.append(i)
    try:
        stream = _decoded_stream([cat.image_paths[i] for i in todo], enc.preprocess, workers,
                                 ahead=max(2 * batch_size, 4 * workers))
        for j, decoded, reason, digest in stream:
            i = todo[j]
            if decoded is None:
                problems.append(RowProblem(cat.rows[i], ids[i], str(cat.table[cat.image_column].iat[i]), reason))
                bar.update(1)
                continue
            colour[i], dhashes[i], sha1s[i] = decoded.colour, decoded.dhash, digest
            ok[i] = True
            batch_pos.append(i)
            batch_px.append(decoded.pixels)
            if len(batch_pos) >= batch_size:
                flush()
        flush()
    finally:
        bar.close()

    keep = np.flatnonzero(ok)
    fresh = ~was_reused
    if projection is None and projection_dim and enc.dim > projection_dim and ok.sum() > 1:
        projection = Projection.fit(raw[ok & fresh], projection_dim)
    if projection is not None:
        stored = projection.apply(raw) if fresh.any() else np.zeros((n, projection.dim), np.float32)
    else:
        stored = raw
    if reused_vec is not None:
        stored[was_reused] = reused_vec[was_reused]
    raw, colour, dhashes = stored[keep], colour[keep], dhashes[keep]
    sha1s = [sha1s[i] for i in keep]
    vectors = l2_normalize(raw) if metric == "cosine" else raw
    meta = cat.table.iloc[keep].reset_index(drop=True).astype(str)
    meta["_image"] = [str(cat.image_paths[i].resolve()) for i in keep]
    meta["_row"] = [cat.rows[i] for i in keep]
    meta["_sha1"] = sha1s
    meta["_dhash"] = dhashes.astype(np.int64)  # parquet has no uint64 in every reader
    # compare photos in a centred space (projected vectors already are), where cosine spreads
    unit = l2_normalize(raw if projection is not None else raw - raw.mean(axis=0)) if len(raw) else raw
    exact_groups, near_groups = find_duplicate_groups(sha1s, dhashes, unit, colour)
    meta["_dup_exact"] = exact_groups
    meta["_dup_near"] = near_groups

    tmp = staging_dir(out)
    try:
        np.save(tmp / "vectors.npy", vectors)
        np.save(tmp / "colour.npy", colour)
        meta.to_parquet(tmp / "metadata.parquet", index=False)
        problems.sort(key=lambda p: p.row)
        report = pd.DataFrame(
            [{"row": r, "id": pid, "image": str(cat.table[cat.image_column].iat[i]), "status": "indexed", "reason": ""}
             for i, r, pid in ((i, cat.rows[i], ids[i]) for i in keep)]
            + [{"row": p.row, "id": p.id, "image": p.image, "status": "skipped", "reason": p.reason} for p in problems],
            columns=["row", "id", "image", "status", "reason"],
        ).sort_values("row", kind="stable")
        report.to_csv(tmp / "report.csv", index=False)
        _write_duplicates(tmp, meta, cat.id_column)
        if projection is not None:
            projection.save(tmp)
        index = make_index(backend, np.hstack([vectors, colour]) if metric == "cosine" else vectors, metric=metric)
        index.save(tmp)
        seconds = time.perf_counter() - t0
        dup_rows = int((meta["_dup_near"] >= 0).sum())
        n_groups = int(meta.loc[meta["_dup_near"] >= 0, "_dup_near"].nunique())
        write_manifest(tmp, {
            "lookalike_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": {**settings, "weights": getattr(enc, "weights_id", ""),
                      "runtime": getattr(enc, "runtime", "")},
            "dim": int(vectors.shape[1]),
            "projection": None if projection is None else {"kind": "pca", "dim": projection.dim,
                                                          "input_dim": projection.input_dim},
            "colour_dim": COLOUR_DIM,
            "metric": metric,
            "rows": int(len(vectors)),
            "index": {"backend": backend},
            "colour_weight": colour_weight,
            "duplicates": {"near_cosine": NEAR_COSINE, "near_hamming": NEAR_HAMMING, "near_colour": NEAR_COLOUR,
                           "groups": n_groups, "rows": dup_rows},
            "catalog": {
                "path": str(cat.source.resolve()) if cat.source else None,
                "sha256": cat.sha256,
                "rows_total": cat.total_rows,
                "id_column": cat.id_column,
                "image_column": cat.image_column,
                "images_root": cat.images_root and str(cat.images_root), "allow_outside_images": cat.allow_outside_images,
                "columns": [c for c in cat.table.columns],
            },
            "build": {"batch_size": batch_size, "workers": workers, "seconds": round(seconds, 3),
                      "reused": reused},
            "report": {"indexed": int(len(keep)), "skipped": len(problems)},
        })
        commit_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = BuildReport(out=out, total_rows=cat.total_rows, indexed=int(len(keep)), problems=problems,
                         reused=reused, seconds=time.perf_counter() - t0,
                         duplicate_groups=n_groups, duplicate_rows=dup_rows)
    logger.info("%s", result.summary())
    return result


def _write_duplicates(folder: Path, meta: pd.DataFrame, id_column: str) -> None:
    dup = meta[meta["_dup_near"] >= 0]
    rows = []
    for gid, grp in dup.groupby("_dup_near", sort=True):
        kinds = "identical" if grp["_sha1"].nunique() == 1 else "near-identical"
        rows.append({"group": int(gid), "kind": kinds, "size": len(grp), "ids": " ".join(grp[id_column])})
    pd.DataFrame(rows, columns=["group", "kind", "size", "ids"]).to_csv(folder / "duplicates.csv", index=False)
