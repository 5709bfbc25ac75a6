"""The settings a generation was made with, typed and read in one place.

A generation's record (``generations/<N>.json``, see :mod:`lookalike.folder.artifacts`) holds the
settings that produced it: the model and its input, the projection, the metric, the back end,
the colour weight and the catalogue's columns. :class:`Manifest` is that record as frozen
dataclasses: :meth:`Manifest.from_json` reads it (filling what older formats did not write, and
refusing what is malformed, with one line), :meth:`Manifest.to_json` writes it. Every reader
goes through it; nothing else reads the record's settings with ``.get(key, fallback)``.

What older records lack, and what it meant when they were written: ``resize`` (squash),
``trim`` (off), ``precision`` (fp32), ``input_size`` (the model's own), ``colour_weight`` (0),
``colour_dim`` (0: no colour part), ``index`` (the exact back end), ``projection_dim`` (0),
``numeric_columns`` (none recorded: a numeric filter is then checked against the rows themselves),
``query_defaults`` (none) and ``rules`` (none).

The shop's steering travels with the generation too: :class:`QueryDefaults` (a default ``where``,
boosts, ``max_per`` and diversity that every query applies unless it overrides them) and the
pinned and blocked pairs (:class:`Rule`), both set without a rebuild (``lookalike settings``,
``lookalike rules``) by committing a generation whose rows are the previous one's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from lookalike.errors import IndexFormatError

__all__ = ["Manifest", "ModelSettings", "CatalogSettings", "BackendSettings", "QueryDefaults", "Rule", "REMOTE_SCHEMES"]

#: a Milvus uri with one of these schemes is a server; anything else is a Milvus Lite ``.db``
REMOTE_SCHEMES = ("http://", "https://", "tcp://")
#: what a record holds about the commit itself (written by Writer.commit), not settings
RECORD_KEYS = frozenset({"format", "format_version", "generation", "parent", "created", "lookalike_version",
                         "rows", "operation", "segments", "projection_segment", "state", "report_file"})
_SETTINGS = frozenset({"model", "catalog", "metric", "dim", "colour_dim", "colour_weight", "index", "projection",
                       "duplicates", "build", "report", "query_defaults", "rules"})


@dataclass(frozen=True)
class ModelSettings:
    """The model and its input, as the build ran them; enough to make the same encoder again."""

    name: str
    pooling: str
    dim: int
    resize: str = "squash"
    trim: bool = False
    input_size: int | None = None
    precision: str = "fp32"
    projection_dim: int = 0
    weights: str = ""
    #: what ran the model at build (``onnx`` or ``openvino``, as calibrated there), and what the
    #: build asked for: ``auto`` (each machine calibrates its own) or one runtime forced
    runtime: str = ""
    requested_runtime: str = "auto"
    calibration: Mapping[str, Any] | None = None

    def encoder_settings(self) -> Any:
        """The :class:`~lookalike.encoders.EncoderSettings` that make this model again: the
        model's own weights, and the runtime the build asked for (so photo queries and live
        changes run on ONNX Runtime when the build was forced to it)."""
        from lookalike.encoders import EncoderSettings

        return EncoderSettings(model=self.name, pooling=self.pooling, resize=self.resize, trim=self.trim,
                               size=self.input_size, precision=self.precision, runtime=self.requested_runtime)

    def describes(self, enc: Any) -> bool:
        """Whether an encoder gives this model's vectors (name, pooling, dim, input side, trim)."""
        pre = enc.preprocess
        return (enc.name, enc.pooling, enc.dim, pre.size, pre.trim) == (
            self.name, self.pooling, self.dim, self.input_size or pre.size, self.trim)

    def same_vectors(self, other: "ModelSettings") -> bool:
        """Whether the two give the same stored vectors for a photo (a build may reuse rows)."""
        keys = ("name", "pooling", "resize", "trim", "input_size", "precision", "dim", "projection_dim")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "pooling": self.pooling, "resize": self.resize, "trim": self.trim,
               "input_size": self.input_size, "precision": self.precision, "dim": self.dim,
               "projection_dim": self.projection_dim, "weights": self.weights, "runtime": self.runtime,
               "runtime_requested": self.requested_runtime}
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        return out


@dataclass(frozen=True)
class CatalogSettings:
    """The catalogue the index was built from: its id and photo columns, its columns in order,
    the columns whose non-empty cells were all numbers at build (``numeric_columns``, what
    numeric filters are checked against), and the folders its photos may come from (the
    server serves photos from these only)."""

    id_column: str
    image_column: str = "Image"
    columns: tuple[str, ...] = ()
    path: str | None = None
    sha256: str | None = None
    rows_total: int = 0
    images_root: str | None = None
    images_roots: tuple[str, ...] = ()
    allow_outside_images: bool = False
    #: the folder photo URLs were fetched to (reading/fetch), when the catalogue has any
    photo_cache: str | None = None
    #: False: photo URLs at loopback, private, link-local or reserved addresses are refused (changes too)
    private_urls: bool = True
    numeric_columns: tuple[str, ...] = ()
    #: every column naming photos (``image_column`` first), and what splits a cell into several
    image_columns: tuple[str, ...] = ()
    image_separator: str = "|"
    #: the column naming a variant's parent product (siblings are not recommended for one another)
    parent_column: str | None = None
    #: the platform layout the catalogue was read with (``reading/layouts``), if any
    layout: str | None = None
    #: whom the photos are credited to where they are shown (the page shows it under them)
    photo_credit: str = ""

    @property
    def photo_columns(self) -> tuple[str, ...]:
        """The columns naming photos (one, for an index built before there could be several)."""
        return self.image_columns or (self.image_column,)

    @property
    def photo_roots(self) -> list[str]:
        """Every folder a product's photo may lie in (but uploads' ``photos/``)."""
        return [r for r in (self.images_root, *self.images_roots, self.photo_cache) if r]

    def default_root(self) -> Path:
        """Where photo paths of a change are relative to when no folder is given."""
        return Path(self.images_root or (Path(self.path).parent if self.path else Path.cwd()))

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "sha256": self.sha256, "rows_total": self.rows_total, "id_column": self.id_column,
               "image_column": self.image_column, "images_root": self.images_root,
               "allow_outside_images": self.allow_outside_images, "columns": list(self.columns)}
        if self.images_roots:
            out["images_roots"] = list(self.images_roots)
        if self.photo_cache:
            out["photo_cache"] = self.photo_cache
        if not self.private_urls:
            out["private_urls"] = False
        if self.numeric_columns:
            out["numeric_columns"] = list(self.numeric_columns)
        if self.image_columns and self.image_columns != (self.image_column,):
            out["image_columns"] = list(self.image_columns)
        if self.image_separator != "|":
            out["image_separator"] = self.image_separator
        if self.parent_column:
            out["parent_column"] = self.parent_column
        if self.layout:
            out["layout"] = self.layout
        if self.photo_credit:
            out["photo_credit"] = self.photo_credit
        return out


@dataclass(frozen=True)
class BackendSettings:
    """Where the index is searched: ``exact`` or ``hnsw`` in the folder, or a Milvus collection
    (``uri``, ``collection`` and what the build recorded of it in ``extra``)."""

    backend: str = "exact"
    uri: str = ""
    collection: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def milvus_lite(self) -> bool:
        """A Milvus Lite ``.db``, which only one process may open."""
        return self.backend == "milvus" and not self.uri.startswith(REMOTE_SCHEMES)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backend": self.backend, **self.extra}
        if self.uri:
            out["uri"] = self.uri
        if self.collection:
            out["collection"] = self.collection
        return out


@dataclass(frozen=True)
class QueryDefaults:
    """What every query of the index applies unless it says otherwise (texts as the CLI takes
    them; :mod:`lookalike.search.steering` parses and applies them): ``where`` conditions (a
    query's own condition on a column replaces the default's on that column), ``boost``s (a query's
    boost of the same column or condition replaces the default's), ``max_per`` caps (``COL=N``) and
    the MMR ``diversity`` (``None``: off)."""

    where: tuple[str, ...] = ()
    boost: tuple[str, ...] = ()
    max_per: tuple[str, ...] = ()
    diversity: float | None = None

    def __bool__(self) -> bool:
        return bool(self.where or self.boost or self.max_per or self.diversity is not None)

    def to_json(self) -> dict[str, Any]:
        return {"where": list(self.where), "boost": list(self.boost), "max_per": list(self.max_per),
                "diversity": self.diversity}

    @classmethod
    def from_json(cls, data: Any) -> "QueryDefaults":
        if not data:
            return cls()
        diversity = data.get("diversity")
        return cls(tuple(str(x) for x in data.get("where") or ()), tuple(str(x) for x in data.get("boost") or ()),
                   tuple(str(x) for x in data.get("max_per") or ()), None if diversity is None else float(diversity))


@dataclass(frozen=True)
class Rule:
    """A merchandiser's rule: ``pin`` shows product ``show`` at ``rank`` in the results of a
    query by product ``for_id``; ``block`` never shows ``show`` for ``for_id`` (``None``: for
    any query, photo queries too)."""

    kind: str
    show: str
    for_id: str | None = None
    rank: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("pin", "block"):
            raise ValueError(self.kind)

    @property
    def key(self) -> tuple[str, str | None, str]:
        """What makes a rule itself: a second pin of the same pair replaces the first's rank."""
        return self.kind, self.for_id, self.show

    def __str__(self) -> str:
        if self.kind == "pin":
            return f"pin {self.show} at rank {self.rank} for {self.for_id}"
        return f"block {self.show} " + (f"for {self.for_id}" if self.for_id is not None else "everywhere")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "show": self.show, "for": self.for_id}
        if self.kind == "pin":
            out["rank"] = self.rank
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Rule":
        return cls(str(data["kind"]), str(data["show"]), None if data.get("for") is None else str(data["for"]),
                   int(data.get("rank") or 1))


@dataclass(frozen=True)
class Manifest:
    """A generation's settings (see the module docstring)."""

    model: ModelSettings
    catalog: CatalogSettings
    metric: str
    dim: int
    colour_dim: int = 0
    colour_weight: float = 0.0
    index: BackendSettings = field(default_factory=BackendSettings)
    projection: Mapping[str, Any] | None = None
    duplicates: Mapping[str, Any] = field(default_factory=dict)
    build: Mapping[str, Any] = field(default_factory=dict)
    report: Mapping[str, Any] = field(default_factory=dict)
    #: settings this module does not model (e.g. ``tune``'s record), carried as they are
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: when the generation was committed, and its segment holding the projection (records only)
    created: str = ""
    projection_segment: str | None = None
    #: the shop's steering: defaults every query applies, pinned and blocked pairs
    query_defaults: QueryDefaults = field(default_factory=QueryDefaults)
    rules: tuple[Rule, ...] = ()

    @classmethod
    def from_json(cls, record: Mapping[str, Any], where: object = "the index") -> "Manifest":
        """The settings of a generation's record (or a format-1 ``manifest.json``); one line
        naming ``where`` when the settings a reader depends on are malformed."""
        try:
            m, c = record["model"], record["catalog"]
            index = dict(record.get("index") or {})
            manifest = cls(
                model=ModelSettings(
                    name=_text(m["name"]), pooling=_text(m.get("pooling", "grid2")), dim=_int(m["dim"]),
                    resize=_text(m.get("resize") or "squash"), trim=bool(m.get("trim", False)),
                    input_size=None if m.get("input_size") is None else _int(m["input_size"]),
                    precision=_text(m.get("precision") or "fp32"), projection_dim=int(m.get("projection_dim") or 0),
                    weights=str(m.get("weights") or ""), runtime=str(m.get("runtime") or ""),
                    requested_runtime=str(m.get("runtime_requested") or "auto"),
                    calibration=m.get("calibration")),
                catalog=CatalogSettings(
                    id_column=_text(c["id_column"]), image_column=str(c.get("image_column") or "Image"),
                    columns=tuple(str(x) for x in c.get("columns") or ()), path=c.get("path"),
                    sha256=c.get("sha256"), rows_total=int(c.get("rows_total") or 0),
                    images_root=c.get("images_root") or None,
                    images_roots=tuple(str(x) for x in c.get("images_roots") or ()),
                    allow_outside_images=bool(c.get("allow_outside_images", False)),
                    photo_cache=str(c["photo_cache"]) if c.get("photo_cache") else None,
                    private_urls=bool(c.get("private_urls", True)),
                    numeric_columns=tuple(str(x) for x in c.get("numeric_columns") or ()),
                    image_columns=tuple(str(x) for x in c.get("image_columns") or ()),
                    image_separator=str(c.get("image_separator", "|")),
                    parent_column=str(c["parent_column"]) if c.get("parent_column") else None,
                    layout=str(c["layout"]) if c.get("layout") else None,
                    photo_credit=str(c.get("photo_credit") or "")),
                metric=_metric(record["metric"]),
                dim=_int(record["dim"]),
                colour_dim=int(record.get("colour_dim") or 0),
                colour_weight=float(record.get("colour_weight") or 0.0),
                index=BackendSettings(backend=str(index.pop("backend", "exact")), uri=str(index.pop("uri", "") or ""),
                                      collection=str(index.pop("collection", "") or ""), extra=index),
                projection=record.get("projection") or None,
                duplicates=dict(record.get("duplicates") or {}),
                build=dict(record.get("build") or {}),
                report=dict(record.get("report") or {}),
                extra={k: v for k, v in record.items() if k not in _SETTINGS and k not in RECORD_KEYS},
                created=str(record.get("created") or ""),
                projection_segment=record.get("projection_segment"),
                query_defaults=QueryDefaults.from_json(record.get("query_defaults")),
                rules=tuple(Rule.from_json(r) for r in record.get("rules") or ()),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise IndexFormatError(f"{where} is damaged: its settings (model, metric, dim, id column) are "
                                   "malformed") from None
        return manifest

    def to_json(self) -> dict[str, Any]:
        """The settings part of a generation's record (:meth:`lookalike.folder.store.Writer.commit`)."""
        return {"model": self.model.to_json(), "dim": self.dim, "projection": None if self.projection is None
                else dict(self.projection), "colour_dim": self.colour_dim, "metric": self.metric,
                "index": self.index.to_json(), "colour_weight": self.colour_weight,
                "duplicates": dict(self.duplicates), "catalog": self.catalog.to_json(), "build": dict(self.build),
                "report": dict(self.report), **self.extra,
                **({"query_defaults": self.query_defaults.to_json()} if self.query_defaults else {}),
                **({"rules": [r.to_json() for r in self.rules]} if self.rules else {})}

    def with_catalog(self, **changes: Any) -> "Manifest":
        return replace(self, catalog=replace(self.catalog, **changes))

    def steered_like(self, other: "Manifest") -> "Manifest":
        """These settings with ``other``'s steering (a rebuild keeps the shop's defaults and rules,
        and the photo credit unless it gives one)."""
        catalog = self.catalog if self.catalog.photo_credit else replace(self.catalog,
                                                                         photo_credit=other.catalog.photo_credit)
        return replace(self, query_defaults=other.query_defaults, rules=other.rules, catalog=catalog)

    def with_duplicates(self, groups: int, rows: int) -> "Manifest":
        return replace(self, duplicates={**self.duplicates, "groups": groups, "rows": rows})


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(value)
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(value)
    return value


def _metric(value: Any) -> str:
    if value not in ("cosine", "euclidean"):
        raise ValueError(value)
    return str(value)
