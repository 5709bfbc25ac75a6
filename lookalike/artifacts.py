"""The index folder: the contract between ``build`` and every reader.

::

    INDEX/
      manifest.json      format version, model, pooling, dim, metric, rows, settings, checksums
      vectors.npy        float32 (rows, dim): shape embeddings, L2-normalised for cosine
      colour.npy         float32 (rows, COLOUR_DIM): colour descriptors of the products
      metadata.parquet   row i describes vectors row i: every catalogue column as text, plus
                         _image (photo path), _row (catalogue row), _sha1, _dhash,
                         _dup_exact and _dup_near (duplicate-photo group of the row)
      report.csv         one line per catalogue row: row, id, image, status, reason
      duplicates.csv     groups of identical and near-identical photos
      index.faiss        the HNSW graph, when the back end is hnsw

A build writes a sibling temporary folder and swaps it in only when complete, so an
interrupted build leaves the previous index as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import IndexFormatError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "read_manifest",
    "write_manifest",
    "staging_dir",
    "commit_dir",
    "load_arrays",
]

FORMAT = "lookalike-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = ("vectors.npy", "colour.npy", "metadata.parquet")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise IndexFormatError(f"index not found: {folder}")
    if not path.is_file():
        raise IndexFormatError(f"{folder} is not a lookalike index (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a lookalike manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{folder} has index format {version}; this lookalike reads format {FORMAT_VERSION}: rebuild it"
        )
    return manifest


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")


def staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def commit_dir(tmp: Path, out: Path) -> None:
    """Swap a finished build into place; the old index stays until the new one is there."""
    if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise IndexFormatError(f"{out} exists and is not a lookalike index; not overwriting it")
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_arrays(folder: Path, manifest: dict[str, Any], *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise IndexFormatError(f"{folder} is incomplete: {name} is missing")
    try:
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
        colour = np.load(folder / "colour.npy", allow_pickle=False)
        meta = pd.read_parquet(folder / "metadata.parquet")
    except Exception as exc:  # noqa: BLE001 - numpy, pyarrow and OS errors alike
        raise IndexFormatError(f"{folder} is damaged: {type(exc).__name__}: {exc}") from None
    rows, dim = manifest.get("rows"), manifest.get("dim")
    if vectors.ndim != 2 or vectors.shape != (rows, dim) or len(meta) != rows or len(colour) != rows:
        raise IndexFormatError(
            f"{folder} is inconsistent: manifest says {rows} x {dim}, vectors are {vectors.shape}, "
            f"metadata has {len(meta)} rows"
        )
    return vectors, colour, meta
