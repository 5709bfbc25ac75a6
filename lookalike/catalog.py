"""Read and check a catalogue: ids, metadata and photo paths, with a reason per bad row."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .config import DEFAULT_ID_COLUMN, DEFAULT_IMAGE_COLUMN
from .errors import CatalogError

logger = logging.getLogger(__name__)

__all__ = ["Catalog", "RowProblem", "read_table", "load_catalog", "file_sha256"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class RowProblem:
    """A catalogue row that was not indexed, and why. ``row`` counts data rows from 1."""

    row: int
    id: str
    image: str
    reason: str


@dataclass
class Catalog:
    """The usable rows of a catalogue (in file order) and the problems of the others."""

    table: pd.DataFrame  # usable rows; every column as text; index reset
    image_paths: list[Path]  # row i's photo
    rows: list[int]  # row i's 1-based row number in the file
    problems: list[RowProblem] = field(default_factory=list)
    id_column: str = DEFAULT_ID_COLUMN
    image_column: str = DEFAULT_IMAGE_COLUMN
    source: Path | None = None
    sha256: str = ""
    total_rows: int = 0

    @property
    def ids(self) -> list[str]:
        return self.table[self.id_column].tolist()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/TSV or Parquet table with every cell as text (ids like 00123 stay whole)."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalogue not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            df = df.astype("string").fillna("").astype(object)
        else:
            sep = "\t" if suffix in (".tsv", ".tab") else ","
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig",
                on_bad_lines="error",
            )
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CatalogError(f"can't read catalogue {path}: {first}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


class _FileFinder:
    """Finds a photo by relative path, or by file name anywhere below the images folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def _index(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            by_name: dict[str, list[Path]] = {}
            for dirpath, _dirs, files in os.walk(self.root, followlinks=True):
                for name in files:
                    by_name.setdefault(name, []).append(Path(dirpath) / name)
            self._by_name = by_name
        return self._by_name

    def find(self, value: str) -> tuple[Path | None, str]:
        direct = self.root / value
        if direct.is_file():
            return direct, ""
        matches = self._index().get(Path(value).name, [])
        if len(matches) == 1:
            return matches[0], ""
        if len(matches) > 1:
            return None, f"ambiguous photo name: {len(matches)} files named {Path(value).name!r}"
        return None, f"photo file not found: {value}"


def load_catalog(
    path: str | os.PathLike | pd.DataFrame,
    *,
    images: str | os.PathLike | None = None,
    id_column: str = DEFAULT_ID_COLUMN,
    image_column: str = DEFAULT_IMAGE_COLUMN,
) -> Catalog:
    """Read a catalogue and resolve each row's photo.

    ``images`` is the folder that image paths are relative to (default: the catalogue's
    folder, then its ``images/`` subfolder); a photo not found there is looked up by file
    name anywhere below it, as in the Kaggle layout. Rows with an empty or repeated id, or
    without a photo on disk, are returned as :class:`RowProblem` s, never dropped silently.
    """
    if isinstance(path, pd.DataFrame):
        df, source = path.astype(str), None
    else:
        source = Path(path)
        df = read_table(source)
    for col, what in ((id_column, "id"), (image_column, "image")):
        if col not in df.columns:
            raise CatalogError(
                f"catalogue has no {what} column {col!r}; its columns are: {', '.join(df.columns)}"
            )
    if images is None:
        base = source.parent if source is not None else Path.cwd()
        root = base / "images" if (base / "images").is_dir() else base
    else:
        root = Path(images)
        if not root.is_dir():
            raise CatalogError(f"images folder not found: {root}")
    finder = _FileFinder(root)
    keep: list[int] = []
    paths: list[Path] = []
    problems: list[RowProblem] = []
    seen: dict[str, int] = {}
    ids = df[id_column].astype(str).str.strip()
    imgs = df[image_column].astype(str).str.strip()
    for i, (pid, img) in enumerate(zip(ids, imgs)):
        row = i + 1
        if not pid:
            problems.append(RowProblem(row, pid, img, "empty id"))
            continue
        if pid in seen:
            problems.append(RowProblem(row, pid, img, f"duplicate id (first on row {seen[pid]})"))
            continue
        seen[pid] = row
        if not img:
            problems.append(RowProblem(row, pid, img, "no photo named"))
            continue
        found, reason = finder.find(img)
        if found is None:
            problems.append(RowProblem(row, pid, img, reason))
            continue
        keep.append(i)
        paths.append(found)
    table = df.iloc[keep].copy()
    table[id_column] = ids.iloc[keep].values
    table = table.reset_index(drop=True)
    if problems:
        logger.info("%d of %d catalogue rows can't be used", len(problems), len(df))
    return Catalog(
        table=table,
        image_paths=paths,
        rows=[i + 1 for i in keep],
        problems=problems,
        id_column=id_column,
        image_column=image_column,
        source=source,
        sha256=file_sha256(source) if source is not None else "",
        total_rows=len(df),
    )
