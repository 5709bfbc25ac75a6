"""The index folder: the contract between writers (``build``, live changes) and every reader.

Format 2, a folder of immutable segments and numbered commits (the Lucene/SQLite pattern)::

    INDEX/
      CURRENT                  "<N>\\n": the current generation; the commit point, replaced
                               atomically (write, fsync, rename, fsync the folder) and written last
      LOCK                     writers hold an exclusive flock on it; readers never lock
      generations/
        <N>.json               generation N: format, settings (model, metric, projection, back end,
                               colour weight, catalogue), its segments in order with size + crc32 +
                               sha256 of every file, its state file, and what operation made it
        <N>.state.npy          int64 (3, rows) over the rows of all its segments, in order: live (0 for
                               rows removed or replaced since), duplicate-photo group and near-
                               duplicate group of each row (-1 alone)
        <N>.report.csv         one line per row the operation touched: row, id, image, status, reason
      segments/<name>/         immutable once written, shared by every generation that lists it:
        vectors.npy            float32 (rows, dim): shape embeddings, L2-normalised for cosine
        colour.npy             float32 (rows, COLOUR_DIM): colour descriptors
        metadata.parquet       row i describes vectors row i: every catalogue column as text, plus
                               _image (photo path), _row (catalogue row), _sha1, _dhash
        projection.npz         the PCA fitted at build (base segment only; never refitted by changes)
        index.faiss            the HNSW graph of this segment, when the back end is hnsw
      photos/<sha1><ext>       photos uploaded over HTTP (content-addressed, immutable)

A reader reads ``CURRENT``, then that generation's JSON, then its files, and checks each file's
size and crc32 as it reads it (``lookalike info --verify`` checks the sha256 of everything).
Writers only add files, fsync them all, then flip ``CURRENT``; files that neither the current nor
the previous generation needs are removed at builds, compactions and every 32nd change (a reader
that is mid-load can finish or retry). A crash at any moment leaves ``CURRENT`` naming a complete generation.

Format 1 (lookalike 0.1: ``manifest.json``, ``vectors.npy``… at the top of the folder, no
``CURRENT``) still loads, as generation 0 with one segment: the folder itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import IndexFormatError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LEGACY_FORMAT_VERSION",
    "CURRENT",
    "LOCK",
    "MANIFEST",
    "SEGMENT_FILES",
    "LEGACY_FILES",
    "checksum",
    "fsync_dir",
    "write_bytes_durably",
    "save_npy",
    "read_checked",
    "load_npy",
    "read_json",
    "read_legacy_manifest",
]

FORMAT = "lookalike-index"
FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOCK = "LOCK"
MANIFEST = "manifest.json"  # format 1 only
SEGMENT_FILES = ("vectors.npy", "colour.npy", "metadata.parquet")
#: what a format-1 folder holds at its top (removed once no generation refers to it)
LEGACY_FILES = (MANIFEST, *SEGMENT_FILES, "report.csv", "duplicates.csv", "projection.npz", "index.faiss")


def checksum(data: bytes) -> dict[str, Any]:
    """What a generation records of one file: its size, crc32 (checked on every load), sha256."""
    return {"size": len(data), "crc32": zlib.crc32(data) & 0xFFFFFFFF, "sha256": hashlib.sha256(data).hexdigest()}


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes, *, sync: bool = True) -> dict[str, Any]:
    """Write a new file, fsynced unless the caller fsyncs it later; returns its checksum record."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    return checksum(data)


def save_npy(path: Path, array: np.ndarray, *, sync: bool = True) -> dict[str, Any]:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return write_bytes_durably(path, buf.getvalue(), sync=sync)


def read_checked(path: Path, expected: dict[str, Any] | None) -> bytes:
    """A file's bytes, checked against its record (size and crc32); IndexFormatError if damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IndexFormatError(f"index is incomplete: {path.name} is missing ({path.parent})") from None
    except OSError as exc:
        raise IndexFormatError(f"can't read {path}: {exc.strerror or exc}") from None
    if expected is not None:
        if len(data) != expected.get("size"):
            raise IndexFormatError(
                f"{path} is damaged: {len(data):,} bytes, the index recorded {expected.get('size')!r}"
            )
        if zlib.crc32(data) & 0xFFFFFFFF != expected.get("crc32"):
            raise IndexFormatError(f"{path} is damaged: its checksum does not match the index's record")
    return data


def load_npy(path: Path, expected: dict[str, Any] | None, *, mmap: bool = False) -> np.ndarray:
    """Load an array; checked against its record unless memory-mapped (then only its size)."""
    try:
        if mmap:
            if expected is not None and path.stat().st_size != expected.get("size"):
                raise IndexFormatError(f"{path} is damaged: its size does not match the index's record")
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(io.BytesIO(read_checked(path, expected)), allow_pickle=False)
    except IndexFormatError:
        raise
    except FileNotFoundError:
        raise IndexFormatError(f"index is incomplete: {path.name} is missing ({path.parent})") from None
    except Exception as exc:  # noqa: BLE001 - numpy and OS errors alike
        raise IndexFormatError(f"{path} is damaged: {type(exc).__name__}: {exc}") from None


def read_json(path: Path, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    data = read_checked(path, expected)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IndexFormatError(f"{path} is damaged: {exc}") from None
    if not isinstance(value, dict):
        raise IndexFormatError(f"{path} is damaged: not a JSON object")
    return value


def read_legacy_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a format-1 folder (``manifest.json`` at its top)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{folder} is not a lookalike index (no {CURRENT} nor {MANIFEST})")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path} is not a lookalike manifest")
    version = manifest.get("format_version")
    if version != LEGACY_FORMAT_VERSION:
        raise IndexFormatError(
            f"{folder} has index format {version!r}; this lookalike reads formats "
            f"{LEGACY_FORMAT_VERSION} and {FORMAT_VERSION}: rebuild it"
        )
    return manifest
