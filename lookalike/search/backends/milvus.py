"""Milvus as a vector store (extra ``milvus``): Milvus Lite in a local ``.db`` file, or a server.

One collection holds one catalogue, a row per photo::

    pk          VARCHAR, primary key     the product id (its main photo), or id U+001F n (its photo n)
    vector      FLOAT_VECTOR(dim), IP    hstack([shape_unit, colour_unit]) for a blended index
    c_<column>  VARCHAR, one a column    the catalogue's text (the field's description is the column name)
    dup_exact   INT64                    byte-identical photo group
    dup_near    INT64                    near-identical photo group

Scores are inner products, higher is better. Query with ``[(1 - w) * shape_q, w * colour_q]``
and the score is ``(1 - w) cos_shape + w cos_colour`` for any per-query ``w``, as with the
exact back end.

Every text value (ids and columns) is stored percent-encoded (``urllib.parse.quote`` keeping
spaces: ``'Casual Shoes'`` stays as it is, ``'a"b'`` becomes ``'a%22b'``). An expression literal
then holds only letters, digits, spaces and ``%_.-~``, so no value can change an expression,
whatever quotes, backslashes or newlines it holds. Escaping alone is not enough: Milvus
Lite 2.5 and the server read escapes differently (the server decodes ``\\n``, Lite does not,
and Lite can't express a newline at all). ``urllib.parse.unquote`` gives the text back.

Filters (:func:`filter_expression`) go into the search itself. With FLAT (Lite's default)
the top k is exact and has k rows whenever k rows pass the filter. Approximate indexes may
return fewer: on Milvus 2.3.5, a filtered HNSW or IVF_FLAT search returned no row at all for
many queries whose neighbourhood held no allowed row (docs/milvus-notes.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import operator
import re
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from lookalike.errors import IndexFormatError, InvalidQueryError, LookalikeError, require
from lookalike.folder.rows import photo_keys, searchable
from lookalike.search.backends.base import Filter, topk_sorted

__all__ = [
    "MilvusStore",
    "IndexSpec",
    "filter_expression",
    "expression",
    "expressible",
    "field_name",
    "encode_text",
    "LITE_INDEX",
    "SERVER_INDEX",
    "LITE_INDEX_TYPES",
    "DUP_FIELDS",
    "DEFAULT_CONSISTENCY",
    "CONSISTENCY_LEVELS",
]

logger = logging.getLogger(__name__)

PK_FIELD = "pk"
VECTOR_FIELD = "vector"
DUP_FIELDS = ("dup_exact", "dup_near")
METRIC = "IP"
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")  # what Milvus Lite 2.5 accepts
DEFAULT_TIMEOUT_S = 30.0
# Strong: a search sees every write acknowledged before it. On a server that waits for the next
# time tick, ~200 ms a search call; "Bounded" answers at once but may miss the last seconds of
# writes, and "Session" misses this client's own deletes (pymilvus 3.0.2, Milvus 2.3.5).
DEFAULT_CONSISTENCY = "Strong"
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
DEFAULT_FLUSH_WAIT_S = 120.0
DEFAULT_BATCH_ROWS = 1000  # rows per upsert/delete call, queries per search call
DEFAULT_EF = 64  # HNSW search breadth; always raised to at least k
MAX_K = 16384  # Milvus' top-k limit
MAX_KEY_LENGTH = 1024  # bytes of an encoded product id
MAX_TEXT_LENGTH = 65535  # Milvus' VARCHAR limit, bytes of an encoded column value
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_SCHEME = re.compile(r"(https?|tcp)://", re.IGNORECASE)


@dataclass(frozen=True)
class IndexSpec:
    """The vector index Milvus builds: an ``index_type`` and its build ``params``."""

    index_type: str = "FLAT"
    params: Mapping[str, Any] = field(default_factory=dict)


LITE_INDEX = IndexSpec("FLAT")  # exact: Milvus Lite has no graph index
SERVER_INDEX = IndexSpec("HNSW", {"M": 32, "efConstruction": 200})  # as lookalike's FAISS HNSW


# -- expressions --------------------------------------------------------------------------
def encode_text(text: str) -> str:
    """How a product id or column value is stored: percent-encoded, spaces kept."""
    return quote(text, safe=" ")


def _literal(text: str) -> str:
    return '"' + encode_text(text) + '"'


def field_name(column: str) -> str:
    """A Milvus field name for a catalogue column: ``c_`` and the column's ASCII letters,
    digits and underscores, plus a hash of the name when anything else was in it
    (``'Gender'`` → ``'c_Gender'``, ``'Base Colour'`` → ``'c_Base_Colour_…'``)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", column)[:64]
    if safe != column:
        safe += "_" + hashlib.sha1(column.encode()).hexdigest()[:10]
    return "c_" + safe


def filter_expression(
    where: Mapping[str, Sequence[str] | str] | None,
    *,
    exclude: Mapping[str, Sequence[int]] | None = None,
    fields: Mapping[str, str],
) -> str:
    """A Milvus filter: rows whose ``where`` columns hold one of the given values (columns
    combine with AND) and whose ``exclude`` group fields hold none of the given numbers.

    ``fields`` maps catalogue columns to field names (:attr:`MilvusStore.fields`).
    ``exclude`` keys are ``dup_exact`` or ``dup_near``. An empty filter is ``""``.
    """
    parts: list[str] = []
    for column, values in (where or {}).items():
        if column not in fields:
            raise InvalidQueryError(f"unknown column {column!r}; columns are: {', '.join(fields)}")
        name = fields[column]
        if not _NAME.fullmatch(name):
            raise InvalidQueryError(f"{name!r} is not a Milvus field name")
        vals = [values] if isinstance(values, str) else list(values)
        if vals:
            parts.append(f"{name} in [{', '.join(_literal(v) for v in dict.fromkeys(map(str, vals)))}]")
        else:  # matches nothing; Milvus Lite fails on `in []`, and neither takes a bare `false`
            parts.append(f'{name} == "" and {name} != ""')
    for name, groups in (exclude or {}).items():
        if name not in DUP_FIELDS:
            raise InvalidQueryError(f"can't exclude by {name!r}; choose one of {', '.join(DUP_FIELDS)}")
        try:
            numbers = sorted({operator.index(g) for g in groups})
        except TypeError:
            raise InvalidQueryError(f"{name} groups must be whole numbers, not {list(groups)!r}") from None
        if numbers:
            parts.append(f"{name} not in [{', '.join(map(str, numbers))}]")
    return " and ".join(f"({p})" for p in parts)


def expressible(filter: Filter | None) -> bool:
    """Whether :func:`expression` says all a filter says. Columns are stored as text
    (VARCHAR), so a numeric condition is not: such a search runs on the exact oracle here,
    over the same generation (correct at any selectivity; the vectors are the index folder's)."""
    return filter is None or (filter.expressible and not any(c.numeric for c in filter.conditions))


def expression(filter: Filter | None, fields: Mapping[str, str]) -> str:
    """A search :class:`~lookalike.search.backends.base.Filter` as a Milvus expression (``""``: none):
    its ``where`` values, its ``!=`` conditions and its excluded ids (see :func:`expressible`)."""
    if filter is None:
        return ""
    parts = [filter_expression(filter.where, fields=fields), exclusion_expression(filter.exclude_ids)]
    for c in filter.conditions:
        if c.numeric:
            raise InvalidQueryError(f"{c} compares numbers, which a Milvus text field can't")
        parts.append(_not_in(c.column, c.values, fields))
    return " and ".join(p for p in parts if p)


def _not_in(column: str, values: Sequence[str], fields: Mapping[str, str]) -> str:
    """Rows whose ``column`` holds none of ``values`` (``""``: no value, every row)."""
    if column not in fields:
        raise InvalidQueryError(f"unknown column {column!r}; columns are: {', '.join(fields)}")
    name = fields[column]
    if not _NAME.fullmatch(name):
        raise InvalidQueryError(f"{name!r} is not a Milvus field name")
    vals = list(dict.fromkeys(map(str, values)))
    return f"({name} not in [{', '.join(_literal(v) for v in vals)}])" if vals else ""


def exclusion_expression(ids: Sequence[str]) -> str:
    """Rows that are none of these products (``""`` for none)."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    return f"({PK_FIELD} not in [{', '.join(_literal(i) for i in ids)}])" if ids else ""


# -- Milvus Lite servers: one per file, shared by the stores of this process ---------------------
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def _lite_release(path: str) -> None:
    """Stop the Lite server of ``path`` once the last store using it is closed."""
    with _lite_lock:
        _lite_users[path] -= 1
        if _lite_users[path]:
            return
        del _lite_users[path]
    with contextlib.suppress(ImportError):
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(path)


class MilvusStore:
    """One connection to Milvus and one collection of it (:meth:`create` or :meth:`open` first).

    ``uri`` is a path ending in ``.db`` for Milvus Lite (started in a subprocess, stopped
    on :meth:`close`), or ``http(s)://host:19530`` for a server (``token`` as
    ``user:password`` or an API key). ``consistency`` is what searches and counts wait for
    (see :data:`DEFAULT_CONSISTENCY`).
    """

    def __init__(
        self,
        uri: str | Path,
        *,
        token: str = "",
        timeout: float | None = DEFAULT_TIMEOUT_S,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        consistency: str = DEFAULT_CONSISTENCY,
    ) -> None:
        if consistency not in CONSISTENCY_LEVELS:
            raise InvalidQueryError(f"unknown consistency {consistency!r}; choose one of {', '.join(CONSISTENCY_LEVELS)}")
        self.consistency = consistency
        self._pm = require("pymilvus", "milvus")
        self.batch_rows = batch_rows
        self.timeout = timeout
        self._closed = False
        self._name: str | None = None
        self._fields: dict[str, str] = {}
        self._dim = 0
        self._index = IndexSpec()
        text = str(uri)
        self.is_lite = not _SCHEME.match(text)
        if self.is_lite:
            with warnings.catch_warnings():  # milvus-lite 2.5 imports the deprecated pkg_resources
                warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
                require("milvus_lite", "milvus")
            path = Path(text).expanduser().resolve()
            if path.suffix != ".db":
                raise InvalidQueryError(f"a Milvus Lite file must end in .db, not {path.name!r}")
            if not path.parent.is_dir():
                raise LookalikeError(f"can't open Milvus Lite at {path}: {path.parent} is not a folder")
            text = str(path)
        self.uri = text
        if self.is_lite:
            with _lite_lock:
                _lite_users[text] = _lite_users.get(text, 0) + 1
        try:
            with self._errors("connect"):
                self._client = self._pm.MilvusClient(uri=text, token=token, timeout=timeout)
        except BaseException:
            if self.is_lite:
                _lite_release(text)
            raise

    # -- state -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self._name is None:
            raise InvalidQueryError("no collection chosen: call create() or open() first")
        return self._name

    @property
    def fields(self) -> dict[str, str]:
        """Catalogue column → Milvus field name, for :func:`filter_expression`."""
        return dict(self._fields)

    @property
    def columns(self) -> list[str]:
        return list(self._fields)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def index(self) -> IndexSpec:
        return self._index

    def __repr__(self) -> str:
        where = f"{'lite' if self.is_lite else 'server'} {self.uri}"
        return f"MilvusStore({where!r}, collection={self._name!r}, dim={self._dim}, index={self._index.index_type})"

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- errors ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, action: str, collection: str | None = None) -> Iterator[None]:
        """pymilvus errors → one line in lookalike's exception tree."""
        try:
            yield
        except self._pm.MilvusException as exc:
            message = (str(getattr(exc, "message", "") or exc).strip().splitlines() or ["?"])[0]
            code = getattr(exc, "code", None)
            if code == 100 or "collection not found" in message:
                missing = collection or self._name
                raise IndexFormatError(f"Milvus at {self.uri} has no collection {missing!r}") from exc
            if code == 2 or isinstance(exc, self._pm.exceptions.MilvusUnavailableException):
                raise LookalikeError(f"can't reach Milvus at {self.uri}: {message}") from exc
            raise LookalikeError(f"Milvus {action} failed: {message}") from exc

    # -- collections -------------------------------------------------------------------------
    def create(
        self,
        name: str,
        dim: int,
        columns: Sequence[str],
        *,
        index: IndexSpec | None = None,
        drop: bool = False,
    ) -> None:
        """Create collection ``name`` and use it.

        ``index`` defaults to :data:`LITE_INDEX` (FLAT) for Lite, :data:`SERVER_INDEX` (HNSW)
        for a server. If the collection exists: with ``drop`` it is replaced; without, it is
        opened, and must have the same ``dim`` and ``columns``.
        """
        if not _NAME.fullmatch(name):
            raise InvalidQueryError(f"collection name {name!r}: use letters, digits and underscores")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidQueryError(f"dim must be a whole number >= 1, not {dim!r}")
        fields = {c: field_name(c) for c in columns}
        if len(fields) != len(columns) or len(set(fields.values())) != len(fields):
            raise InvalidQueryError(f"columns must have distinct names: {list(columns)!r}")
        spec = index or (LITE_INDEX if self.is_lite else SERVER_INDEX)
        kind = spec.index_type.upper()
        if self.is_lite and kind not in LITE_INDEX_TYPES:
            raise InvalidQueryError(f"Milvus Lite has no {kind} index; choose one of {', '.join(LITE_INDEX_TYPES)}")
        if kind == "HNSW" and not {"M", "efConstruction"} <= set(spec.params):
            raise InvalidQueryError("an HNSW index needs params M and efConstruction")
        pm = self._pm
        with self._errors("create", name):
            if self._client.has_collection(name, timeout=self.timeout):
                if not drop:
                    self.open(name)
                    if (self._dim, self.columns) != (int(dim), list(columns)):
                        raise IndexFormatError(
                            f"collection {name!r} holds {self._dim}-d vectors and columns {self.columns}, "
                            f"not {int(dim)}-d and {list(columns)}; create it with drop=True to replace it"
                        )
                    return
                self._client.drop_collection(name, timeout=self.timeout)
            schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                   description="lookalike catalogue")
            schema.add_field(PK_FIELD, pm.DataType.VARCHAR, is_primary=True, max_length=MAX_KEY_LENGTH)
            schema.add_field(VECTOR_FIELD, pm.DataType.FLOAT_VECTOR, dim=int(dim))
            for column, fname in fields.items():
                schema.add_field(fname, pm.DataType.VARCHAR, max_length=MAX_TEXT_LENGTH, description=column)
            for fname in DUP_FIELDS:
                schema.add_field(fname, pm.DataType.INT64)
            params = self._client.prepare_index_params()
            params.add_index(field_name=VECTOR_FIELD, index_type=kind, metric_type=METRIC, params=dict(spec.params))
            self._client.create_collection(name, schema=schema, index_params=params,
                                           consistency_level=self.consistency, timeout=self.timeout)
        self._name, self._fields, self._dim, self._index = name, fields, int(dim), IndexSpec(kind, dict(spec.params))
        logger.info("created Milvus collection %s (%d-d, %s) at %s", name, dim, kind, self.uri)

    def open(self, name: str) -> None:
        """Use the existing collection ``name``; IndexFormatError if there is none."""
        with self._errors("open", name):
            if not self._client.has_collection(name, timeout=self.timeout):
                raise IndexFormatError(f"Milvus at {self.uri} has no collection {name!r}")
            info = self._client.describe_collection(name, timeout=self.timeout)
            by_name = {f["name"]: f for f in info["fields"]}
            if not {PK_FIELD, VECTOR_FIELD, *DUP_FIELDS} <= set(by_name):
                raise IndexFormatError(f"collection {name!r} at {self.uri} was not made by lookalike")
            described = self._client.describe_index(name, VECTOR_FIELD, timeout=self.timeout) or {}
            self._client.load_collection(name, timeout=self.timeout)
        self._name = name
        self._fields = {f["description"]: f["name"] for f in info["fields"] if f["name"].startswith("c_")}
        self._dim = int(by_name[VECTOR_FIELD]["params"]["dim"])
        build = {k: v for k, v in described.items() if k in ("M", "efConstruction", "nlist")}
        self._index = IndexSpec(str(described.get("index_type", "?")), build)

    def drop(self) -> None:
        """Delete the collection and everything in it."""
        with self._errors("drop"):
            self._client.drop_collection(self.name, timeout=self.timeout)
        self._name, self._fields, self._dim = None, {}, 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._client.close()
        if self.is_lite:
            _lite_release(self.uri)

    # -- rows --------------------------------------------------------------------------------
    def upsert(
        self,
        keys: Sequence[str],
        vectors: np.ndarray,
        columns: Mapping[str, Sequence[str]] | None = None,
        *,
        dup_exact: Sequence[int] | np.ndarray | None = None,
        dup_near: Sequence[int] | np.ndarray | None = None,
    ) -> int:
        """Insert or replace rows by product id, ``batch_rows`` at a time. Returns the row count.

        ``columns`` must give every column of the collection (values turn into ``str``);
        duplicate groups default to ``-1`` (none).
        """
        name = self.name
        keys = [str(k) for k in keys]
        n = len(keys)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (n, self._dim):
            raise InvalidQueryError(f"vectors must be ({n}, {self._dim}) for {n} keys, not {vectors.shape}")
        if len(set(keys)) != n or "" in keys:
            raise InvalidQueryError("product ids must be distinct and non-empty within one upsert")
        columns = dict(columns or {})
        if set(columns) != set(self._fields):
            missing, unknown = set(self._fields) - set(columns), set(columns) - set(self._fields)
            raise InvalidQueryError(f"upsert needs exactly the columns {self.columns}: "
                                    f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        for column, values in columns.items():
            if len(values) != n:
                raise InvalidQueryError(f"column {column!r} has {len(values)} values for {n} keys")
        groups = {}
        for fname, given in zip(DUP_FIELDS, (dup_exact, dup_near)):
            g = np.full(n, -1, np.int64) if given is None else np.asarray(given, dtype=np.int64)
            if g.shape != (n,):
                raise InvalidQueryError(f"{fname} must have one number per key, not shape {g.shape}")
            groups[fname] = g
        for start in range(0, n, self.batch_rows):
            stop = min(n, start + self.batch_rows)
            rows = []
            for i in range(start, stop):
                row: dict[str, Any] = {PK_FIELD: self._encode(keys[i], "product id", MAX_KEY_LENGTH),
                                       VECTOR_FIELD: vectors[i]}
                for column, values in columns.items():
                    row[self._fields[column]] = self._encode(str(values[i]), f"{column!r} of {keys[i]!r}",
                                                             MAX_TEXT_LENGTH)
                for fname, g in groups.items():
                    row[fname] = int(g[i])
                rows.append(row)
            with self._errors("upsert"):
                self._client.upsert(name, rows, timeout=self.timeout)
        logger.debug("upserted %d rows into %s", n, name)
        return n

    @staticmethod
    def _encode(text: str, what: str, limit: int) -> str:
        out = encode_text(text)
        if len(out) > limit:
            raise InvalidQueryError(f"{what} is {len(out)} bytes once encoded, over {limit}: {text[:40]!r}…")
        return out

    def delete(self, keys: Sequence[str]) -> None:
        """Remove rows by product id (ids not there are ignored)."""
        name = self.name
        keys = [str(k) for k in keys]
        for start in range(0, len(keys), self.batch_rows):
            # our own filter: pymilvus' delete(ids=...) quotes string ids without escaping them
            expr = f"{PK_FIELD} in [{', '.join(_literal(k) for k in keys[start : start + self.batch_rows])}]"
            with self._errors("delete"):
                self._client.delete(name, filter=expr, timeout=self.timeout)

    def flush(self, *, wait_s: float = DEFAULT_FLUSH_WAIT_S) -> None:
        """Seal what was written and wait, up to ``wait_s``, until a server searches it
        through the vector index.

        Until then a server searches new rows by brute force (or, in large growing segments,
        with a temporary IVF index). Milvus 2.3.5 took 12-16 s after a flush to serve a sealed,
        indexed segment; segments under 1,024 rows are never indexed. Lite only flushes.
        """
        name = self.name
        with self._errors("flush"):
            self._client.flush(name, timeout=self.timeout)
            if self.is_lite:
                return
            deadline = time.monotonic() + wait_s
            while True:
                info = self._client.describe_index(name, VECTOR_FIELD, timeout=self.timeout) or {}
                total = int(info.get("total_rows", 0))
                served = sum(int(seg.num_rows) for seg in self._client.list_loaded_segments(name, timeout=self.timeout))
                if int(info.get("pending_index_rows", 0)) == 0 and int(info.get("indexed_rows", 0)) == total <= served:
                    return
                if time.monotonic() > deadline:
                    raise LookalikeError(f"after {wait_s:.0f} s Milvus has indexed {info.get('indexed_rows')} and serves "
                                         f"{served} of the {total} sealed rows of {name!r}")
                time.sleep(0.5)

    def count(self) -> int:
        """Rows in the collection now."""
        with self._errors("count"):
            res = self._client.query(self.name, filter="", output_fields=["count(*)"], timeout=self.timeout,
                                     consistency_level=self.consistency)
        return int(res[0]["count(*)"])

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        expr: str | None = None,
        ef: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Best ``k`` (product id, inner product) per query, best first, among rows matching
        ``expr`` (see :func:`filter_expression`). Fewer when fewer rows match.

        ``ef`` is the HNSW search breadth (default :data:`DEFAULT_EF`, never below ``k``);
        other index types ignore it.
        """
        name = self.name
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self._dim:
            raise InvalidQueryError(f"queries must be (b, {self._dim}), not {queries.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise InvalidQueryError(f"k must be a whole number from 1 to {MAX_K}, not {k!r}")
        params: dict[str, Any] = {}
        if self._index.index_type == "HNSW":
            params["ef"] = max(int(ef or DEFAULT_EF), int(k))
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), self.batch_rows):
            with self._errors("search"):
                res = self._client.search(
                    name,
                    data=queries[start : start + self.batch_rows],
                    limit=int(k),
                    filter=expr or "",
                    output_fields=[],
                    search_params={"metric_type": METRIC, "params": params},
                    timeout=self.timeout,
                    consistency_level=self.consistency,
                )
            for hits in res:
                found = [(unquote(str(h["id"])), float(h["distance"])) for h in hits]
                found.sort(key=lambda t: (-t[1], t[0]))  # equal scores in a fixed order
                out.append(found)
        return out


# -- the back end: an index folder whose vectors are searched in Milvus --------------------------
TOKEN_ENV = "LOOKALIKE_MILVUS_TOKEN"
_stores: dict[tuple[str, str], MilvusStore] = {}
_stores_lock = threading.Lock()


def connect(config: Mapping[str, Any]) -> MilvusStore:
    """The store of an index's ``manifest["index"]`` (uri, collection), one per process."""
    uri, name = str(config.get("uri") or ""), str(config.get("collection") or "")
    if not uri or not name:
        raise IndexFormatError("the index names no Milvus uri and collection (rebuild with --backend milvus)")
    key = (uri, name)
    with _stores_lock:
        store = _stores.get(key)
        if store is None or store._closed:
            import os

            store = MilvusStore(uri, token=os.environ.get(TOKEN_ENV, ""),
                                consistency=str(config.get("consistency") or DEFAULT_CONSISTENCY))
            store.open(name)
            _stores[key] = store
        return store


def close_stores() -> None:
    """Close this process's shared connections (each Milvus Lite server stops with its last
    user). The next search connects again; for a process that is done with Milvus, or tests."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        with contextlib.suppress(Exception):  # a connection that is already gone is closed
            store.close()


def _forget_stores() -> None:
    """In a forked child (server workers): a gRPC connection can't cross fork; connect anew."""
    _stores.clear()


if hasattr(__import__("os"), "register_at_fork"):
    __import__("os").register_at_fork(after_in_child=_forget_stores)


def collection_name(base: str) -> str:
    """A fresh collection name for one build: the folder's name, made safe, and a suffix."""
    import uuid

    safe = re.sub(r"[^A-Za-z0-9_]", "_", base)[:180] or "catalogue"
    if not safe[0].isalpha():
        safe = "c_" + safe
    return f"{safe}_{uuid.uuid4().hex[:8]}"


def write_rows(store: MilvusStore, ids: Sequence[str], vectors: np.ndarray, colour: np.ndarray,
               columns: Mapping[str, Sequence[str]]) -> None:
    """Upsert products: the stored vector is ``[shape, colour]`` as the exact back end searches it."""
    if len(ids):
        store.upsert(list(ids), searchable(vectors, colour, "cosine"),
                     {c: [str(v) for v in vals] for c, vals in columns.items()})


class MilvusTarget:
    """Where the vectors of an index searched in Milvus are written: by a build (a new collection,
    :meth:`create`) and by every live change (the index's collection, :meth:`of`), through the
    same two calls. The stored vector is ``[shape, colour]``, as the exact back end searches it."""

    def __init__(self, store: MilvusStore, settings: Any, *, owned: bool) -> None:
        self.store, self.settings, self._owned = store, settings, owned

    @classmethod
    def create(cls, folder: Path, uri: str, collection: str | None, width: int, columns: Sequence[str]) -> "MilvusTarget":
        """A new collection for a build of ``folder`` (readers of the previous build keep theirs)."""
        from lookalike.folder.manifest import REMOTE_SCHEMES, BackendSettings

        name = collection_name(collection or folder.resolve().name)
        uri = uri if uri.startswith(REMOTE_SCHEMES) else str(Path(uri).expanduser().resolve())
        store = MilvusStore(uri)
        try:
            store.create(name, width, list(columns))
        except BaseException:
            store.close()
            raise
        return cls(store, BackendSettings("milvus", uri=uri, collection=name,
                                          extra={"index_type": store.index.index_type}), owned=True)

    @classmethod
    def of(cls, settings: Any) -> "MilvusTarget":
        """The collection an index's settings (:class:`~lookalike.folder.manifest.BackendSettings`) name,
        on this process's connection."""
        return cls(connect(settings.to_json()), settings, owned=False)

    def write(self, ids: Sequence[str], vectors: np.ndarray, colour: np.ndarray,
              columns: Mapping[str, Sequence[str]]) -> None:
        """Upsert products (their catalogue columns as text)."""
        write_rows(self.store, ids, vectors, colour, columns)

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            self.store.delete(sorted(ids))

    def close(self) -> None:
        """Close a connection this target opened (a build's); the process's shared one stays."""
        if self._owned:
            self.store.close()


class MilvusIndex:
    """Search in Milvus, filters pushed into the search as expressions; candidates re-scored
    exactly from the index's own rows, so scores equal the exact back end's.

    The vectors stay in Milvus: a serving process reads only the rows Milvus returned (the
    index folder's vectors are memory-mapped). A search's :class:`~lookalike.search.backends.base.Filter`
    travels as an expression (:func:`expression`); its row mask is never computed. A filter that
    only a mask can say (``export``: one exclusion per query), or that compares numbers on
    columns Milvus keeps as text, runs on the exact oracle (:func:`expressible`).
    """

    name = "milvus"

    def __init__(self, snapshot: Any, *, metric: str) -> None:
        if metric != "cosine":
            raise InvalidQueryError("the milvus back end needs metric cosine (inner products)")
        self.snapshot = snapshot
        self._config = snapshot.settings.index.to_json()
        self.metric = metric
        meta = snapshot.dense_columns()
        self.ids = meta[snapshot.id_column].tolist()
        keys = photo_keys(self.ids, meta["_photo"].tolist())
        self._row_of = {key: i for i, key in enumerate(keys)}
        self._keys_of: dict[str, list[str]] = {}
        for pid, key in zip(self.ids, keys):
            self._keys_of.setdefault(pid, []).append(key)
        self._exact: Any = None

    @classmethod
    def open(cls, snapshot: Any, *, metric: str) -> "MilvusIndex":
        index = cls(snapshot, metric=metric)
        connect(index._config)  # now: a wrong uri or a missing collection fails at load, with one line
        return index

    @property
    def store(self) -> MilvusStore:
        return connect(self._config)  # this process's connection (a forked worker makes its own)

    def __len__(self) -> int:
        return len(self.ids)

    def exact(self) -> Any:
        """The exact oracle over the same generation (for mask-only searches)."""
        if self._exact is None:
            from lookalike.search.backends.exact import ExactIndex

            self._exact = ExactIndex.open(self.snapshot, metric=self.metric)
        return self._exact

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        b = len(queries)
        k = max(0, min(k, len(self.ids)))
        if k == 0:
            return np.zeros((b, 0), np.float32), np.zeros((b, 0), np.int64)
        if not expressible(filter):  # a mask alone (export), a numeric condition: exactly, here
            return self.exact().search(queries, k, filter=filter)
        if filter is not None and filter.exclude_ids:  # a product is excluded with all its photos
            filter = Filter(filter.where, [key for pid in filter.exclude_ids for key in self._keys_of.get(pid, [pid])],
                            conditions=filter.conditions)
        expr = expression(filter, self.store.fields)
        # Milvus may hold rows this generation does not (a change being committed): over-fetch
        found = self.store.search(queries, min(MAX_K, k + 16), expr=expr)
        out_s = np.full((b, k), -np.inf, np.float32)
        out_r = np.full((b, k), -1, np.int64)
        for j, hits in enumerate(found):
            rows = np.array([self._row_of[p] for p, _ in hits if p in self._row_of], dtype=np.int64)
            if not len(rows):
                continue
            vectors, colour = self.snapshot.take(rows)
            scores = (queries[j : j + 1] @ searchable(vectors, colour, "cosine").T).astype(np.float32)  # as ExactIndex does
            s, r = topk_sorted(scores, rows[None, :], k)
            out_s[j], out_r[j] = s[0], r[0]
        return out_s, out_r

    def serialize(self) -> dict[str, bytes]:
        return {}
