"""A living catalogue: add, change and remove products of an index without a rebuild.

``IndexWriter.open(path)`` is the write side of an index folder (reading stays with
:class:`~lookalike.Recommender`). Every operation takes the store's writer lock, embeds what it
must with the index's own model, input size, precision and fitted projection (never refitted),
writes one new segment and commits one new generation: readers see the index before or after
the whole change, never between, and an acknowledged change survives a crash.

Each operation returns a :class:`ChangeReport`: every row asked for is applied or reported
with its reason (unknown ids included); nothing is dropped silently.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from lookalike.config import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, progress_enabled
from lookalike.encoders import Encoder, l2_normalize, prepare_once
from lookalike.engines.local import encode_rows
from lookalike.errors import CatalogError, InvalidQueryError, StorageError
from lookalike.folder.manifest import Manifest, QueryDefaults, Rule
from lookalike.folder.rows import (
    ALL_HIDDEN,
    HIDDEN_COLUMNS,
    StoredRows,
    file_sha1s,
    hidden_columns,
    photo_keys,
    photo_sha1,
    product_etag,
    searchable,
    stored_vectors,
    text_column,
)
from lookalike.folder.store import Snapshot, Store, Writer
from lookalike.reading.catalog import (
    Catalog,
    TableFile,
    file_sha256,
    load_catalog,
    read_table_file,
    repeated_row_problem,
    split_photos,
)
from lookalike.reading.images import COLOUR_DIM
from lookalike.search.backends import REMOTE_BACKENDS, make_index
from lookalike.writing.duplicates import find_duplicate_groups, regroup

logger = logging.getLogger(__name__)

__all__ = ["IndexWriter", "Index", "ChangeReport", "Change", "Upload", "Steering", "DEFAULT_MAX_REMOVAL",
           "MAX_DELTA_SEGMENTS", "PHOTOS"]

#: share of the index a sync may remove before it refuses (a broken mount, an empty export)
DEFAULT_MAX_REMOVAL = 0.5
#: segments written by live changes before they are merged into one (searches fan out over them)
MAX_DELTA_SEGMENTS = 8
#: where photos uploaded over HTTP are kept, inside the index folder (content-addressed)
PHOTOS = "photos"
APPLIED = ("added", "re-embedded", "metadata", "removed")


@dataclass(frozen=True)
class Change:
    """What happened to one row: ``added``, ``re-embedded``, ``metadata``, ``unchanged``,
    ``removed``, ``kept`` (sync left the indexed version: see reason), ``skipped``, or
    ``conflict`` (a conditional write whose product changed since the version it named)."""

    row: int  # 1-based row of the input (0 for a removal by id)
    id: str
    status: str
    reason: str = ""


@dataclass(frozen=True)
class Steering:
    """The shop's steering as a generation holds it (after a :meth:`IndexWriter.set_defaults`
    or :meth:`IndexWriter.change_rules`): its query defaults, colour weight and rules."""

    generation: int
    defaults: QueryDefaults
    colour_weight: float
    rules: tuple[Rule, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "colour_weight": self.colour_weight, **self.defaults.to_json(),
                "rules": [r.to_json() for r in self.rules]}


@dataclass
class ChangeReport:
    """The outcome of one change: a status per row, and the generation it made (if any)."""

    operation: str
    changes: list[Change] = field(default_factory=list)
    generation: int = 0
    seconds: float = 0.0
    #: the entity tag (:func:`~lookalike.folder.store.product_etag`) of each product written or found
    #: unchanged, as of ``generation``: what a later conditional write names
    versions: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (*APPLIED, "unchanged", "kept", "skipped")}  # "conflict" only when there are
        for c in self.changes:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    @property
    def applied(self) -> int:
        c = self.counts()
        return sum(c[s] for s in APPLIED)

    @property
    def problems(self) -> list[Change]:
        return [c for c in self.changes if c.status in ("skipped", "kept", "conflict")]

    def summary(self) -> str:
        c = self.counts()
        line = (f"added {c['added']}, re-embedded {c['re-embedded']}, metadata {c['metadata']}, "
                f"removed {c['removed']}, unchanged {c['unchanged']}, problems {len(self.problems)}")
        head = f"{self.operation}: {line} -> generation {self.generation} in {self.seconds:.2f} s"
        tail = [f"  row {p.row} id {p.id}: {p.status}: {p.reason}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            tail.append(f"  ... and {len(self.problems) - 20} more (see the generation's report)")
        return "\n".join([head, *tail])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.changes], columns=["row", "id", "status", "reason"])


@dataclass
class _Row:
    """A product about to be written: its metadata and what the index stores for it."""

    id: str
    meta: dict[str, str]  # catalogue columns + hidden columns
    vector: np.ndarray
    colour: np.ndarray
    dhash: int
    sha1: str
    #: the physical row of the same product whose photo features this row copies unchanged
    #: (a metadata change): it takes that row's duplicate groups without regrouping
    copy_of: int | None = None


@dataclass
class _Rows:
    """A change request as plain rows of text: its columns in order, and one dict per row."""

    columns: list[str]
    records: list[dict[str, str]]
    #: a file's rows cut short (1-based row -> reason): problems, never applied with blank cells
    short: dict[int, str] = field(default_factory=dict)
    #: the file's last line is cut short and ends without a newline (a truncated export)
    cut_at_end: bool = False
    #: the request's own row number of each record (None: 1, 2, 3, ...)
    numbers: list[int] | None = None


@dataclass(frozen=True)
class Upload:
    """One product write as a service receives it, applied by :meth:`IndexWriter.upsert_uploads`
    against the product *as the index holds it when the write commits* (under the writer lock),
    so writes to one product compose whatever view their sender had.

    ``fields`` are the columns to set: the others keep their values (or are empty for a new
    product); the id and photo columns are set by ``id`` and ``photo``, not by ``fields``.
    ``photo`` is the photo's bytes, ``photos`` more of them: the product's photos become these
    (neither: keep the stored photos and vectors; the product must then be indexed). ``if_match`` makes the write conditional: the product's entity tag (from
    :attr:`ChangeReport.versions` or ``Recommender.etag``), or ``"*"`` for "it exists"; a
    product that changed since is reported ``conflict`` and left as it is."""

    id: str
    fields: Mapping[str, str] = field(default_factory=dict)
    photo: bytes | None = None
    suffix: str = ".jpg"
    if_match: str | None = None
    #: more photos of the product (after ``photo``): the product's photos become these
    photos: Sequence[bytes] = ()


def _matches(condition: str, etag: str | None) -> bool:
    """HTTP's ``If-Match``: ``*`` matches any existing version, else one of the listed tags."""
    if etag is None:
        return False
    tags = [t.strip() for t in condition.split(",") if t.strip()]
    return "*" in tags or etag in tags


def _table(rows: Any) -> _Rows:
    """A table, a CSV/TSV/Parquet path, a dict or dicts as plain rows of text (missing cells empty)."""
    if isinstance(rows, (pd.DataFrame, str, os.PathLike)):
        read = TableFile(rows) if isinstance(rows, pd.DataFrame) else read_table_file(rows)
        columns = [str(c).strip() for c in read.table.columns]
        values = read.table.astype("string").fillna("").astype(object).itertuples(index=False, name=None)
        return _Rows(columns, [dict(zip(columns, v)) for v in values],
                     {row: read.reason(row) for row in read.short_rows}, read.cut_at_end)
    records = [dict(rows)] if isinstance(rows, Mapping) else [dict(r) for r in rows]
    # a few rows from code or HTTP: text as it is, no DataFrame (a one-row change is ~1 ms of pandas)
    records = [{str(k).strip(): "" if v is None or v != v else str(v) for k, v in r.items()} for r in records]
    return _Rows(list(dict.fromkeys(c for r in records for c in r)), records)


class IndexWriter:
    """The write side of an index folder: upsert, remove, sync and compact (see module doc)."""

    def __init__(self, path: str | os.PathLike, *, encoder: Encoder | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, workers: int = DEFAULT_WORKERS,
                 lock_timeout: float | None = None, threads: int | None = None) -> None:
        self.store = Store(path)
        self._encoder = encoder
        self.threads = threads  # the model's threads (None: all cores); a serving process gives it one
        self.batch_size = batch_size
        self.workers = workers
        self.lock_timeout = lock_timeout

    @classmethod
    def open(cls, path: str | os.PathLike, **kw: Any) -> "IndexWriter":
        """An existing index (raises :class:`IndexFormatError` when there is none)."""
        index = cls(path, **kw)
        index.store.snapshot()
        return index

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def generation(self) -> int:
        return self.store.current_generation()

    @property
    def photos(self) -> Path:
        """Where :meth:`upsert_photo` keeps uploaded photos."""
        return self.path / PHOTOS

    def recommender(self, **kw: Any) -> Any:
        from lookalike.search.recommender import Recommender

        return Recommender.load(self.path, **kw)

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Writer]:
        """The store's writer; a disk that is full, read-only or failing while the change is
        written is a :class:`StorageError` (nothing is committed: the previous generation stays)."""
        try:
            wait = {} if self.lock_timeout is None else {"timeout": self.lock_timeout}
            with self.store.writer(**wait) as w:  # type: ignore[arg-type]  # only timeout, a float
                yield w
        except OSError as exc:
            raise StorageError.from_os_error(exc, f"write to {self.path}") from None

    def encoder(self, snap: Snapshot) -> Encoder:
        """The model that built the index, as it built it."""
        m = snap.settings.model
        if self._encoder is None:
            self._encoder = m.encoder_settings().make(threads=self.threads)
        enc = self._encoder
        if not m.describes(enc):
            raise InvalidQueryError(f"{self.path} was built with {m.name}/{m.pooling} at "
                                    f"{m.input_size} px{', trimmed' if m.trim else ''}; the encoder given is {enc!r}")
        return enc

    # -- operations --------------------------------------------------------------------
    def upsert(self, rows: Any, *, images: str | os.PathLike | None = None,
               photo_cache: str | os.PathLike | None = None, private_urls: bool | None = None,
               show_progress_bar: bool | None = None) -> ChangeReport:
        """Add new products and change existing ones.

        ``rows`` is a table in the catalogue's own schema (DataFrame, CSV/TSV/Parquet path, a
        dict or a list of dicts). A row whose photo bytes are unchanged (or whose photo cell is
        empty, for a product already indexed) keeps its stored vector: only its metadata
        changes. Columns the index does not have are refused, missing ones are left empty.
        ``images`` is the folder photo paths are relative to (default: the one of the build).
        ``http(s)://`` photos are fetched into ``photo_cache`` (default: the build's, else
        ``cache_dir()/photos``), each only if it changed since (``If-None-Match``);
        ``private_urls`` (default: the build's) as in :func:`~lookalike.writing.build.build`.
        """
        t0 = time.perf_counter()
        table = _table(rows)
        with self._writer() as w:
            return self._upsert(w, table, images, show_progress_bar, t0, photo_cache=photo_cache,
                                private_urls=private_urls)

    def _upsert(self, w: Writer, table: _Rows, images: str | os.PathLike | None,
                show_progress_bar: bool | None, t0: float, refused: Sequence[Change] = (),
                photo_cache: str | os.PathLike | None = None, private_urls: bool | None = None) -> ChangeReport:
        snap = self._base(w)
        plan, report, root, cache = self._plan(snap, table, images=images, remove_missing=False,
                                               photo_cache=photo_cache, private_urls=private_urls,
                                               show_progress_bar=show_progress_bar)
        report.changes.extend(refused)
        self._embed(snap, plan, show_progress_bar)
        return self._apply(w, snap, plan, set(), report, "upsert", t0, catalog_info=_roots(snap, root, cache))

    def upsert_photo(self, pid: str, photo: bytes, metadata: Mapping[str, str] | None = None,
                     *, suffix: str = ".jpg") -> ChangeReport:
        """Add or change one product from photo bytes (an upload): the photo is kept, durably,
        in the index's ``photos/`` folder under its content hash; columns not in ``metadata``
        keep their values."""
        return self.upsert_uploads([Upload(pid, metadata or {}, photo, suffix)])

    def upsert_uploads(self, uploads: Sequence[Upload | tuple[Any, ...]]) -> ChangeReport:
        """Several writes as one change (one generation), each an :class:`Upload` (or the tuple
        of its fields), each merged with its product as of the current generation, under the
        writer lock (see :class:`Upload`). A server groups the writes that wait for the lock this
        way (group commit): one commit, one duplicate regrouping and one generation for all.
        Each write's outcome is in the report, with its product's new entity tag in
        :attr:`ChangeReport.versions`."""
        t0 = time.perf_counter()
        asked = [u if isinstance(u, Upload) else Upload(*u) for u in uploads]
        with self._writer() as w:  # under the lock: a temporary file found by a writer is stale
            snap = self._base(w)
            cat = snap.settings.catalog
            id_col, img_col = cat.id_column, cat.image_column
            columns, meta = _columns(snap), snap.dense_columns()
            rows_of = StoredRows.of(meta, id_col).rows_of
            refused, rows, numbers = [], [], []
            for number, up in enumerate(asked, 1):
                old_rows = rows_of.get(up.id)
                old = old_rows[0] if old_rows else None
                if up.if_match is not None and not _matches(up.if_match, _stored_etag(meta, columns, old_rows)):
                    why = "the product is not indexed" if old is None else "the product changed since that version"
                    refused.append(Change(number, up.id, "conflict", f"If-Match {up.if_match}: {why}"))
                    continue
                stored = {} if old is None else {c: str(meta[c][old]) for c in columns}
                photos = [*([up.photo] if up.photo is not None else []), *up.photos]
                if len(photos) > 1 and not cat.image_separator:
                    refused.append(Change(number, up.id, "skipped", "several photos, but the index's image "
                                          "column holds one photo a cell"))
                    continue
                row = {**stored, **{str(k): str(v) for k, v in up.fields.items() if k not in cat.photo_columns},
                       **{c: "" for c in cat.photo_columns}, id_col: up.id}
                row[img_col] = cat.image_separator.join(self._keep_photo(b, up.suffix).name for b in photos)
                rows.append(row)
                numbers.append(number)
            if not rows:
                report = ChangeReport("upsert", sorted(refused, key=lambda c: c.row), snap.generation,
                                      time.perf_counter() - t0)
                return report
            table = _table(rows)
            table.numbers = numbers
            report = self._upsert(w, table, self.photos, None, t0, refused=refused)
            for c in report.changes:
                if c.status == "unchanged":
                    report.versions[c.id] = _stored_etag(meta, columns, rows_of.get(c.id)) or ""
            return report

    def _keep_photo(self, photo: bytes, suffix: str) -> Path:
        """The upload, durably in ``photos/`` under its content hash."""
        digest = photo_sha1(photo)
        self.photos.mkdir(exist_ok=True)
        target = self.photos / f"{digest}{suffix}"
        if not target.exists():
            from lookalike.folder.artifacts import fsync_dir, write_bytes_durably

            tmp = self.photos / f".tmp-{digest}{suffix}"
            write_bytes_durably(tmp, photo)
            os.replace(tmp, target)
            fsync_dir(self.photos)
        return target

    def remove(self, ids: Iterable[object], *, if_match: Mapping[str, str] | None = None) -> ChangeReport:
        """Remove products by id; unknown ids are reported, not fatal. ``if_match`` maps ids to
        the entity tag (or ``"*"``) each must still have (see :class:`Upload`): a product that
        changed since is reported ``conflict`` and kept."""
        t0 = time.perf_counter()
        wanted = [str(i).strip() for i in ids]
        with self._writer() as w:
            snap = self._base(w)
            meta = snap.dense_columns()
            rows_of = StoredRows.of(meta, snap.id_column).rows_of
            known = set(rows_of)
            report = ChangeReport("remove")
            gone: set[str] = set()
            for pid in wanted:
                condition = (if_match or {}).get(pid)
                if pid in gone:
                    report.changes.append(Change(0, pid, "skipped", "already removed by this request"))
                elif condition is not None and not _matches(condition, _stored_etag(meta, _columns(snap),
                                                                                       rows_of.get(pid))):
                    why = "the product is not indexed" if pid not in known else "the product changed since that version"
                    report.changes.append(Change(0, pid, "conflict", f"If-Match {condition}: {why}"))
                elif pid in known:
                    gone.add(pid)
                    report.changes.append(Change(0, pid, "removed"))
                else:
                    report.changes.append(Change(0, pid, "skipped", f"unknown product id: {pid}"))
            return self._apply(w, snap, [], gone, report, "remove", t0)

    def sync(self, catalog: str | os.PathLike | pd.DataFrame, *, images: str | os.PathLike | None = None,
             max_removal: float = DEFAULT_MAX_REMOVAL, allow_mass_removal: bool = False,
             dry_run: bool = False, photo_cache: str | os.PathLike | None = None,
             private_urls: bool | None = None, show_progress_bar: bool | None = None) -> ChangeReport:
        """Bring the index in line with today's catalogue: new ids added, changed photos (by
        content hash) re-embedded, changed metadata updated, vanished ids removed.

        A sync that would remove more than ``max_removal`` of the index is refused, with nothing
        changed, unless ``allow_mass_removal``: a broken mount or an empty export must never
        empty production. So is a file whose last line is cut short (fewer cells than the
        header, and no newline at the end of the file): a truncated export, whose last id may be
        cut too. A row whose photo can't be read now, or that is cut short (a row with fewer
        cells than the header), keeps its indexed version; so does one whose photo URL can't be
        fetched now. A photo URL is fetched into ``photo_cache`` (default: the build's) only if
        it changed: an unchanged one costs a 304 and nothing is embedded again.
        """
        t0 = time.perf_counter()
        table = _table(catalog)
        if table.cut_at_end:
            last = len(table.records)
            raise CatalogError(
                f"{Path(str(catalog)).name} looks cut short: its last line (row {last}) "
                f"{table.short[last].removeprefix('cut short: the row ')}; nothing was changed. "
                "Export the catalogue again"
            )
        with self._writer() as w:
            snap = self._base(w)
            plan, report, root, cache = self._plan(snap, table, images=images, remove_missing=True,
                                                   photo_cache=photo_cache, private_urls=private_urls,
                                                   show_progress_bar=show_progress_bar)
            listed = {c.id for c in report.changes} | {r.id for r in plan}
            present = list(dict.fromkeys(snap.dense_columns()[snap.id_column].tolist()))
            gone = {pid for pid in present if pid not in listed}
            if gone and not allow_mass_removal and len(gone) > max_removal * max(1, len(present)):
                raise InvalidQueryError(
                    f"sync would remove {len(gone)} of {len(present)} products ({len(gone) / len(present):.0%}), "
                    f"more than the {max_removal:.0%} allowed; nothing was changed. Check the catalogue and the "
                    f"photo folder, or allow it (--allow-mass-removal)"
                )
            report.operation = "sync"
            report.changes += [Change(0, pid, "removed") for pid in sorted(gone)]
            if dry_run:  # what a real sync would do, row by row; nothing is embedded or written
                report.changes += [Change(p.row, p.id, p.status) for p in plan]
                report.changes.sort(key=lambda c: (c.row == 0, c.row, c.id))
                report.generation, report.seconds = snap.generation, time.perf_counter() - t0
                return report
            self._embed(snap, plan, show_progress_bar)
            catalog_info: dict[str, Any] = {"rows_total": len(table.records), **_roots(snap, root, cache)}
            if not isinstance(catalog, pd.DataFrame):
                catalog_info.update(path=str(Path(catalog).resolve()), sha256=file_sha256(Path(catalog)))
            if not snap.settings.catalog.images_root:
                catalog_info["images_root"] = str(root.resolve())
            return self._apply(w, snap, plan, gone, report, "sync", t0, catalog_info=catalog_info)

    def compact(self) -> ChangeReport:
        """Fold every segment and removal into one new base segment (and graph, for hnsw)."""
        t0 = time.perf_counter()
        with self._writer() as w:
            snap = self._base(w)
            vectors, colour, meta = snap.dense()
            stored = meta.drop(columns=["_dup_exact", "_dup_near"])
            sha1s = stored["_sha1"].tolist()
            dh = stored["_dhash"].to_numpy(np.int64).view(np.uint64)
            exact, near = find_duplicate_groups(sha1s, dh, _unit(vectors, projected=snap.projection is not None), colour)
            backend, metric = snap.settings.index.backend, snap.settings.metric
            local = len(vectors) and backend not in REMOTE_BACKENDS  # Milvus already holds every live row
            extra = make_index(backend, searchable(vectors, colour, metric), metric=metric).serialize() if local else {}
            seg = w.add_segment(vectors, colour, stored, projection=snap.projection, extra=extra)
            report = ChangeReport("compact")
            gen = w.commit(settings=_with_counts(snap, near).to_json(), segments=[seg], live=np.ones(len(vectors), bool), dup_exact=exact,
                           dup_near=near, report=_report_csv(report), operation={"kind": "compact"},
                           projection_segment=seg["name"] if snap.projection is not None else None)
            _forget_unused_photos(self.photos, set(stored["_image"].tolist()))
            report.generation, report.seconds = gen, time.perf_counter() - t0
            return report

    # -- internals ---------------------------------------------------------------------
    # -- steering: query defaults and rules, a generation of their own --------------------
    def steering(self) -> Steering:
        """The current generation's query defaults, colour weight and rules."""
        snap = self.store.snapshot()
        return Steering(snap.generation, snap.settings.query_defaults, snap.settings.colour_weight, snap.settings.rules)

    def set_defaults(self, defaults: QueryDefaults, *, colour_weight: float | None = None) -> Steering:
        """Make ``defaults`` what every query applies unless it says otherwise (``where``, boosts,
        ``max_per``, diversity; :mod:`lookalike.search.steering`), and ``colour_weight`` (if given)
        the index's: checked against the index first, committed as a generation with the same rows
        (atomic and durable like every change; a running server applies it from its next request)."""
        from lookalike.config import check_colour_weight

        with self._writer() as w:
            snap = self._base(w)
            filters = _row_filters(snap)
            _check_defaults(defaults, filters)
            settings = replace(snap.settings, query_defaults=defaults)
            if colour_weight is not None:
                if snap.settings.metric != "cosine" and colour_weight:
                    raise InvalidQueryError("colour weight needs an index built with metric cosine")
                settings = replace(settings, colour_weight=check_colour_weight(colour_weight))
            return self._commit_steering(w, snap, settings, {"kind": "settings"})

    def change_rules(self, *, add: Sequence[Rule] = (), remove: Sequence[Rule] = ()) -> Steering:
        """Add pinned/blocked pairs (a rule of a pair already there replaces it: a pin's new rank)
        and remove others (by kind, products; an unknown one is refused), as one generation. A
        rule naming a product the index does not hold is refused (:class:`UnknownProductError`)."""
        from lookalike.errors import UnknownProductError
        from lookalike.search.recommender import MAX_K

        with self._writer() as w:
            snap = self._base(w)
            ids = set(np.concatenate([s.cells[snap.id_column] for s in snap.segments])[snap.live].tolist())
            rules = {r.key: r for r in snap.settings.rules}
            for r in remove:
                if r.key not in rules:
                    raise InvalidQueryError(f"no rule to remove: {r}")
                del rules[r.key]
            for r in add:
                for pid in (r.show, r.for_id):
                    if pid is not None and pid not in ids:
                        raise UnknownProductError(f"unknown product id: {pid} (rule: {r})")
                if r.kind == "pin" and r.for_id is None:
                    raise InvalidQueryError("a pin is for a product: give the product it is shown for")
                if r.show == r.for_id:
                    raise InvalidQueryError(f"a rule's two products must differ: {r}")
                if not 1 <= r.rank <= MAX_K:
                    raise InvalidQueryError(f"a pin's rank must be from 1 to {MAX_K}, not {r.rank}")
                rules.pop(("block" if r.kind == "pin" else "pin", r.for_id, r.show), None)  # one wins
                rules[r.key] = r
            settings = replace(snap.settings, rules=tuple(rules.values()))
            return self._commit_steering(w, snap, settings, {"kind": "rules", "added": len(add),
                                                            "removed": len(remove)})

    def _commit_steering(self, w: Writer, snap: Snapshot, settings: Manifest, operation: dict[str, Any]) -> Steering:
        gen = w.commit(settings=settings.to_json(), segments=w.segment_records(), live=snap.live,
                       dup_exact=snap.dup_exact, dup_near=snap.dup_near, report="row,id,image,status,reason\n",
                       operation=operation,
                       projection_segment=snap.settings.projection_segment if snap.generation else (
                           "." if snap.projection is not None else None))
        logger.info("%s: generation %d", operation["kind"], gen)
        return Steering(gen, settings.query_defaults, settings.colour_weight, settings.rules)

    def _base(self, w: Writer) -> Snapshot:
        if w.base is None:
            raise CatalogError(f"{self.path} has no index yet: build one first")
        return w.base

    def _plan(self, snap: Snapshot, table: _Rows, *, images: str | os.PathLike | None, remove_missing: bool,
              photo_cache: str | os.PathLike | None = None, private_urls: bool | None = None,
              show_progress_bar: bool | None = None) -> tuple[list[Any], ChangeReport, Path, Path | None]:
        """Decide per product: add, re-embed, metadata only, unchanged, or skipped (with a reason)."""
        cat_info = snap.settings.catalog
        columns = _columns(snap)
        _check_columns(table, columns, cat_info.id_column)
        report = ChangeReport("upsert")
        stored = StoredRows.of(snap.dense_columns(), cat_info.id_column)
        asked = _asked_products(table, columns, cat_info, stored if remove_missing else None, report)
        root = Path(images) if images is not None else cat_info.default_root()
        plan: list[Any] = []
        for a in asked:  # no photo named: a metadata change of an indexed product (no pandas for these)
            if not a.refs:
                plan.append(self._metadata_change(snap, stored, a, columns, report))
        with_photo = [a for a in asked if a.refs]
        cache: Path | None = None
        if with_photo:
            cat, at_row = self._photos_of(snap, with_photo, columns, root, photo_cache, private_urls,
                                          show_progress_bar)
            cache = cat.photo_cache
            notes: dict[str, list[tuple[str, str]]] = {}  # product -> (photo, reason) of each it can't use
            for p in cat.problems:
                notes.setdefault(p.id, []).append((p.image, p.reason))
            digests = file_sha1s(cat.image_paths, self.workers)
            positions: dict[str, list[int]] = {}
            for j, pid in enumerate(cat.ids):
                if digests[j]:
                    positions.setdefault(pid, []).append(j)
                else:
                    notes.setdefault(pid, []).append((cat.refs[j], "unreadable file"))
            for a in with_photo:
                pid = a.cells[cat_info.id_column]
                plan.append(self._photo_change(snap, stored, a, cat, positions.get(pid, []), digests, at_row,
                                               notes.get(pid, []), columns, remove_missing, report))
        return [p for p in plan if p is not None], report, root, cache

    def _photos_of(self, snap: Snapshot, asked: list["_Asked"], columns: list[str], root: Path,
                   photo_cache: str | os.PathLike | None, private_urls: bool | None,
                   show_progress_bar: bool | None) -> tuple[Catalog, list[int]]:
        """The photos the products name, found (fetched, for URLs) as a build finds them: a row
        per photo, and the request's row naming each."""
        cat_info = snap.settings.catalog
        records = [{**a.cells, _PHOTO: ref} for a in asked for ref in a.refs]
        at_row = [row for a in asked for row in a.refs.values()]
        cat = load_catalog(pd.DataFrame(records, columns=[*columns, _PHOTO], dtype=object), images=root,
                           id_column=cat_info.id_column, image_column=_PHOTO, image_separator="",
                           photo_cache=photo_cache or cat_info.photo_cache,
                           private_urls=cat_info.private_urls if private_urls is None else private_urls,
                           show_progress_bar=show_progress_bar)
        return cat, at_row

    def _metadata_change(self, snap: Snapshot, stored: StoredRows, a: "_Asked", columns: list[str],
                         report: ChangeReport) -> "_Product | None":
        """A product named without photos: its stored photos with the request's cells."""
        cat_info = snap.settings.catalog
        pid = a.cells[cat_info.id_column]
        rows = stored.rows_of.get(pid)
        if rows is None:
            report.changes.append(Change(a.row, pid, "skipped", "no photo named, and the product is not indexed"))
            return None
        meta = snap.dense_columns()
        cells = dict(a.cells)
        for c in cat_info.photo_columns:
            cells[c] = str(meta[c][rows[0]])
        if all(str(meta[c][rows[0]]) == str(cells[c]) for c in columns):
            report.changes.append(Change(a.row, pid, "unchanged"))
            return None
        photos = [self._from_stored(snap, r, cells, a.row, columns, status="metadata", own=True) for r in rows]
        return _Product(a.row, pid, "metadata", photos)

    def _photo_change(self, snap: Snapshot, stored: StoredRows, a: "_Asked", cat: Catalog, js: list[int],
                      digests: list[str], at_row: list[int], problems: list[tuple[str, str]], columns: list[str],
                      remove_missing: bool, report: ChangeReport) -> "_Product | None":
        """A product named with photos: unchanged, or its photos, each a stored row's copy (bytes
        the index holds) or one to embed. In a sync, a product of which a photo can't be used now
        keeps its indexed version."""
        pid = a.cells[snap.settings.catalog.id_column]
        indexed = pid in stored.rows_of
        single = len(a.refs) == 1  # its photo's reason is the product's, as before products had several
        notes = [reason if single else _note(ref, reason) for ref, reason in problems]
        if not js or (remove_missing and notes and indexed):
            status = "kept" if remove_missing and indexed else "skipped"
            reason = "; ".join(notes) or "no usable photo"
            report.changes.append(Change(a.row, pid, status, reason + ("; the indexed version was kept"
                                                                      if status == "kept" else "")))
            return None
        sha1s = [digests[j] for j in js]
        if indexed and _same_as_stored(snap, stored.rows_of[pid], a.cells, columns,
                                       [str(cat.image_paths[j]) for j in js], [cat.refs[j] for j in js], sha1s):
            report.changes.append(Change(a.row, pid, "unchanged"))
            return None
        status = "added" if not indexed else "metadata" if sha1s == stored.sha1s_of(pid) else "re-embedded"
        photos: list[Any] = []
        for j, digest in zip(js, sha1s):
            row = at_row[cat.rows[j] - 1]
            source, own = stored.reuse(pid, digest)
            if source is not None:  # photo bytes the index holds: their vector, bit for bit
                photos.append(self._from_stored(snap, source, a.cells, row, columns, image=str(cat.image_paths[j]),
                                                status=status, own=own, ref=cat.refs[j], photo=cat.photo_numbers[j]))
            else:
                photos.append(_Pending(cat, j, row, pid, status))
        return _Product(a.row, pid, status, photos, notes, single)

    def _from_stored(self, snap: Snapshot, old: int, values: Mapping[str, Any], row: int, columns: list[str], *,
                     image: str | None = None, status: str = "metadata", own: bool = False,
                     ref: str | None = None, photo: int | None = None) -> "_Row":
        """A photo row written from what the index stores for row ``old`` (its vector, colour,
        hashes) with the request's cells: a metadata change (``own``: ``old`` is this product's
        row, whose duplicate groups it keeps), or a photo the index already holds."""
        meta = snap.dense_columns()
        new = {c: str(values[c]) for c in columns}
        hidden = {c: meta[c][old] for c in HIDDEN_COLUMNS}
        if image is not None:
            hidden["_image"] = image
        if ref is not None:
            hidden["_ref"] = ref
        if photo is not None:
            hidden["_photo"] = photo
        hidden["_row"] = row
        vectors, colour = snap.take(np.array([old]))
        return _Row(new[snap.settings.catalog.id_column], {**new, **hidden, "_status": status, "_request_row": str(row)},
                    vectors[0], colour[0], int(np.int64(meta["_dhash"][old]).view(np.uint64)), str(meta["_sha1"][old]),
                    copy_of=snap.physical_row(old) if own else None)

    def _embed(self, snap: Snapshot, plan: list[Any], show_progress_bar: bool | None) -> None:
        pending = [q for p in plan for q in p.photos if isinstance(q, _Pending)]
        if not pending:
            return
        enc = self.encoder(snap)
        prepare_once(enc, show_progress_bar=show_progress_bar)
        from tqdm.auto import tqdm

        by_cat: dict[int, list[_Pending]] = {}
        for p in pending:
            by_cat.setdefault(id(p.cat), []).append(p)
        bar = tqdm(total=len(pending), unit="photo", desc="embed", disable=not progress_enabled(show_progress_bar))
        try:
            for group in by_cat.values():
                cat = group[0].cat
                done = encode_rows(cat, [p.position for p in group], enc, batch_size=self.batch_size,
                                   workers=self.workers, bar=bar)
                vectors = stored_vectors(done.raw, snap.projection, snap.settings.metric)
                hidden = hidden_columns([cat.image_paths[i] for i in done.positions],
                                        [cat.rows[i] for i in done.positions], done.sha1, done.dhash,
                                        [cat.refs[i] for i in done.positions],
                                        [cat.photo_numbers[i] for i in done.positions])
                at = {pos: k for k, pos in enumerate(done.positions)}
                for p in group:
                    k = at.get(p.position)
                    if k is None:
                        reason = next((q.reason for q in done.problems if q.row == cat.rows[p.position]
                                       and q.image == cat.refs[p.position]), "unreadable")
                        p.result = reason
                        continue
                    meta: dict[str, Any] = {str(c): str(cat.table[c].iat[p.position]) for c in cat.table.columns}
                    meta.update({c: hidden[c][k] for c in HIDDEN_COLUMNS})
                    meta["_row"] = p.row
                    p.result = _Row(p.id, meta, vectors[k], done.colour[k], int(done.dhash[k]), done.sha1[k])
        finally:
            bar.close()

    def _apply(self, w: Writer, snap: Snapshot, plan: list[Any], gone: set[str], report: ChangeReport,
               operation: str, t0: float, catalog_info: dict[str, Any] | None = None) -> ChangeReport:
        """Write the planned rows as one segment and commit a generation (nothing to do: no commit)."""
        rows = _written(plan, report, operation)
        if not rows and not gone:
            report.generation, report.seconds = snap.generation, time.perf_counter() - t0
            return report
        changed_ids = {r.id for r in rows} | gone
        id_col = snap.id_column
        physical_ids = np.concatenate([s.cells[id_col] for s in snap.segments])
        live = snap.live.copy()
        dead_now = live & np.isin(physical_ids, list(changed_ids))
        live[dead_now] = False
        exact, near = snap.dup_exact.copy(), snap.dup_near.copy()
        # a metadata change keeps its photo's features: it takes the groups of the row it replaces,
        # which then lose no member (groups are components over features alone)
        kept = {r.copy_of for r in rows if r.copy_of is not None and dead_now[r.copy_of]}
        inherit_exact = np.array([exact[r.copy_of] if r.copy_of in kept else -1 for r in rows], dtype=np.int64)
        inherit_near = np.array([near[r.copy_of] if r.copy_of in kept else -1 for r in rows], dtype=np.int64)
        lost = {int(g) for g in near[np.setdiff1d(np.flatnonzero(dead_now), list(kept))] if g >= 0}
        segments = w.segment_records()
        columns = [c for c in snap.segments[0].cells if c in _segment_columns(snap)]
        # plain columns: text as str objects, the two numbers as int64 (no DataFrame for a few rows)
        new_meta = {c: text_column([str(r.meta.get(c, "")) for r in rows]) for c in columns}
        new_meta["_row"] = np.array([int(r.meta["_row"]) for r in rows], dtype=np.int64)
        new_meta["_photo"] = np.array([int(r.meta.get("_photo", 0)) for r in rows], dtype=np.int64)
        new_meta["_dhash"] = np.array([r.dhash for r in rows], dtype=np.uint64).astype(np.int64)
        new_vec = np.array([r.vector for r in rows], dtype=np.float32).reshape(len(rows), snap.settings.dim)
        new_col = np.array([r.colour for r in rows], dtype=np.float32).reshape(len(rows), COLOUR_DIM)
        phys_segments = list(snap.segments)
        if len(segments) - 1 >= MAX_DELTA_SEGMENTS:
            # fold the live rows of the change segments and the new rows into one segment
            first = len(snap.segments[0])
            keep = np.flatnonzero(live[first:]) + first
            deltas = snap.segments[1:]
            old_vec = np.concatenate([s.vectors for s in deltas])[keep - first]
            old_col = np.concatenate([s.colour for s in deltas])[keep - first]
            new_vec = np.concatenate([old_vec, new_vec])
            new_col = np.concatenate([old_col, new_col])
            new_meta = {c: np.concatenate([*(s.cells[c] for s in deltas), new_meta[c]])[
                np.concatenate([keep - first, np.arange(len(rows)) + sum(len(s) for s in deltas)])]
                for c in new_meta}
            segments = segments[:1]
            phys_segments = phys_segments[:1]
            live = np.concatenate([live[:first], np.ones(len(keep), bool)])
            exact = np.concatenate([exact[:first], exact[keep]])
            near = np.concatenate([near[:first], near[keep]])
        if len(new_vec):
            seg = w.add_segment(new_vec, new_col, new_meta)
            segments.append(seg)
            live = np.concatenate([live, np.ones(len(rows), bool)])
            exact = np.concatenate([exact, inherit_exact])
            near = np.concatenate([near, inherit_near])
        exact[~live] = -1
        near[~live] = -1
        # duplicate groups of the rows written (but metadata changes) and of groups that lost a member
        # (rows folded into the new segment keep their features, hence their groups)
        fresh = np.array([r.copy_of not in kept for r in rows], dtype=bool)
        touched = np.arange(len(live) - len(rows), len(live))[fresh]
        if lost:
            touched = np.concatenate([touched, np.flatnonzero(live & np.isin(near, list(lost)))])
        if len(touched):
            exact, near = self._regroup(snap, phys_segments, new_vec, new_col, new_meta, live, exact, near, touched)
        _write_remote(snap, rows, gone)
        catalogue = _columns(snap)
        report.versions.update(_versions(rows, catalogue))
        settings = _with_counts(snap, near[live])
        if catalog_info:
            settings = settings.with_catalog(**catalog_info)
        gen = w.commit(settings=settings.to_json(), segments=segments, live=live, dup_exact=exact, dup_near=near,
                       report=_report_csv(report), operation={"kind": operation, **{
                           k: v for k, v in report.counts().items() if v}},
                       projection_segment=snap.settings.projection_segment if snap.generation else (
                           "." if snap.projection is not None else None))
        report.generation, report.seconds = gen, time.perf_counter() - t0
        logger.info("%s", report.summary())
        return report

    @staticmethod
    def _regroup(snap: Snapshot, phys_segments: list[Any], new_vec: np.ndarray, new_col: np.ndarray,
                 new_meta: Mapping[str, np.ndarray], live: np.ndarray, exact: np.ndarray, near: np.ndarray,
                 touched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Duplicate groups again for the ``touched`` physical rows (see :func:`regroup`)."""
        all_vec = np.concatenate([*(s.vectors for s in phys_segments), new_vec])
        all_col = np.concatenate([*(s.colour for s in phys_segments), new_col])
        all_sha1 = np.concatenate([*(s.cells["_sha1"] for s in phys_segments), new_meta["_sha1"]])
        all_dhash = np.concatenate([*(s.cells["_dhash"] for s in phys_segments), new_meta["_dhash"]])
        return regroup(exact, near, live, all_sha1, all_dhash.astype(np.int64).view(np.uint64),
                       _unit(all_vec, projected=snap.projection is not None, live=live,
                             unit=snap.settings.metric == "cosine"), all_col, touched)


#: the former name of :class:`IndexWriter` (kept for code written against lookalike 0.1)
Index = IndexWriter


def _written(plan: list[Any], report: ChangeReport, operation: str) -> list["_Row"]:
    """The rows a change writes, each planned product's outcome added to ``report`` (sorted): a
    product is written with the photos that could be used; none, and it is skipped (a sync keeps
    an indexed product's version)."""
    rows: list[_Row] = []
    for p in plan:
        got = [q.result if isinstance(q, _Pending) else q for q in p.photos]
        lost = [str(q.result) if p.single else _note(q.cat.refs[q.position], str(q.result)) for q in p.photos
                if isinstance(q, _Pending) and not isinstance(q.result, _Row)]
        done = [r for r in got if isinstance(r, _Row)]
        notes = "; ".join([*p.notes, *lost])
        if not done or (lost and operation == "sync" and p.status != "added"):
            status = "kept" if operation == "sync" and p.status != "added" else "skipped"
            report.changes.append(Change(p.row, p.id, status, (notes or "no usable photo")
                                         + ("; the indexed version was kept" if status == "kept" else "")))
            continue
        rows.extend(done)
        report.changes.append(Change(p.row, p.id, p.status, notes))
    report.changes.sort(key=lambda c: (c.row == 0, c.row, c.id))
    return rows


@dataclass
class _Pending:
    """A row whose photo must be embedded."""

    cat: Catalog
    position: int
    row: int
    id: str
    status: str
    result: Any = None  # a _Row once embedded, else the reason it could not be


def _versions(rows: Sequence["_Row"], columns: Sequence[str]) -> dict[str, str]:
    """The entity tag of each product written: its cells and its photos' hashes, in order."""
    photos: dict[str, list[_Row]] = {}
    for r in rows:
        photos.setdefault(r.id, []).append(r)
    return {pid: product_etag(rs[0].meta, columns, [r.sha1 for r in rs]) for pid, rs in photos.items()}


def _note(ref: str, reason: str) -> str:
    """A photo's problem, naming the photo when the reason does not."""
    return reason if ref in reason else f"{ref}: {reason}"


@dataclass
class _Product:
    """A product a change writes: its photos, each a stored row's copy (:class:`_Row`) or one to
    embed (:class:`_Pending`), and the photos it named that can't be used."""

    row: int
    id: str
    status: str
    photos: list[Any]
    notes: list[str] = field(default_factory=list)
    single: bool = False  # it named one photo: a reason needs no photo's name


@dataclass
class _Asked:
    """A product as a change names it: its first row, its cells, its photos (reference -> the
    request's row naming it)."""

    row: int
    cells: dict[str, str]
    refs: dict[str, int]


#: the column that carries one photo reference a row when a change's photos are found
_PHOTO = "\x00photo"


def _asked_products(table: _Rows, columns: list[str], cat_info: Any, stored: StoredRows | None,
                    report: ChangeReport) -> list[_Asked]:
    """A change's products in the request's order: rows with the same id merged as a build merges
    them (a later row adds its photos when its other cells are empty or equal; one that differs
    is reported), rows cut short and empty ids reported. ``stored``: a sync, where a row cut short
    of an indexed product keeps its indexed version."""
    id_col, photo_cols = cat_info.id_column, cat_info.photo_columns
    others = [c for c in columns if c not in photo_cols]
    products: dict[str, _Asked] = {}
    numbers = table.numbers or range(1, len(table.records) + 1)
    for number, record in zip(numbers, table.records):
        pid = str(record.get(id_col, "")).strip()
        if number in table.short:  # its missing cells are not blanks to write
            status = "kept" if stored is not None and pid in stored.rows_of else "skipped"
            reason = table.short[number] + ("; the indexed version was kept" if status == "kept" else "")
            report.changes.append(Change(number, pid, status, reason))
            continue
        if not pid:
            report.changes.append(Change(number, pid, "skipped", "empty id"))
            continue
        cells = {**{c: str(record.get(c, "")) for c in columns}, id_col: pid}
        refs = split_photos([cells[c] for c in photo_cols], cat_info.image_separator)
        first = products.get(pid)
        if first is None:
            products[pid] = _Asked(number, cells, {ref: number for ref in refs})
            continue
        new = [ref for ref in refs if ref not in first.refs]
        why = repeated_row_problem(others, first.cells, cells, first.row, bool(new))
        if why:
            report.changes.append(Change(number, pid, "skipped", why))
        else:
            for ref in new:
                first.refs[ref] = number
    return list(products.values())


def _same_as_stored(snap: Snapshot, rows: Sequence[int], cells: Mapping[str, str], columns: Sequence[str],
                    paths: Sequence[str], refs: Sequence[str], sha1s: Sequence[str]) -> bool:
    """Whether a product's cells and photos (bytes, paths and references, in order) are those
    the index holds for it (most products of a nightly sync)."""
    meta = snap.dense_columns()
    if len(rows) != len(sha1s) or any(str(meta[c][rows[0]]) != str(cells[c]) for c in columns):
        return False
    return all(str(meta["_sha1"][r]) == s and str(meta["_image"][r]) == p and str(meta["_ref"][r]) == ref
               for r, s, p, ref in zip(rows, sha1s, paths, refs))


def _columns(snap: Snapshot) -> list[str]:
    """The catalogue's own columns, as the index stores them."""
    return list(snap.settings.catalog.columns or [c for c in snap.dense_columns() if c not in ALL_HIDDEN])


def _stored_etag(meta: Mapping[str, Any], columns: Sequence[str], rows: Sequence[int] | None) -> str | None:
    """The entity tag of the product at dense rows ``rows``, its photos' (None: not indexed)."""
    if not rows:
        return None
    return product_etag({c: meta[c][rows[0]] for c in columns}, columns, [str(meta["_sha1"][r]) for r in rows])


def _row_filters(snap: Snapshot) -> Any:
    """The filters of a generation's rows (to check conditions and boosts against them)."""
    from lookalike.search.filters import RowFilters

    meta = snap.dense_columns()
    cat = snap.settings.catalog
    columns = [c for c in meta if c not in ALL_HIDDEN]
    ids = [str(x) for x in meta[cat.id_column]]
    return RowFilters(columns, meta, ids, np.arange(len(ids)), numeric=cat.numeric_columns,
                      parent_column=cat.parent_column)


def _check_defaults(defaults: QueryDefaults, filters: Any) -> None:
    """Refuse defaults that a query would refuse: unknown columns, bad conditions or boosts."""
    from lookalike.search.steering import Boosts, boosts_of, check_diversity, parse_max_per

    filters.check_where(list(defaults.where))
    Boosts(boosts_of(list(defaults.boost)), filters)
    for col in parse_max_per(list(defaults.max_per)):
        filters.check_column(col)
    check_diversity(defaults.diversity)


def _segment_columns(snap: Snapshot) -> list[str]:
    columns = list(snap.settings.catalog.columns)
    return [*columns, *HIDDEN_COLUMNS]


def _forget_unused_photos(folder: Path, used: set[str]) -> None:
    """Uploaded photos no product uses any more (removed or re-shot), once they are old enough
    that no upload in flight can still be about to use them."""
    if not folder.is_dir():
        return
    from lookalike.folder.store import STALE_UPLOAD_S

    for p in folder.iterdir():
        if str(p.resolve()) not in used and time.time() - p.stat().st_mtime > STALE_UPLOAD_S:
            p.unlink(missing_ok=True)


def _write_remote(snap: Snapshot, rows: list[_Row], gone: set[str]) -> None:
    """For an index searched in Milvus: the change goes there first, then the generation is
    committed (a crash between the two leaves Milvus ahead; readers ignore rows their generation
    lacks, and the next sync or change brings them level). A product's photos are its keys
    (:func:`~lookalike.folder.rows.photo_key`): those it no longer has are deleted."""
    if snap.settings.index.backend != "milvus":
        return
    from lookalike.search.backends.milvus import MilvusTarget

    target = MilvusTarget.of(snap.settings.index)
    keys = photo_keys([r.id for r in rows], [int(r.meta.get("_photo", 0)) for r in rows])
    if rows:
        columns = list(snap.settings.catalog.columns)
        target.write(keys, np.array([r.vector for r in rows], np.float32),
                     np.array([r.colour for r in rows], np.float32), {c: [r.meta.get(c, "") for r in rows] for c in columns})
    meta = snap.dense_columns()
    changed = gone | {r.id for r in rows}
    held = photo_keys(meta[snap.id_column].tolist(), meta["_photo"].tolist())
    stale = {key for pid, key in zip(meta[snap.id_column].tolist(), held) if pid in changed} - set(keys)
    target.delete(sorted(stale | gone))


def _check_columns(table: _Rows, columns: list[str], id_col: str) -> None:
    """A change's rows may name only the index's columns, and must name its id column."""
    unknown = [c for c in table.columns if c not in columns]
    if unknown:
        raise CatalogError(
            f"columns not in the index: {', '.join(unknown)} (its columns are: {', '.join(columns)}); "
            "rebuild to add columns"
        )
    if id_col not in table.columns:
        raise CatalogError(f"rows have no id column {id_col!r}")


def _roots(snap: Snapshot, root: Path, cache: Path | None = None) -> dict[str, Any]:
    """The catalogue's photo folders, with the one a change took photos from: the server serves
    photos from these folders only. A change that fetched photo URLs into another cache than
    the index's adds it as a folder of its own."""
    cat = snap.settings.catalog
    roots = list(cat.images_roots)
    resolved = str(root.resolve())
    if cat.images_root and resolved != cat.images_root and resolved not in roots and root.name != PHOTOS:
        roots.append(resolved)
    out: dict[str, Any] = {}
    if cache is not None:
        if not cat.photo_cache:
            out["photo_cache"] = str(cache)
        elif str(cache) != cat.photo_cache and str(cache) not in roots:
            roots.append(str(cache))
    if roots:
        out["images_roots"] = tuple(roots)
    return out


def _unit(vectors: np.ndarray, *, projected: bool, live: np.ndarray | None = None, unit: bool = False) -> np.ndarray:
    """Vectors as the duplicate tests compare them, as a build does: projected rows are centred
    already; raw pooled rows are centred on the mean of the live rows first."""
    x = np.asarray(vectors, dtype=np.float32)
    if not len(x) or (projected and unit):  # stored cosine rows are unit length already
        return x
    if not projected:
        x = x - (x[live] if live is not None else x).mean(axis=0)
    return l2_normalize(x)


def _with_counts(snap: Snapshot, near_live: np.ndarray) -> Manifest:
    """The base generation's settings with the duplicate counts of the new one."""
    grouped = near_live[near_live >= 0]
    return snap.settings.with_duplicates(int(len(np.unique(grouped))), int(len(grouped)))


def _report_csv(report: ChangeReport) -> str:
    """The generation's report as CSV text, as ``build`` writes its own (row, id, image, status, reason)."""
    import csv

    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(["row", "id", "image", "status", "reason"])
    rows.writerows([c.row, c.id, "", c.status, c.reason] for c in report.changes)
    return out.getvalue()
