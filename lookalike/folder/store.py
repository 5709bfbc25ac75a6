"""The store: owns an index folder, its generations and its writer lock.

Readers call :meth:`Store.snapshot` and get one consistent, immutable generation; they never
lock and never write. Writers (``build``, ``tune``, live changes, ``compact``) go through
:meth:`Store.writer`: an exclusive ``flock`` on ``INDEX/LOCK`` (server workers are processes),
new files written and fsynced first, then one small commit (``generations/<N>.json``) and
finally ``CURRENT`` flipped with ``os.replace``. See :mod:`lookalike.folder.artifacts` for the layout.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import shutil
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from lookalike import __version__
from lookalike.errors import IndexFormatError, IndexLockedError, LookalikeError, StorageError
from lookalike.folder.artifacts import (
    CURRENT,
    FORMAT,
    FORMAT_VERSION,
    LEGACY_FILES,
    LOCK,
    MANIFEST,
    checksum,
    fsync_dir,
    load_npy,
    read_checked,
    read_json,
    read_legacy_manifest,
    save_npy,
    write_bytes_durably,
)
from lookalike.folder.manifest import Manifest
from lookalike.folder.projection import FILE as PROJECTION_FILE
from lookalike.folder.projection import Projection
from lookalike.folder.rows import (  # noqa: F401 - re-exported
    ALL_HIDDEN,
    GROUP_COLUMNS,
    HIDDEN_COLUMNS,
    REQUIRED_HIDDEN,
    fill_hidden,
    product_etag,
    text_column,
)

logger = logging.getLogger(__name__)

__all__ = ["Store", "Snapshot", "Segment", "Writer", "HIDDEN_COLUMNS", "GROUP_COLUMNS", "ALL_HIDDEN",
           "DEFAULT_LOCK_TIMEOUT"]

DEFAULT_LOCK_TIMEOUT = 120.0
GENERATIONS = "generations"
#: a generation's state: int64 (3, rows): live (0/1), duplicate group, near-duplicate group
STATE = "state.npy"
#: garbage is collected at every build and compaction, and every this many live changes
GC_EVERY = 32
#: an upload's temporary file older than this was cut short (a process killed mid-write)
STALE_UPLOAD_S = 600
SEGMENTS = "segments"
#: generations whose files are kept: the current one and the one before (readers mid-load)
KEEP_GENERATIONS = 2
_SEGMENT_CACHE: OrderedDict[tuple[str, str, bool], "Segment"] = OrderedDict()
_SEGMENT_CACHE_SIZE = 32
_cache_lock = Lock()


@dataclass(frozen=True)
class Segment:
    """One immutable segment: rows of vectors, colour descriptors and metadata."""

    name: str
    folder: Path
    vectors: np.ndarray
    colour: np.ndarray
    #: every column as a plain array (text columns as ``str`` objects): what readers index row by row
    cells: dict[str, np.ndarray] = field(compare=False, repr=False)
    files: dict[str, Any] = field(default_factory=dict)  # name -> checksum record ({} for format 1)
    #: what readers build from an immutable segment once (its search index), shared by generations
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def metadata(self) -> pd.DataFrame:
        """The segment's metadata as a table, built on first use (readers need only :attr:`cells`;
        building a DataFrame per change segment cost a serving worker ~3 ms per new generation)."""
        frame = self.derived.get("frame")
        if frame is None:
            frame = self.derived["frame"] = columns_frame(self.cells)
        return frame

    def read(self, name: str) -> bytes | None:
        """A further file of the segment (``index.faiss``, ``projection.npz``), checked; None if absent."""
        path = self.folder / name
        present = name in self.files if self.files else path.is_file()  # format 1 records no files
        return read_checked(path, self.files.get(name)) if present else None


class Snapshot:
    """One generation of an index, fully loaded: what a reader sees, and never changes."""

    def __init__(self, path: Path, generation: int, manifest: dict[str, Any], segments: list[Segment],
                 live: np.ndarray, dup_exact: np.ndarray, dup_near: np.ndarray) -> None:
        self.path = path
        self.generation = generation
        #: the generation's record as stored; its settings, typed: :attr:`settings`
        self.manifest = manifest
        self.settings = Manifest.from_json(manifest, path)
        self.segments = segments
        self.live = live
        self.dup_exact = dup_exact
        self.dup_near = dup_near
        self._dense: tuple[np.ndarray, np.ndarray, pd.DataFrame] | None = None
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._physical: np.ndarray | None = None
        self._columns: Columns | None = None
        self._projection: Projection | None | bool = False

    @property
    def physical_rows(self) -> int:
        return len(self.live)

    @property
    def rows(self) -> int:
        return int(self.live.sum())

    @property
    def id_column(self) -> str:
        return self.settings.catalog.id_column

    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [len(s) for s in self.segments])

    def _gather(self, parts: list[np.ndarray]) -> np.ndarray:
        whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return whole if self.live.all() else whole[self.live]

    def dense_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, colour) of the live rows, in segment order."""
        if self._arrays is None:
            if not self.segments:
                return np.zeros((0, self.settings.dim), np.float32), np.zeros((0, 0), np.float32)
            self._arrays = (self._gather([s.vectors for s in self.segments]),
                            self._gather([s.colour for s in self.segments]))
        return self._arrays

    def _live_rows(self) -> np.ndarray:
        if self._physical is None:
            self._physical = np.flatnonzero(self.live)
        return self._physical

    def physical_row(self, dense_row: int) -> int:
        """Where live row ``dense_row`` lies across the segments (dead rows counted)."""
        return int(self._live_rows()[dense_row])

    def take(self, dense_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, colour) of some live rows, read from the segments alone (a memory-mapped
        index reads only these rows)."""
        phys = self._live_rows()[np.asarray(dense_rows, dtype=np.int64)]
        offsets = self.offsets()
        which = np.searchsorted(offsets, phys, side="right") - 1
        dim = self.settings.dim
        vectors = np.zeros((len(phys), dim), np.float32)
        colour = np.zeros((len(phys), self.segments[0].colour.shape[1] if self.segments else 0), np.float32)
        for si in np.unique(which):
            at = np.flatnonzero(which == si)
            local = phys[at] - offsets[si]
            vectors[at] = self.segments[si].vectors[local]
            colour[at] = self.segments[si].colour[local]
        return vectors, colour

    def dense_columns(self) -> "Columns":
        """Every metadata column of the live rows as a plain array, plus the duplicate groups
        (``_dup_exact``, ``_dup_near``); a column is assembled when first asked for."""
        if self._columns is None:
            self._columns = Columns(self)
        return self._columns

    def dense(self) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        """(vectors, colour, metadata) of the live rows, in segment order; metadata carries the
        duplicate groups as ``_dup_exact`` and ``_dup_near``."""
        if self._dense is None:
            vectors, colour = self.dense_arrays()
            self._dense = (vectors, colour, columns_frame(self.dense_columns()))
        return self._dense

    @property
    def projection(self) -> Projection | None:
        if self._projection is False:
            self._projection = _load_projection(self)
        return self._projection  # type: ignore[return-value]  # False only until loaded, just above


class Columns(Mapping[str, np.ndarray]):
    """A generation's metadata columns over its live rows, each gathered from the segments'
    arrays on first use (a writer touching one product never assembles the titles)."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap
        names = [c for c in (snap.segments[0].cells if snap.segments else ()) if c not in GROUP_COLUMNS]
        self._names = [*names, *GROUP_COLUMNS]
        self._done: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._done:
            snap = self._snap
            if name == "_dup_exact":
                self._done[name] = snap.dup_exact[snap.live]
            elif name == "_dup_near":
                self._done[name] = snap.dup_near[snap.live]
            elif name in self._names:
                self._done[name] = snap._gather([s.cells[name] for s in snap.segments])
            else:
                raise KeyError(name)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def columns_frame(columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame of plain column arrays (text as ``str``, numbers as they are)."""
    return pd.DataFrame({c: (v.astype(str) if v.dtype == object else v) for c, v in columns.items()})


def _cells(meta: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for c in meta.columns:
        col = meta[c]
        if col.dtype.kind in "iufb":
            out[c] = col.to_numpy()
        else:  # plain str objects (cheaper than pandas' string conversions for the few rows of a change)
            out[c] = text_column([v if isinstance(v, str) else str(v) for v in col.tolist()])
    return out


def _load_projection(snap: Snapshot) -> Projection | None:
    name = snap.settings.projection_segment
    holder = next((s for s in snap.segments if s.name == name), None) if name else None
    if holder is None and snap.generation == 0 and snap.segments:
        holder = snap.segments[0]
    if holder is None:
        if snap.settings.projection:
            raise IndexFormatError(f"{snap.path} is incomplete: {PROJECTION_FILE} is missing")
        return None
    if PROJECTION_FILE in holder.derived:  # read once per segment, shared by its generations
        return holder.derived[PROJECTION_FILE]
    data = holder.read(PROJECTION_FILE)
    if data is None:
        if snap.settings.projection:
            raise IndexFormatError(f"{snap.path} is incomplete: {PROJECTION_FILE} is missing")
        return None
    try:
        projection = Projection.from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - a zip, numpy or key error alike
        raise IndexFormatError(f"{holder.folder / PROJECTION_FILE} is damaged: {type(exc).__name__}: {exc}") from None
    holder.derived[PROJECTION_FILE] = projection
    return projection


def _write_parquet(metadata: pd.DataFrame | Mapping[str, np.ndarray], out: Any) -> None:
    """A segment's metadata as Parquet: a table through pandas (Arrow's thread pool only for big
    ones), plain columns (a live change's few rows) straight through Arrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(metadata, pd.DataFrame):
        table = pa.Table.from_pandas(metadata, preserve_index=False, nthreads=None if len(metadata) > 10_000 else 1)
    else:
        table = pa.table({c: pa.array(v.tolist() if v.dtype == object else v) for c, v in metadata.items()})
    pq.write_table(table, out)


#: a metadata file this large is read and converted by Arrow's thread pools
_THREADED_READ_BYTES = 1 << 20


def _metadata(path: Path, expected: dict[str, Any] | None, id_column: str) -> dict[str, np.ndarray]:
    """A segment's ``metadata.parquet`` as plain column arrays: numbers as NumPy arrays, text
    (and the id column, whatever its type) as ``str`` objects, straight from Arrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = read_checked(path, expected)
    try:
        # a change's segment is a few rows: Arrow's thread pools would cost more than the read
        table = pq.ParquetFile(io.BytesIO(data)).read(use_threads=len(data) > _THREADED_READ_BYTES)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds
        raise IndexFormatError(f"{path} is damaged: {type(exc).__name__}: {exc}") from None
    missing = [c for c in REQUIRED_HIDDEN if c not in table.column_names]
    if missing:
        raise IndexFormatError(f"{path} is damaged: column {missing[0]} is missing")
    if id_column not in table.column_names:
        raise IndexFormatError(f"{path} is damaged: the id column {id_column!r} is missing")
    cells: dict[str, np.ndarray] = {}
    for name, column in zip(table.column_names, table.columns):
        kind = column.type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        if numeric and name != id_column and column.null_count == 0:
            cells[name] = column.to_numpy()
        else:
            cells[name] = text_column([v if isinstance(v, str) else _text(v) for v in column.to_pylist()])
    return fill_hidden(cells)


def _text(value: Any) -> str:
    """A non-text cell as text (a missing value reads as ``nan``, as pandas gave it)."""
    return "nan" if value is None else str(value)


def _load_segment(folder: Path, name: str, files: dict[str, Any], *, mmap: bool, id_column: str) -> Segment:
    key = (str(folder), str(files.get("vectors.npy", {}).get("sha256", "")), mmap)
    if files:
        with _cache_lock:
            hit = _SEGMENT_CACHE.get(key)
            if hit is not None:
                _SEGMENT_CACHE.move_to_end(key)
                return hit
    vectors = load_npy(folder / "vectors.npy", files.get("vectors.npy") if files else None, mmap=mmap)
    colour = load_npy(folder / "colour.npy", files.get("colour.npy") if files else None)
    cells = _metadata(folder / "metadata.parquet", files.get("metadata.parquet") if files else None, id_column)
    n = len(cells[id_column])
    if vectors.ndim != 2 or len(vectors) != n or colour.ndim != 2 or len(colour) != n:
        raise IndexFormatError(
            f"{folder} is inconsistent: vectors {vectors.shape}, colour {colour.shape}, metadata {n} rows"
        )
    if vectors.dtype != np.float32 or colour.dtype != np.float32:
        raise IndexFormatError(f"{folder} is damaged: vectors are {vectors.dtype}, not float32")
    if not mmap and (not np.isfinite(vectors).all() or not np.isfinite(colour).all()):
        raise IndexFormatError(f"{folder / 'vectors.npy'} is damaged: it holds NaN or infinite values")
    seg = Segment(name, folder, vectors, colour, cells, dict(files))
    if files:
        with _cache_lock:
            _SEGMENT_CACHE[key] = seg
            while len(_SEGMENT_CACHE) > _SEGMENT_CACHE_SIZE:
                _SEGMENT_CACHE.popitem(last=False)
    return seg


class Store:
    """An index folder. ``Store(path).snapshot()`` to read, ``with Store(path).writer() as w`` to write."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- reading ---------------------------------------------------------------------
    def current_file(self) -> Path:
        return self.path / CURRENT

    def is_legacy(self) -> bool:
        return not self.current_file().exists() and (self.path / MANIFEST).is_file()

    def current_generation(self) -> int:
        """The current generation number (0 for a format-1 folder)."""
        if not self.path.is_dir():
            if self.path.exists():
                raise IndexFormatError(f"{self.path} is a file, not an index folder")
            hint = _leftover_hint(self.path)
            raise IndexFormatError(f"index not found: {self.path}{hint}")
        try:
            text = self.current_file().read_text(encoding="ascii").strip()
        except FileNotFoundError:
            if (self.path / MANIFEST).is_file():
                return 0
            raise IndexFormatError(f"{self.path} is not a lookalike index (no {CURRENT})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise IndexFormatError(f"{self.current_file()} is damaged: {exc}") from None
        if not text.isdigit():
            raise IndexFormatError(f"{self.current_file()} is damaged: {text[:40]!r} is not a generation number")
        return int(text)

    def generation_record(self, n: int) -> dict[str, Any]:
        """The commit of generation ``n`` (its JSON), checked for format and shape."""
        if n == 0:
            manifest = read_legacy_manifest(self.path)
            Manifest.from_json(manifest, self.path / MANIFEST)  # refuses malformed settings
            return manifest
        path = self.path / GENERATIONS / f"{n}.json"
        record = read_json(path)
        if record.get("format") != FORMAT:
            raise IndexFormatError(f"{path} is not a lookalike generation")
        if record.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{self.path} has index format {record.get('format_version')!r}; this lookalike reads "
                f"format {FORMAT_VERSION}: upgrade lookalike or rebuild the index"
            )
        Manifest.from_json(record, path)  # refuses malformed settings
        segs = record.get("segments")
        if not isinstance(segs, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                 and isinstance(s.get("files"), dict) for s in segs):
            raise IndexFormatError(f"{path} is damaged: its segment list is malformed")
        return record

    def snapshot(self, *, mmap: bool | None = False, retries: int = 5) -> Snapshot:
        """Load the current generation. A writer that commits meanwhile makes it retry, never fail.

        ``mmap``: memory-map the vectors (``None``: when the index is searched remotely, in Milvus)."""
        for attempt in range(retries):
            n = self.current_generation()
            try:
                return self.load_generation(n, mmap=mmap)
            except IndexFormatError:
                if attempt + 1 < retries and self.current_generation() != n:
                    continue  # its files were replaced under us: read the new generation
                raise
        raise AssertionError("unreachable")

    def load_generation(self, n: int, *, mmap: bool | None = False) -> Snapshot:
        record = self.generation_record(n)
        if mmap is None:
            mmap = record.get("index", {}).get("backend") == "milvus"
        id_column = record["catalog"]["id_column"]
        if n == 0:
            seg = _load_segment(self.path, ".", {}, mmap=mmap, id_column=id_column)
            rows = record.get("rows")
            if len(seg) != rows or seg.vectors.shape[1] != record["dim"]:
                raise IndexFormatError(
                    f"{self.path} is inconsistent: manifest says {rows} x {record['dim']}, "
                    f"vectors are {seg.vectors.shape}, metadata has {len(seg.cells[id_column])} rows"
                )
            try:
                exact = np.asarray(seg.cells["_dup_exact"], dtype=np.int64)
                near = np.asarray(seg.cells["_dup_near"], dtype=np.int64)
            except KeyError as exc:
                raise IndexFormatError(f"{self.path}/metadata.parquet is damaged: column {exc} is missing") from None
            return Snapshot(self.path, 0, record, [seg], np.ones(len(seg), bool), exact, near)
        segments = []
        for s in record["segments"]:
            # "." is a format-1 folder's own files, carried into format 2 until compaction
            folder = self.path if s["name"] == "." else self.path / SEGMENTS / s["name"]
            seg = _load_segment(folder, s["name"], s["files"], mmap=mmap, id_column=id_column)
            if seg.vectors.shape[1] != record["dim"] or len(seg) != s.get("rows"):
                raise IndexFormatError(f"{folder} is inconsistent with generation {n}")
            segments.append(seg)
        path = self.path / GENERATIONS / f"{n}.{STATE}"
        state = load_npy(path, record.get("state") or {})
        if state.ndim != 2 or state.shape[0] != 3 or state.dtype != np.int64:
            raise IndexFormatError(f"{path} is damaged: its shape is {state.shape}, not (3, rows)")
        live, exact, near = state[0].astype(bool), state[1], state[2]
        total = sum(len(s) for s in segments)
        if not (len(live) == len(exact) == len(near) == total) or int(live.sum()) != record.get("rows"):
            raise IndexFormatError(f"{path} is inconsistent with its segments")
        return Snapshot(self.path, n, record, segments, live, exact, near)

    def verify(self) -> list[str]:
        """Full check of the current generation: every file's sha256 against its record."""
        n = self.current_generation()
        problems: list[str] = []
        if n == 0:
            self.load_generation(0)
            return ["format-1 index: it holds no checksums (any write or `lookalike compact` adds them)"]
        record = self.generation_record(n)
        checks: list[tuple[Path, dict[str, Any]]] = []
        for s in record["segments"]:
            for name, rec in s["files"].items():
                checks.append((self.path / SEGMENTS / s["name"] / name, rec))
        for key, suffix in (("state", STATE), ("report_file", "report.csv")):
            if record.get(key):
                checks.append((self.path / GENERATIONS / f"{n}.{suffix}", record[key]))
        for path, rec in checks:
            try:
                data = path.read_bytes()
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
                continue
            if checksum(data)["sha256"] != rec.get("sha256") or len(data) != rec.get("size"):
                problems.append(f"{path}: content does not match the generation's record")
        if not problems:
            self.load_generation(n)  # shapes, finite values, state
        return problems

    def report(self) -> pd.DataFrame:
        """The per-row report of the operation that made the current generation."""
        n = self.current_generation()
        if n == 0:
            path, rec = self.path / "report.csv", None
        else:
            path, rec = self.path / GENERATIONS / f"{n}.report.csv", self.generation_record(n).get("report_file")
        return pd.read_csv(io.BytesIO(read_checked(path, rec)), dtype=str, keep_default_na=False)

    def report_path(self) -> Path:
        n = self.current_generation()
        return self.path / "report.csv" if n == 0 else self.path / GENERATIONS / f"{n}.report.csv"

    # -- writing ---------------------------------------------------------------------
    def writer(self, *, create: bool = False, timeout: float = DEFAULT_LOCK_TIMEOUT) -> "Writer":
        """The one writer of this folder (a context manager holding ``LOCK``).

        ``create``: make the folder when it does not exist yet; an existing folder must be an index
        (or empty): anything else is refused rather than overwritten.
        """
        return Writer(self, create=create, timeout=timeout)


def _leftover_hint(path: Path) -> str:
    olds = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    return f" (a previous index was left at {olds[0]}; run a build to recover it)" if olds else ""


class Writer:
    """Holds the writer lock of a store; adds segments and commits generations."""

    def __init__(self, store: Store, *, create: bool, timeout: float) -> None:
        self.store = store
        self.create = create
        self.timeout = timeout
        self._fd: int | None = None
        self.base: Snapshot | None = None
        self.base_record: dict[str, Any] | None = None
        self._new_segments: list[str] = []
        self._pending: int | None = None  # a generation being committed
        self._unsynced: list[Path] = []  # written, not yet fsynced (files and folders)
        self._generation: int | None = None  # once this writer has committed

    @property
    def path(self) -> Path:
        return self.store.path

    def __enter__(self) -> "Writer":
        path = self.path
        if path.exists() and not path.is_dir():
            raise IndexFormatError(f"{path} is a file, not an index folder")
        if not path.exists():
            if not self.create:
                raise IndexFormatError(f"index not found: {path}")
            _recover_legacy_swap(path)
        if not path.exists():
            try:
                path.mkdir(parents=True)
            except OSError as exc:
                raise IndexFormatError(f"can't create {path}: {exc.strerror or exc}") from None
        elif not (path / CURRENT).exists() and not (path / MANIFEST).is_file():
            stray = [p.name for p in path.iterdir() if p.name not in (LOCK, GENERATIONS, SEGMENTS, CURRENT + ".tmp")]
            if stray:
                raise IndexFormatError(f"{path} exists and is not a lookalike index; not overwriting it")
        try:
            self._fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only file system, a folder without write permission
            raise StorageError.from_os_error(exc, f"write to {path}") from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self._fd)
                    self._fd = None
                    raise IndexLockedError(
                        f"{path} is being written by another process (waited {self.timeout:.0f} s)",
                        "the index is being written by another process; try again shortly",
                    ) from None
                time.sleep(0.01)
        try:
            try:
                for sub in (GENERATIONS, SEGMENTS):
                    (path / sub).mkdir(exist_ok=True)
            except OSError as exc:
                raise StorageError.from_os_error(exc, f"write to {path}") from None
            _clean_legacy_swap_leftovers(path)
            for p in (path / "photos").glob(".tmp-*"):  # uploads are written under this lock: cut short
                p.unlink(missing_ok=True)
            if (path / CURRENT).exists() or (path / MANIFEST).is_file():
                self.base = self.store.snapshot()
                self.base_record = self.base.manifest
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            # what this writer wrote but never committed (a kill -9 leaves it to the next writer)
            for name in self._new_segments:
                shutil.rmtree(self.path / SEGMENTS / name, ignore_errors=True)
                shutil.rmtree(self.path / SEGMENTS / f".tmp-{name}", ignore_errors=True)
            if self._pending is not None:
                for suffix in ("json", STATE, "report.csv"):
                    (self.path / GENERATIONS / f"{self._pending}.{suffix}").unlink(missing_ok=True)
                (self.path / (CURRENT + ".tmp")).unlink(missing_ok=True)
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def generation(self) -> int:
        if self._generation is not None:
            return self._generation
        return self.base.generation if self.base is not None else 0

    def segment_records(self) -> list[dict[str, Any]]:
        """The base generation's segment records, to carry into the next commit."""
        if self._generation is not None:
            raise LookalikeError("a writer commits once; open a new one for the next change")
        if self.base is None:
            return []
        if self.base.generation == 0:
            return [{"name": ".", "rows": len(self.base.segments[0]), "files": {}}]
        return [dict(s) for s in self.base.manifest["segments"]]

    def add_segment(self, vectors: np.ndarray, colour: np.ndarray, metadata: pd.DataFrame | Mapping[str, np.ndarray],
                    *, projection: Projection | None = None, extra: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Write a new immutable segment; returns its record for :meth:`commit`. ``metadata`` is a
        table or plain columns (text as ``str`` objects, numbers as NumPy arrays)."""
        name = f"seg-{self.generation + 1:06d}-{uuid.uuid4().hex[:8]}"
        tmp = self.path / SEGMENTS / f".tmp-{name}"
        tmp.mkdir(parents=True)
        self._new_segments.append(name)
        try:
            files = {
                "vectors.npy": save_npy(tmp / "vectors.npy", np.asarray(vectors, dtype=np.float32), sync=False),
                "colour.npy": save_npy(tmp / "colour.npy", np.asarray(colour, dtype=np.float32), sync=False),
            }
            buf = io.BytesIO()
            _write_parquet(metadata, buf)
            files["metadata.parquet"] = write_bytes_durably(tmp / "metadata.parquet", buf.getvalue(), sync=False)
            if projection is not None:
                files[PROJECTION_FILE] = write_bytes_durably(tmp / PROJECTION_FILE, projection.to_bytes(), sync=False)
            for fname, data in (extra or {}).items():
                files[fname] = write_bytes_durably(tmp / fname, data, sync=False)
            final = self.path / SEGMENTS / name
            os.rename(tmp, final)
            # this process reads the segment from memory, not back from the disk it just wrote
            seg = Segment(name, final, np.asarray(vectors, dtype=np.float32), np.asarray(colour, dtype=np.float32),
                          _cells(metadata) if isinstance(metadata, pd.DataFrame) else dict(metadata), files)
            if isinstance(metadata, pd.DataFrame):
                seg.derived["frame"] = metadata
            with _cache_lock:
                _SEGMENT_CACHE[(str(final), str(files["vectors.npy"]["sha256"]), False)] = seg
            # made durable by commit(), all at once: nothing refers to the segment before that
            self._unsynced += [final / f for f in files] + [final]
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError.from_os_error(exc, f"write the index at {self.path}") from None
        return {"name": name, "rows": int(len(vectors)), "files": files}

    def commit(self, *, settings: dict[str, Any], segments: list[dict[str, Any]], live: np.ndarray,
               dup_exact: np.ndarray, dup_near: np.ndarray, report: pd.DataFrame | str, operation: dict[str, Any],
               projection_segment: str | None) -> int:
        """Make a new generation current (``report``: a table, or its CSV text). Nothing is visible
        to readers before the last rename."""
        n = self.generation + 1
        gens = self.path / GENERATIONS
        self._pending = n
        try:
            state_rows = np.stack([np.asarray(live, bool).astype(np.int64), np.asarray(dup_exact, np.int64),
                                   np.asarray(dup_near, np.int64)])
            state = save_npy(gens / f"{n}.{STATE}", state_rows, sync=False)
            report_file = write_bytes_durably(gens / f"{n}.report.csv", (report if isinstance(report, str) else
                                                                            report.to_csv(index=False)).encode("utf-8"),
                                              sync=False)
            skip = ("format", "format_version", "generation", "parent", "segments", "state", "report_file",
                    "operation", "projection_segment")
            record = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "generation": n, "parent": self.generation,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "lookalike_version": __version__,
                **{k: v for k, v in settings.items() if k not in skip},
                "rows": int(np.asarray(live, bool).sum()),
                "operation": operation,
                "segments": segments,
                "projection_segment": projection_segment,
                "state": state,
                "report_file": report_file,
            }
            import json

            write_bytes_durably(gens / f"{n}.json", (json.dumps(record, default=str) + "\n").encode(),
                                sync=False)
            # everything the generation needs reaches the disk before CURRENT names it
            _fsync_all([*self._unsynced, *(gens / f"{n}.{x}" for x in (STATE, "report.csv", "json")),
                        self.path / SEGMENTS, gens])
            self._unsynced.clear()
            tmp = self.path / (CURRENT + ".tmp")
            write_bytes_durably(tmp, f"{n}\n".encode("ascii"))
            os.replace(tmp, self.path / CURRENT)
            fsync_dir(self.path)
        except OSError as exc:
            raise StorageError.from_os_error(exc, f"write the index at {self.path}") from None
        self._new_segments.clear()
        self._pending = None
        previous = self.base_record
        self.base, self.base_record, self._generation = None, record, n
        if n % GC_EVERY == 0 or operation.get("kind") in ("build", "compact", "tune"):
            self._collect_garbage(record, previous)
        return n

    def _collect_garbage(self, current: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """Remove what neither the current nor the previous generation needs."""
        keep_gens = {current["generation"], current["parent"]}
        keep_segs = {s["name"] for s in current["segments"]}
        if previous is not None:
            keep_segs |= {s["name"] for s in previous.get("segments", [])} if previous.get("segments") else {"."}
        try:
            for p in (self.path / SEGMENTS).iterdir():
                if p.name not in keep_segs:
                    shutil.rmtree(p, ignore_errors=True)
            for p in (self.path / GENERATIONS).iterdir():
                num = p.name.split(".", 1)[0]
                if not num.isdigit() or int(num) not in keep_gens:
                    p.unlink(missing_ok=True)
            if "." not in {s["name"] for s in current["segments"]}:
                # format-1 files: a reader still loading them retries with the current generation
                for name in LEGACY_FILES:
                    (self.path / name).unlink(missing_ok=True)

        except OSError as exc:  # garbage left is harmless: the next writer tries again
            logger.warning("could not clean up %s: %s", self.path, exc)


_fsync_pool: Any = None
_fsync_pool_pid = 0


def _fsync_one(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if p.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(paths: list[Path]) -> None:
    """fsync files and folders at once: the disk commits them together rather than one by one
    (threads kept for the process: a live change commits often)."""
    global _fsync_pool, _fsync_pool_pid
    from concurrent.futures import ThreadPoolExecutor

    with _cache_lock:
        if _fsync_pool is None or _fsync_pool_pid != os.getpid():  # a forked worker makes its own
            _fsync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lookalike-fsync")
            _fsync_pool_pid = os.getpid()
        pool = _fsync_pool
    list(pool.map(_fsync_one, paths))


def _recover_legacy_swap(path: Path) -> None:
    """lookalike 0.1 swapped folders with two renames; killed between them it left no index at
    ``path`` but the previous one at ``.NAME.old-*``: put it back."""
    if not path.parent.is_dir():
        return
    olds = [p for p in sorted(path.parent.glob(f".{path.name}.old-*")) if (p / MANIFEST).is_file()]
    if olds and not path.exists():
        os.rename(olds[-1], path)
        logger.warning("recovered the previous index of %s from %s", path, olds[-1].name)


#: index folders whose legacy swap leftovers this process already removed (the search lists
#: the parent folder, which may be large: once per folder and process is enough)
_CLEANED: set[Path] = set()


def _clean_legacy_swap_leftovers(path: Path) -> None:
    if path in _CLEANED:
        return
    _CLEANED.add(path)
    for pattern in (f".{path.name}.building-*", f".{path.name}.old-*"):
        for p in path.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)
