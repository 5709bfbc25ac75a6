"""``Recommender``: load an index folder and answer "which products look most like this?".

Scores: for ``cosine`` indexes, ``(1 - w) * shape + w * colour`` where both are cosine
similarities and ``w`` is the colour weight (set at build, overridable per query); for
``euclidean`` indexes, minus the Euclidean distance. Higher is always more alike.

A query never returns its own products, nor any product whose photo is byte-identical to
a query product's photo; with ``collapse_duplicates`` (the default) a result list also
holds at most one product of each group of identical or near-identical photos, so a
shopper never sees the same picture twice in one list.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from lookalike.config import DEFAULT_EXPORT_K, DEFAULT_K, SCORINGS, check_colour_weight
from lookalike.encoders import MODELS, CNNEncoder, Encoder, is_hf_model, is_own_model, l2_normalize
from lookalike.errors import IndexFormatError, InvalidQueryError, ModelError, NoTextTowerError, UnknownProductError
from lookalike.folder.manifest import Manifest
from lookalike.folder.projection import Projection
from lookalike.folder.rows import query_vector, searchable
from lookalike.folder.store import ALL_HIDDEN, Snapshot, Store
from lookalike.reading.images import (
    COLOUR_DIM,
    ImageSource,
    colour_descriptor,
    crop_box,
    model_input,
    open_image,
    prepare,
)
from lookalike.search.backends import Backend, Filter, VectorIndex, open_index
from lookalike.search.filters import RowFilters, Where, describe_where
from lookalike.search.steering import (
    DEFAULT_CANDIDATES,
    Boost,
    Boosts,
    Rule,
    Steer,
    check_diversity,
    merge_boosts,
    merge_where,
    mmr,
    parse_max_per,
    rules_for,
)

logger = logging.getLogger(__name__)

__all__ = ["Recommender", "LiveRecommender", "Recommendation", "Results", "MAX_K", "MAX_IDS", "Where"]

#: the most results one query may ask for
MAX_K = 1000
#: most product ids one query may combine (a "recently viewed" list, not a catalogue)
MAX_IDS = 100


@dataclass(frozen=True)
class Recommendation:
    id: str
    rank: int
    score: float
    metadata: dict[str, str] = field(default_factory=dict)
    #: which of the product's photos matched best (set where products may have several)
    matched_photo: str = ""
    #: the score in named parts that add up to it (``explain=True``): ``shape``, ``colour``, each boost
    explain: dict[str, float] | None = None
    #: the rule that placed it (``"pinned at rank 1"``), if one did
    rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {**self.metadata, "id": self.id, "rank": self.rank, "score": round(self.score, 6)}
        if self.matched_photo:
            out["matched_photo"] = self.matched_photo
        if self.explain is not None:
            out["explain"] = {name: round(v, 6) for name, v in self.explain.items()}
        if self.rule:
            out["rule"] = self.rule
        return out


@dataclass(frozen=True)
class Results:
    """The results of one query: what was asked, and the ranked products."""

    query: dict[str, Any]
    items: list[Recommendation]

    def __iter__(self) -> Iterator[Recommendation]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.items]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "results": [r.to_dict() for r in self.items]}


#: scores this close are ties, ranked by product id (float32 scores of one vector scored in
#: two matrix products differ by up to ~1e-7)
TIE_EPS = 1e-6
#: with a cap per column value, the first search fetches this many hits per result wanted
CAP_FETCH = 128


class Recommender:
    """Visual "more like this" over one index folder. Build it with :meth:`load`."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        vectors: np.ndarray | None,
        colour: np.ndarray | None,
        metadata: pd.DataFrame | Mapping[str, np.ndarray],
        index: VectorIndex,
        *,
        encoder: Encoder | None = None,
        projection: Projection | None = None,
        generation: int = 0,
    ) -> None:
        self.path = path
        #: the index generation this recommender reads (it never changes under it)
        self.generation = generation
        self.projection = projection
        #: the generation's record as stored; its settings, typed: :attr:`settings`
        self.manifest = manifest
        self.settings = Manifest.from_json(manifest, path)
        self._arrays = None if vectors is None or colour is None else (vectors, colour)
        self._snapshot: Snapshot | None = None
        self.index = index
        self.metric: str = self.settings.metric
        self.colour_weight: float = self.settings.colour_weight
        self.id_column: str = self.settings.catalog.id_column
        self._encoder = encoder
        self._frame: pd.DataFrame | None = None
        self._data: dict[str, np.ndarray] = {}
        self.metadata = metadata

    @property
    def vectors(self) -> np.ndarray:
        """Every product's stored shape vector (row i is product ``ids[i]``)."""
        return self._all_arrays()[0]

    @property
    def colour(self) -> np.ndarray:
        """Every product's colour descriptor."""
        return self._all_arrays()[1]

    def _all_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            assert self._snapshot is not None
            self._arrays = self._snapshot.dense_arrays()
        return self._arrays

    def _rows_arrays(self, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, colour) of some rows, without reading every row of a memory-mapped index."""
        if self._arrays is None and self._snapshot is not None:
            return self._snapshot.take(np.asarray(rows, dtype=np.int64))
        vectors, colour = self._all_arrays()
        return np.asarray(vectors[rows], dtype=np.float32), np.asarray(colour[rows], dtype=np.float32)

    @property
    def metadata(self) -> pd.DataFrame:
        """Every product's catalogue and hidden columns, row i for row i of the vectors."""
        if self._frame is None:
            from lookalike.folder.store import columns_frame

            self._frame = columns_frame(self._data)
        return self._frame

    @metadata.setter
    def metadata(self, metadata: pd.DataFrame | Mapping[str, np.ndarray]) -> None:
        if isinstance(metadata, pd.DataFrame):
            data = {c: (metadata[c].to_numpy() if metadata[c].dtype.kind in "iufb"
                        else metadata[c].astype(str).to_numpy(dtype=object)) for c in metadata.columns}
            self._frame = metadata
        else:
            data, self._frame = dict(metadata), None
        # plain arrays per column: result rows are read one cell at a time, and a pandas
        # lookup per cell costs more than the search itself
        self._data = data
        #: each row's product id (row i of :attr:`vectors`); a product of several photos is several rows
        self.ids: list[str] = data[self.id_column].tolist()
        codes, uniques = pd.factorize(np.asarray(self.ids, dtype=object), sort=False)
        #: each row's product as a number (its place in :attr:`products`)
        self._product = codes.astype(np.int64)
        #: the products, each once, in index order
        self.products: list[str] = [str(u) for u in uniques]
        self.multi_photo = len(self.products) < len(self.ids)
        self._rows_of = _rows_by_product(self._product, len(self.products))
        self._row_of = {pid: int(rows[0]) for pid, rows in zip(self.products, self._rows_of)}
        self.columns = [c for c in data if c not in ALL_HIDDEN]
        self._cells = data  # columns are looked up by name; hidden ones are never shown
        self._exact_group = self._group_ids(np.asarray(data["_dup_exact"]))
        self._near_group = self._group_ids(np.asarray(data["_dup_near"]))
        cat = self.settings.catalog
        self._filters = RowFilters(self.columns, data, self.ids, self._exact_group,
                                   numeric=cat.numeric_columns, products=self._product if self.multi_photo else None,
                                   parent_column=cat.parent_column)
        self._boosts: dict[tuple[Boost, ...], Boosts] = {}

    @property
    def main_rows(self) -> np.ndarray:
        """Each product's main-photo row, in the order of :attr:`products`."""
        return np.array([self._row_of[p] for p in self.products], dtype=np.int64)

    @property
    def product_metadata(self) -> pd.DataFrame:
        """:attr:`metadata` with one row per product (its main photo's), in index order."""
        if not self.multi_photo:
            return self.metadata
        return self.metadata.iloc[self.main_rows].reset_index(drop=True)

    @staticmethod
    def _group_ids(groups: np.ndarray) -> np.ndarray:
        """Make every row's group unique: singletons get their own number."""
        n = len(groups)
        g = groups.astype(np.int64).copy()
        alone = g < 0
        g[alone] = (g.max(initial=-1) + 1) + np.arange(int(alone.sum()))
        return g if n else g

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        backend: str | Backend | None = None,
        index: VectorIndex | None = None,
        encoder: Encoder | None = None,
        mmap: bool = False,
    ) -> "Recommender":
        """Open the current generation of an index. Raises :class:`IndexFormatError` for anything amiss.

        ``backend`` searches with another back end than the one the index was built for (a name
        of ``lookalike.search.backends.BACKENDS``, or a class with ``open(snapshot, metric=)``); ``index``
        is a back end already opened over this generation's rows, used as it is.
        An index searched in Milvus is memory-mapped: only the rows a search returns are read."""
        return cls.from_snapshot(Store(path).snapshot(mmap=mmap or None), backend=backend, index=index,
                                 encoder=encoder)

    @classmethod
    def from_snapshot(
        cls, snapshot: Snapshot, *, backend: str | Backend | None = None, index: VectorIndex | None = None,
        encoder: Encoder | None = None,
    ) -> "Recommender":
        """A recommender over one loaded generation (:meth:`lookalike.folder.store.Store.snapshot`)."""
        path, settings = snapshot.path, snapshot.settings
        model, metric = settings.model, settings.metric
        if model.name not in MODELS and not is_own_model(model.name):
            raise IndexFormatError(f"{path} was built with model {model.name!r}, which this lookalike does not know")
        if encoder is not None and (encoder.name, encoder.pooling, encoder.dim) != (model.name, model.pooling, model.dim):
            raise IndexFormatError(
                f"{path} was built with {model.name}/{model.pooling} ({model.dim}-d), "
                f"not {encoder.name}/{encoder.pooling} ({encoder.dim}-d)"
            )
        meta = snapshot.dense_columns()
        if index is None:
            index = open_index(backend or settings.index.backend, snapshot, metric=metric)
        elif len(index) != len(meta[snapshot.id_column]):
            raise IndexFormatError(f"the back end given holds {len(index)} rows; generation {snapshot.generation} "
                                   f"of {path} has {len(meta[snapshot.id_column])}")
        projection = snapshot.projection
        if projection is not None and projection.dim != settings.dim:
            raise IndexFormatError(f"{path} is inconsistent: projection gives {projection.dim}-d vectors")
        rec = cls(path, snapshot.manifest, None, None, meta, index, encoder=encoder, projection=projection,
                  generation=snapshot.generation)
        rec._snapshot = snapshot
        return rec

    def __len__(self) -> int:
        """The number of products (:attr:`n_rows` counts their photos)."""
        return len(self.products)

    @property
    def n_rows(self) -> int:
        """The rows (photos) the index holds."""
        return len(self.ids)

    def __contains__(self, pid: object) -> bool:
        return str(pid) in self._row_of

    def __repr__(self) -> str:
        m = self.settings.model
        photos = f", photos={self.n_rows}" if self.multi_photo else ""
        return (f"Recommender({str(self.path)!r}, rows={len(self)}{photos}, model={m.name}/{m.pooling}, "
                f"metric={self.metric})")

    @property
    def encoder(self) -> Encoder:
        """The model that built the index (created on first use: photo queries need it)."""
        if self._encoder is None:
            m = self.settings.model
            enc = m.encoder_settings().make()
            # an onnx: or hf: model's name is its content key: the same name is the same model
            if isinstance(enc, CNNEncoder) and not is_own_model(m.name) and m.weights and enc.weights_id != m.weights:
                logger.warning("index was built with weights %s, now using %s", m.weights, enc.weights_id)
            if enc.dim != m.dim:
                raise ModelError(f"model gives {enc.dim}-d vectors, the index was built from {m.dim}-d")
            self._encoder = enc
        return self._encoder

    # -- products ----------------------------------------------------------------------
    def row(self, pid: object) -> int:
        """The row of the product's main photo."""
        try:
            return self._row_of[str(pid).strip()]
        except KeyError:
            raise UnknownProductError(f"unknown product id: {pid}") from None

    def rows(self, pid: object) -> np.ndarray:
        """The rows of all the product's photos, main photo first."""
        return self._rows_of[int(self._product[self.row(pid)])]

    def photos(self, pid: object) -> list[str]:
        """The product's photos as the catalogue names them (paths or URLs), main photo first."""
        return [str(self._data["_ref"][r]) for r in self.rows(pid)]

    def photo_path(self, pid: object, photo: str = "") -> Path:
        """The file of the product's photo the catalogue names ``photo`` (a result's
        ``matched_photo``), else of its main photo."""
        refs = self.photos(pid)
        return self.photo_paths(pid)[refs.index(photo)] if photo in refs else self.image_path(pid)

    def photo_paths(self, pid: object) -> list[Path]:
        """The product's photos on this machine, main photo first."""
        return [Path(str(self._data["_image"][r])) for r in self.rows(pid)]

    def product(self, pid: object) -> dict[str, str]:
        """The catalogue columns of one product."""
        i = self.row(pid)
        return {c: self._cells[c][i] for c in self.columns}

    def etag(self, pid: object) -> str:
        """The entity tag of the product's current version (its cells and photo): what a
        conditional write (``If-Match``) names; any change to the product gives a new one."""
        from lookalike.folder.store import product_etag

        i = self.row(pid)
        return product_etag({c: self._cells[c][i] for c in self.columns}, self.columns,
                            [str(self._data["_sha1"][r]) for r in self.rows(pid)])

    def image_path(self, pid: object) -> Path:
        """The product's main photo on this machine (never a URL from the catalogue)."""
        return Path(str(self._data["_image"][self.row(pid)]))

    def duplicates(self, *, near: bool = True) -> list[list[str]]:
        """Groups of products with a photo identical (or near-identical) to one of another's:
        duplicate listings, found through any of their photos."""
        col = "_dup_near" if near else "_dup_exact"
        g = np.asarray(self._data[col])
        groups: dict[int, dict[str, None]] = {}
        for pid, gid in zip(self.ids, g):
            if gid >= 0:
                groups.setdefault(int(gid), {})[pid] = None
        return _merged_groups([list(members) for members in groups.values()])

    # -- filters (lookalike.search.filters) ----------------------------------------------------
    def check_column(self, col: str) -> None:
        """Refuse a column the index does not have, naming those it has."""
        self._filters.check_column(col)

    def column_codes(self, col: str) -> tuple[np.ndarray, pd.Index]:
        """Each product's value of ``col`` as a small integer, and the values."""
        return self._filters.codes(col)

    @property
    def exact_groups(self) -> np.ndarray:
        """Each product's group of byte-identical photos (what a query of it never returns)."""
        return np.asarray(self._exact_group)

    def where_mask(self, where: Where | None) -> np.ndarray | None:
        """Rows that meet every condition of ``where`` (``None``: no condition)."""
        return self._filters.where_mask(self._filters.check_where(where))

    def _check_k(self, k: int) -> int:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise InvalidQueryError(f"k must be a whole number >= 1, not {k!r}")
        if k > MAX_K:
            raise InvalidQueryError(f"k must be at most {MAX_K}, not {k}")
        return int(k)

    @property
    def query_defaults(self) -> Any:
        """What every query applies unless it says otherwise (``lookalike settings``)."""
        return self.settings.query_defaults

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The generation's pinned and blocked pairs (``lookalike rules``)."""
        return self.settings.rules

    def _check_query(self, k: int, same: str | Sequence[str], colour_weight: float | None,
                     where: Any, boost: Any = (), max_per: Any = None, diversity: float | None = None,
                     defaults: bool = True) -> tuple[int, list[str], float, Any, Steer, dict[str, Any]]:
        """A query's settings checked once for :meth:`similar` and :meth:`export`: k, the ``same``
        columns, the colour weight, the ``where`` conditions (with the index's defaults), its
        steering (boosts, caps, diversity) and what the query records of it."""
        k = self._check_k(k)
        same = [same] if isinstance(same, str) else list(same)
        for col in same:
            self.check_column(col)
        d = self.query_defaults if defaults else None
        where = self._filters.check_where(merge_where(d.where, where) if d else where)
        boosts = merge_boosts(d.boost if d else (), boost)
        caps = {**(parse_max_per(list(d.max_per)) if d else {}), **parse_max_per(max_per)}
        for col in caps:
            self.check_column(col)
        diversity = check_diversity(diversity if diversity is not None else (d.diversity if d else None))
        if diversity and self.metric != "cosine":
            raise InvalidQueryError("diversity needs an index built with metric cosine")
        steer = Steer(self._boost_table(boosts) if boosts else None,
                      [(self._filters.codes(col)[0], n) for col, n in caps.items()],
                      diversity or None, max(DEFAULT_CANDIDATES, 5 * k))
        told: dict[str, Any] = {}
        if boosts:
            told["boost"] = [str(b) for b in boosts]
        if caps:
            told["max_per"] = caps
        if diversity:
            told["diversity"] = diversity
        return k, same, self.colour_weight_for(colour_weight), where, steer, told

    def _boost_table(self, boosts: tuple[Boost, ...]) -> Boosts:
        """The per-row numbers of some boosts, made once per generation (a few kept)."""
        table = self._boosts.get(boosts)
        if table is None:
            table = Boosts(boosts, self._filters)
            if len(self._boosts) >= 32:
                self._boosts.pop(next(iter(self._boosts)))
            self._boosts[boosts] = table
        return table

    def colour_weight_for(self, colour_weight: float | None) -> float:
        """The colour weight a query uses: the one given (checked), else the index's."""
        w = self.colour_weight if colour_weight is None else check_colour_weight(colour_weight)
        if w and self.metric != "cosine":
            raise InvalidQueryError("colour weight needs an index built with metric cosine")
        return w

    def _query_vector(self, shape: np.ndarray, colour: np.ndarray, w: float) -> np.ndarray:
        return query_vector(shape, colour, w, self.metric)

    # -- search ------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int, filter: Filter | None, collapse: bool,
                sets: Sequence[Sequence[int]] | None = None,
                collapse_parent: bool = False, steer: Steer | None = None) -> list[list[tuple[int, float]]]:
        """Top-k products per query, inside ``filter``, each as the row of its best photo and that
        photo's score; with ``collapse``, one product per duplicate-photo group, with
        ``collapse_parent`` one per parent. ``sets`` makes several query vectors one query (the
        photos of one product: a product then scores by its best pair); ``filter``'s per-query
        lines are per set. ``steer``'s boosts rank by boosted score (fetching until no product
        left out could reach the k-th) and its caps keep at most N per column value."""
        sets = [[i] for i in range(len(queries))] if sets is None else [list(x) for x in sets]
        results: list[list[tuple[int, float]]] = [[] for _ in sets]
        if self.n_rows == 0:
            return results
        per_product = max(1, min(4, self._filters.max_photos))
        # a cap per value leaves out most near hits of a look (the nearest shoes are shoes): ask
        # deep at once, rather than search again and again (bench_server --queries plain,steered)
        want = k * (CAP_FETCH if steer is not None and steer.caps else 1)
        todo = list(range(len(sets)))
        while todo:
            fetch = min(self.n_rows, want * per_product + (8 if collapse else 0))
            vectors = [i for q in todo for i in sets[q]]
            owner = [q for q in todo for _ in sets[q]]
            scores, rows = self.index.search(queries[vectors], fetch, filter=None if filter is None else filter.take(owner))
            again, at = [], 0
            for q in todo:
                lines = range(at, at + len(sets[q]))
                at += len(sets[q])
                picked, sure = self._pick([(scores[j], rows[j]) for j in lines], k, collapse, collapse_parent, steer)
                exhausted = fetch >= self.n_rows or all(len(rows[j]) == 0 or rows[j][-1] < 0 for j in lines)
                if (len(picked) < k or not sure) and not exhausted:
                    again.append(q)
                else:
                    results[q] = picked
            todo = again
            want = fetch * 4
        return results

    def _pick(self, lines: list[tuple[np.ndarray, np.ndarray]], k: int, collapse: bool,
              collapse_parent: bool, steer: Steer | None = None) -> tuple[list[tuple[int, float]], bool]:
        """One query's results from its vectors' hits: each product once, at its best photo; and
        whether they are sure (no product left out could rank above the last, once boosted)."""
        if len(lines) == 1 and not self.multi_photo:
            ranked = self._ranked(*lines[0])
        else:
            best: dict[int, tuple[float, int]] = {}
            product = self._product
            for scores, rows in lines:
                for s, r in zip(scores.tolist(), rows.tolist()):
                    if r < 0:
                        continue
                    p = int(product[r])
                    if p not in best or s > best[p][0]:
                        best[p] = (s, r)
            got = list(best.values())
            ranked = self._ranked(np.array([s for s, _ in got], np.float32), np.array([r for _, r in got], np.int64))
        boosts = steer.boosts if steer is not None else None
        if boosts is not None and ranked:
            rows = np.array([r for _, r in ranked], np.int64)
            ranked = self._ranked(boosts.score(np.array([s for s, _ in ranked], np.float32), rows), rows)
        picked = self._kept(ranked, k, collapse, collapse_parent, steer.caps if steer is not None else ())
        sure = True
        if boosts is not None and len(picked) == k:
            fetched = [float(sc[rw >= 0][-1]) for sc, rw in lines if (rw >= 0).any()]
            sure = not fetched or picked[-1][1] >= boosts.bound(max(fetched))
        return picked, sure

    def _kept(self, ranked: list[tuple[float, int]], k: int, collapse: bool,
              collapse_parent: bool, caps: Sequence[tuple[np.ndarray, int]] = ()) -> list[tuple[int, float]]:
        """The first k of ranked (score, row) hits, one per duplicate group with ``collapse``, one
        per parent with ``collapse_parent``, at most N per value of each ``caps`` column (each
        row's code, N), as (row, score)."""
        picked: list[tuple[int, float]] = []
        seen: set[int] = set()
        families: set[int] = set()
        family = self._filters.families if collapse_parent else None
        counts: list[dict[int, int]] = [{} for _ in caps]
        for s, r in ranked:
            g = int(self._near_group[r])
            if collapse and g in seen:
                continue
            if family is not None and int(family[r]) in families:
                continue
            if any(count.get(int(codes[r]), 0) >= n for count, (codes, n) in zip(counts, caps)):
                continue
            if family is not None:
                families.add(int(family[r]))
            for count, (codes, _) in zip(counts, caps):
                count[int(codes[r])] = count.get(int(codes[r]), 0) + 1
            seen.add(g)
            picked.append((int(r), float(s)))
            if len(picked) == k:
                break
        return picked

    def _ranked(self, scores: np.ndarray, rows: np.ndarray) -> list[tuple[float, int]]:
        """One query's hits, best first; equal scores (identical photos) rank by product id,
        whatever the rows' order on disk, so results do not depend on the order in which
        products were added. Scores within ``TIE_EPS`` of the first of a run are equal, and all
        get the first's: the same vector scored in two segments' matrix products may differ in
        its last bits (a twin added live ranked before its source by 1.5e-8)."""
        keep = np.asarray(rows) >= 0
        s = np.asarray(scores)[keep]
        order = np.argsort(-s, kind="stable")
        s = s[order]
        line_s, line_r = s.tolist(), np.asarray(rows)[keep][order].tolist()
        s64 = s.astype(np.float64)
        out: list[tuple[float, int]] = []
        i, n = 0, len(line_s)
        for t in np.flatnonzero(s64[:-1] - s64[1:] <= TIE_EPS).tolist():  # where a run of equals starts
            if t < i:
                continue  # inside the run just handled
            out.extend(zip(line_s[i:t], line_r[i:t]))  # before it, each hit its own run
            j = t + 1
            while j < n and line_s[t] - line_s[j] <= TIE_EPS:
                j += 1
            # one score for the run, so scores never rise down the list
            out.extend((line_s[t], r) for r in sorted(line_r[t:j], key=lambda r: self.ids[r]))
            i = j
        out.extend(zip(line_s[i:], line_r[i:]))
        return out

    def _results(self, query: dict[str, Any], found: list[tuple[int, float]],
                 parts: list[dict[str, float]] | None = None, ruled: Mapping[int, str] | None = None) -> Results:
        refs = self._data["_ref"] if self.multi_photo else None
        items = [
            Recommendation(self.ids[r], rank, s, {c: self._cells[c][r] for c in self.columns},
                           str(refs[r]) if refs is not None else "", None if parts is None else parts[rank - 1],
                           (ruled or {}).get(r, ""))
            for rank, (r, s) in enumerate(found, start=1)
        ]
        return Results(query, items)

    # -- steering (lookalike.search.steering) ----------------------------------------------
    def _rule_rows(self, rules: Sequence[Rule]) -> np.ndarray:
        """The rows of the products some rules name (those still in the index)."""
        rows = [self.rows(r.show) for r in rules if r.show in self]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    def _pair_scores(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Exact scores of some rows (lines) against some query vectors (columns), as back ends score."""
        vectors = searchable(*self._rows_arrays(rows), self.metric)
        scores = vectors @ queries.T
        if self.metric != "cosine":
            scores = -np.sqrt(np.maximum((queries**2).sum(1)[None, :] + (vectors**2).sum(1)[:, None] - 2.0 * scores, 0.0))
        return scores.astype(np.float32)

    def _finish(self, found: list[tuple[int, float]], k: int, queries: np.ndarray, steer: Steer, w: float,
                pins: Sequence[Rule], allowed: np.ndarray | None, exclude_rows: np.ndarray,
                explain: bool) -> tuple[list[tuple[int, float]], list[dict[str, float]] | None, dict[int, str]]:
        """A query's ranked products made its list: chosen for diversity, pinned products placed,
        each score in parts (``explain``). ``queries``: its vectors (a product scores by its best);
        ``allowed``: the rows its filter allows (``None``: all), which a pinned product must pass."""
        if steer.diversity and found:
            rows = np.array([r for r, _ in found], np.int64)
            shape, colour = self._rows_arrays(rows)
            shape, colour = self._unit_shape(shape), l2_normalize(colour)
            likeness = (1.0 - w) * (shape @ shape.T) + w * (colour @ colour.T)
            found = [found[i] for i in mmr(np.array([s for _, s in found]), likeness, k, steer.diversity)]
        found = found[:k]
        ruled: dict[int, str] = {}
        if pins:
            away = set(self._product[exclude_rows].tolist())
            for pin in pins:
                if pin.show not in self or pin.rank > k:
                    continue
                rows = self.rows(pin.show)
                if allowed is not None:
                    rows = rows[allowed[rows]]
                if not len(rows) or int(self._product[rows[0]]) in away:
                    continue
                scores = self._pair_scores(queries, rows).max(axis=1)
                if steer.boosts is not None:
                    scores = steer.boosts.score(scores, rows)
                best = int(np.argmax(scores))
                product = int(self._product[rows[0]])
                found = [(r, s) for r, s in found if int(self._product[r]) != product]
                found.insert(min(pin.rank - 1, len(found)), (int(rows[best]), float(scores[best])))
                found = found[:k]
                ruled = {r: t for r, t in ruled.items() if int(self._product[r]) != product}
                ruled[int(rows[best])] = f"pinned at rank {pin.rank}"
        parts = [self._explained(queries, r, steer, w) for r, _ in found] if explain else None
        return found, parts, ruled

    def _explained(self, queries: np.ndarray, row: int, steer: Steer, w: float) -> dict[str, float]:
        """One result's score in parts that add up to it: ``shape`` and ``colour`` (the weighted
        cosines of its best photo against the query vector it matched best), each boost's share."""
        raw = self._pair_scores(queries, np.array([row], np.int64))[0]
        j = int(np.argmax(raw))
        if self.metric == "cosine":
            shape, colour = self._rows_arrays(np.array([row], np.int64))
            d = shape.shape[1]
            parts = {"shape": float(queries[j, :d] @ shape[0]), "colour": float(queries[j, d:] @ colour[0])}
        else:
            parts = {"shape": float(raw[j])}
        if steer.boosts is not None:
            parts.update(steer.boosts.explain(float(raw[j]), row))
        return parts

    def similar(
        self,
        ids: object | Sequence[object] | None = None,
        *,
        image: ImageSource | None = None,
        text: str | None = None,
        k: int = DEFAULT_K,
        same: Sequence[str] | str = (),
        where: Where | None = None,
        colour_weight: float | None = None,
        collapse_duplicates: bool = True,
        siblings: bool = False,
        collapse_parent: bool = False,
        negative_ids: Sequence[object] = (),
        negative_images: Sequence[ImageSource] = (),
        boost: str | Boost | Sequence[str | Boost] = (),
        max_per: str | Sequence[str] | Mapping[str, int] | None = None,
        diversity: float | None = None,
        explain: bool = False,
        box: Sequence[float] | str | None = None,
        defaults: bool = True,
        rules: bool = True,
    ) -> Results:
        """Products that look most like one product, several (combined), a photo, or words.

        ``text`` ("red running shoes") queries with the text tower of the index's model, where it
        has one (:attr:`supports_text`: an ``hf:`` CLIP or SigLIP model; :class:`NoTextTowerError`
        otherwise), against the stored photo vectors, colour weight 0 (docs/models.md).

        ``negative_ids`` and ``negative_images`` ask for "less like this": the query moves away
        from their look (``q = p + (p − n̄)`` of the positive look ``p`` and the negatives' mean
        ``n̄``, Qdrant's average-vector strategy; docs/quality.md measures it); negative products
        are never returned.

        A product scores by its best photo; a query by one product uses each of its photos
        (its best pair with a result counts), several products their shared look (the mean of
        each one's mean photo). A product never appears twice in one list. In an index with a
        parent column, a query product's siblings (and its parent) are left out unless
        ``siblings``; ``collapse_parent`` keeps one product per parent in a list.

        ``same`` keeps results to the query products' values of those columns (``"Gender"``
        as in the reference); ``where`` keeps rows that meet its conditions: the mapping
        ``{"Gender": ["Men"]}`` (the column holds one of the values), or conditions as text or
        :class:`~lookalike.search.conditions.Condition` (``["price<50", "Colour!=Black"]``,
        ``"price=10..50"``; see :mod:`lookalike.search.conditions`).

        Steering (:mod:`lookalike.search.steering`): ``boost`` adds to or multiplies scores by a
        condition or a numeric column (``"in_stock=yes:+0.05"``, ``"popularity:*0.01"``);
        ``max_per`` keeps at most N results per value of a column (``"Brand=2"``); ``diversity``
        (0 to 1) chooses the list by maximal marginal relevance. The index's own defaults
        (:attr:`query_defaults`: ``where``, boosts, caps, diversity) apply unless ``defaults`` is
        False; a query's condition or boost on a column replaces the default's. Pinned and
        blocked pairs (:attr:`rules`) apply unless ``rules`` is False. ``explain`` gives each
        result its score in parts (``Recommendation.explain``). ``box`` (``x, y, w, h``, pixels
        or fractions of the photo) queries with that region of ``image``.
        """
        k, same, w, where, steer, told = self._check_query(k, same, colour_weight, where, boost, max_per, diversity,
                                                           defaults)
        if sum(x is not None for x in (ids, image, text)) != 1:
            raise InvalidQueryError("give product ids, an image or a text, one of them")
        if box is not None and image is None:
            raise InvalidQueryError("a box is a region of a photo: give it with an image")
        if text is not None:
            w = 0.0  # words have no colour descriptor: the shape part alone
        away, away_rows = self._negatives(negative_ids, negative_images)
        if len(away_rows):
            told["negative_ids"] = [self.ids[r] for r in dict.fromkeys(self._main_of(away_rows))]
        if negative_images:
            told["negative_images"] = len(negative_images)
        pool = steer.pool(k)
        if image is not None or text is not None:
            if same:
                raise InvalidQueryError("'same' needs product ids; filter a photo or text query with 'where'")
            look, asked = self._query_look(image, text, box)
            if box is not None:
                told["box"] = list(_box_of(box))
            return self._similar_to_look(look, asked, k, where, w, steer, told, pool, away, away_rows,
                                         collapse_duplicates, collapse_parent, explain, rules)
        return self._similar_to_ids(ids, k, same, where, w, steer, told, pool, away, away_rows,
                                    collapse_duplicates, collapse_parent, siblings, explain, rules)

    def _similar_to_ids(self, ids: object, k: int, same: list[str], where: Where | None, w: float, steer: Steer,
                        told: dict[str, object], pool: int, away: list[tuple[np.ndarray, np.ndarray]],
                        away_rows: np.ndarray, collapse_duplicates: bool, collapse_parent: bool, siblings: bool,
                        explain: bool, rules: bool) -> Results:
        """:meth:`similar` for one or several products."""
        id_list = self._id_list(ids)
        rows = [int(r) for p in id_list for r in self.rows(p)]
        groups = [self.rows(p) for p in id_list]
        asked = list(dict.fromkeys(self.ids[r] for r in rows))
        pins, blocks = rules_for(self.rules, asked) if rules else ([], [])
        q = self._steered(self._look(groups), away, w) if away else self._product_queries(groups, w)
        filt = self._filters.filter(rows, same, where, siblings=siblings, exclude=away_rows,
                                    hide=self._rule_rows(blocks))
        found = self._search(q, pool, filt, collapse_duplicates, sets=[list(range(len(q)))],
                             collapse_parent=collapse_parent, steer=steer)[0]
        found, parts, ruled = self._finish(found, k, q, steer, w, pins, filt.mask() if pins else None, away_rows,
                                           explain)
        if ruled:
            told["rules"] = sorted(set(ruled.values()))
        query = {"ids": asked, "k": k, "same": same, **describe_where(where), **told}
        return self._results(query, found, parts, ruled)

    def _query_look(self, image: ImageSource | None, text: str | None, box: Sequence[float] | str | None,
                    ) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
        """The look of a photo (or a region of it) or of words, and what the query records of it."""
        if text is not None:
            shape = self.embed_text(text)
            return (self._unit_shape(shape[None])[0], np.zeros(COLOUR_DIM, np.float32)), {"text": text}
        assert image is not None  # one of the two, checked by similar()
        shape, colour = self.embed_image(image, box=box)
        name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
        return (self._unit_shape(shape[None])[0], l2_normalize(colour)), {"image": name}

    def _similar_to_look(self, look: tuple[np.ndarray, np.ndarray], asked: dict[str, Any], k: int,
                         where: Where | None, w: float, steer: Steer, told: dict[str, object], pool: int,
                         away: list[tuple[np.ndarray, np.ndarray]],
                         away_rows: np.ndarray, collapse_duplicates: bool, collapse_parent: bool, explain: bool,
                         rules: bool) -> Results:
        """:meth:`similar` for a photo, a region of it, or words: the same steps as for product ids."""
        q = self._steered(look, away, w)
        pins, blocks = rules_for(self.rules, []) if rules else ([], [])
        hidden = self._rule_rows(blocks)
        needs = where or len(away_rows) or len(hidden)
        filt = self._filters.filter(None, (), where, exclude=away_rows, hide=hidden) if needs else None
        found = self._search(q, pool, filt, collapse_duplicates, collapse_parent=collapse_parent, steer=steer)[0]
        found, parts, ruled = self._finish(found, k, q, steer, w, pins, None, away_rows, explain)
        return self._results({**asked, "k": k, **describe_where(where), **told}, found, parts, ruled)

    def _id_list(self, ids: object) -> list[object]:
        id_list = [ids] if isinstance(ids, (str, int, np.integer)) else list(ids)  # type: ignore[call-overload]  # a sequence, the signature says
        if not id_list:
            raise InvalidQueryError("give at least one product id")
        if len(id_list) > MAX_IDS:
            raise InvalidQueryError(f"give at most {MAX_IDS} product ids, not {len(id_list):,}")
        return id_list

    def _main_of(self, rows: np.ndarray) -> list[int]:
        """The main-photo row of each row's product, in order."""
        return [self._row_of[self.ids[int(r)]] for r in rows]

    def _unit_shape(self, shape: np.ndarray) -> np.ndarray:
        return l2_normalize(shape) if self.metric == "cosine" else np.asarray(shape, dtype=np.float32)

    def _look(self, products: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Several products' shared look: the mean of each one's mean photo (unit shape, unit colour)."""
        rows = np.concatenate([np.asarray(p, dtype=np.int64) for p in products])
        shape, colour = self._rows_arrays(rows)
        shape, colour = self._unit_shape(shape), l2_normalize(colour)
        ends = np.cumsum([len(p) for p in products])[:-1]
        return (np.mean([part.mean(0) for part in np.split(shape, ends)], axis=0),
                np.mean([part.mean(0) for part in np.split(colour, ends)], axis=0))

    def _negatives(self, negative_ids: Sequence[object], negative_images: Sequence[ImageSource],
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
        """"Less like this": the look of each negative product and photo, and the negative
        products' rows (never returned)."""
        ids = list(dict.fromkeys(str(p).strip() for p in negative_ids))
        if len(ids) + len(negative_images) > MAX_IDS:
            raise InvalidQueryError(f"give at most {MAX_IDS} negative examples")
        looks = [self._look([self.rows(p)]) for p in ids]
        for photo in negative_images:
            shape, colour = self.embed_image(photo)
            looks.append((self._unit_shape(shape[None])[0], l2_normalize(colour)))
        rows = np.concatenate([self.rows(p) for p in ids]) if ids else np.zeros(0, np.int64)
        return looks, rows

    def _steered(self, look: tuple[np.ndarray, np.ndarray], away: list[tuple[np.ndarray, np.ndarray]],
                 w: float) -> np.ndarray:
        """The query vector of a look moved away from the negatives' (Qdrant's ``average_vector``
        strategy: ``positive + (positive − mean of negatives)``, per part), as one query."""
        shape, colour = look
        if away:
            shape = 2 * shape - np.mean([s for s, _ in away], axis=0)
            colour = 2 * colour - np.mean([c for _, c in away], axis=0)
        return self._query_vector(shape, colour, w).reshape(1, -1)

    def similar_to_rows(
        self,
        rows: Sequence[int] | np.ndarray,
        *,
        k: int = DEFAULT_K,
        allowed: np.ndarray | None = None,
        colour_weight: float | None = None,
        collapse_duplicates: bool = True,
        scoring: str = "best",
    ) -> list[Results]:
        """Products that look most like some of the index's own photos, each row alone a query
        (its stored vector is its photo's embedding, so no photo is read): what a leave-one-out
        evaluation asks (:func:`lookalike.analysis.evaluate.evaluate_views`).

        Unlike :meth:`similar`, nothing is left out by itself, not even the query's own row:
        ``allowed``, a boolean row mask (``(n_rows,)`` for every query, ``(len(rows), n_rows)``
        one line per query), says which rows may be returned and count in a product's score.
        ``scoring`` ``"best"`` scores a product by its best allowed photo, as every search does;
        ``"mean"`` by the mean of its allowed photos' scores (exact: candidates are fetched by
        their best photo until no product left out could reach the k-th mean)."""
        k = self._check_k(k)
        w = self.colour_weight_for(colour_weight)
        if scoring not in SCORINGS:
            raise InvalidQueryError(f"unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            raise InvalidQueryError(f"rows must lie in 0..{self.n_rows - 1}")
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape not in ((self.n_rows,), (len(rows), self.n_rows)):
                raise InvalidQueryError(f"allowed must be a boolean mask of shape ({self.n_rows},) or "
                                        f"({len(rows)}, {self.n_rows}), not {allowed.dtype} {allowed.shape}")
        if not len(rows):
            return []
        q = self._row_queries(rows, w)
        if scoring == "mean":
            found = self._search_mean(q, k, allowed, collapse_duplicates)
        else:
            found = self._search(q, k, Filter.of_mask(allowed), collapse_duplicates)
        refs = self._data["_ref"]
        return [self._results({"id": self.ids[r], "photo": str(refs[r]), "k": k, "scoring": scoring}, f)
                for r, f in zip(rows.tolist(), found)]

    def _search_mean(self, queries: np.ndarray, k: int, allowed: np.ndarray | None,
                     collapse: bool) -> list[list[tuple[int, float]]]:
        """Top-k products per query by the mean score of their allowed photos, each as the row of
        its best photo. A product's mean is at most its best photo's score, so once the k-th mean
        of the candidates (fetched by best photo) reaches the last candidate's best score, no
        product left out can enter: until then, fetch more."""
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        want, todo = k, list(range(len(queries)))
        while todo:
            lines = None if allowed is None or allowed.ndim == 1 else allowed[todo]
            mask = allowed if lines is None else lines
            found = self._search(queries[todo], want, Filter.of_mask(mask), False)
            again = []
            for j, q in enumerate(todo):
                line = allowed if lines is None else lines[j]
                means = self._mean_scores(queries[q], [r for r, _ in found[j]], line)
                ranked = self._ranked(means, np.array([r for r, _ in found[j]], np.int64))
                picked = self._kept(ranked, k, collapse, False)
                exhausted = len(found[j]) < want
                if exhausted or (len(picked) == k and picked[-1][1] > found[j][-1][1]):
                    results[q] = picked
                else:
                    again.append(q)
            todo, want = again, want * 4
        return results

    def _mean_scores(self, query: np.ndarray, best_rows: Sequence[int], allowed: np.ndarray | None) -> np.ndarray:
        """For each product (named by a row of it), the mean score of its allowed photos against
        one query vector, scored as the back end scores (exact)."""
        if not len(best_rows):
            return np.zeros(0, np.float32)
        groups = [self._rows_of[int(self._product[r])] for r in best_rows]
        if allowed is not None:
            groups = [g[allowed[g]] for g in groups]
        rows = np.concatenate(groups)
        vectors = searchable(*self._rows_arrays(rows), self.metric)
        scores = vectors @ query
        if self.metric != "cosine":
            scores = -np.sqrt(np.maximum((query @ query) + (vectors**2).sum(1) - 2.0 * scores, 0.0))
        owner = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
        return (np.bincount(owner, scores, len(groups)) / np.maximum([len(g) for g in groups], 1)).astype(np.float32)

    def _product_queries(self, products: Sequence[np.ndarray], w: float) -> np.ndarray:
        """The query vectors of some products: one product's photos each (it then scores a
        product by the best pair), several products' as one vector, the mean of each product's
        mean photo (their shared look)."""
        if len(products) > 1:
            return self._steered(self._look(products), [], w)
        return self._row_queries(products[0], w)

    def _row_queries(self, rows: Sequence[int] | np.ndarray, w: float) -> np.ndarray:
        """One query vector per row: each stored photo as the query."""
        rows = np.asarray(rows, dtype=np.int64)
        shape, colour = self._rows_arrays(rows)
        return self._query_vector(self._unit_shape(shape), l2_normalize(colour), w).reshape(len(rows), -1)

    @property
    def supports_text(self) -> bool:
        """Whether :meth:`similar` takes ``text`` on this index: its model has a text tower (an
        ``hf:`` CLIP or SigLIP model) and it searches by cosine (what a page's search box asks)."""
        if not is_hf_model(self.settings.model.name) or self.metric != "cosine":
            return False
        return bool(getattr(self.encoder, "has_text", False))

    def embed_text(self, text: str) -> np.ndarray:
        """The shape vector of words, as stored photo vectors are searched: the text tower's
        embedding through the index's projection without its centring (:meth:`Projection.direction`);
        :class:`NoTextTowerError` in one line when the index's model has no text tower."""
        enc = self.encoder
        if not getattr(enc, "has_text", False):
            text_error = getattr(enc, "text_error", None)
            raise NoTextTowerError(text_error() if text_error else
                             f"model {enc.name} has no text tower: text queries need an index built with "
                             "--model hf:DIR of a CLIP or SigLIP model")
        if self.metric != "cosine":
            raise InvalidQueryError("text queries need an index built with metric cosine")
        raw = enc.encode_text([text])  # type: ignore[attr-defined]  # has_text: an HfEncoder
        return self.projection.direction(raw)[0] if self.projection is not None else raw[0]

    def embed_image(self, image: ImageSource, *, box: Sequence[float] | str | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Shape and colour vectors of a photo (or of its region ``box``: ``x, y, w, h`` in
        pixels, or all four fractions of the photo's width and height), as the index was built:
        the region goes through the same trim and resize as a whole photo."""
        enc = self.encoder
        pixels = model_input(image, enc.preprocess) if box is None else prepare(
            crop_box(open_image(image), _box_of(box)), enc.preprocess)
        raw = enc.encode_pixels(pixels[None])
        shape = self.projection.apply(raw)[0] if self.projection is not None else raw[0]
        return shape, colour_descriptor(pixels)

    def export(
        self,
        *,
        k: int = DEFAULT_EXPORT_K,
        same: Sequence[str] | str = (),
        where: Where | None = None,
        colour_weight: float | None = None,
        collapse_duplicates: bool = True,
        ids: Iterable[object] | None = None,
        batch: int = 256,
        show_progress_bar: bool | None = None,
        siblings: bool = False,
        collapse_parent: bool = False,
        boost: str | Boost | Sequence[str | Boost] = (),
        max_per: str | Sequence[str] | Mapping[str, int] | None = None,
        diversity: float | None = None,
        explain: bool = False,
        defaults: bool = True,
        rules: bool = True,
    ) -> pd.DataFrame:
        """Top-k for every product (or ``ids``): columns ``query_id, rank, id, score`` (with
        ``explain``, each part of the score after them, and ``rule``).

        ``where`` restricts the *results*; every product is still a query. Gives exactly
        what :meth:`similar` gives for each product alone, steering and rules included.
        """
        from tqdm.auto import tqdm

        from lookalike.config import progress_enabled

        k, same, w, where, steer, _ = self._check_query(k, same, colour_weight, where, boost, max_per, diversity,
                                                        defaults)
        products = self.products if ids is None else [self.ids[self.row(p)] for p in ids]
        out_q, out_rank, out_id, out_s = [], [], [], []
        out_parts: list[dict[str, float]] = []
        out_rule: list[str] = []
        every = self._rule_rows(rules_for(self.rules, [])[1]) if rules else np.zeros(0, np.int64)
        for start in tqdm(range(0, len(products), batch), disable=not progress_enabled(show_progress_bar),
                          desc="export", unit="batch"):
            chunk = products[start : start + batch]
            groups = [self.rows(p) for p in chunk]
            q = self._row_queries(np.concatenate(groups), w)  # each product's photos; sets group them
            ends = np.cumsum([0] + [len(g) for g in groups])
            sets = [list(range(ends[i], ends[i + 1])) for i in range(len(groups))]
            own = [rules_for(self.rules, [pid]) if rules else ([], []) for pid in chunk]
            hide = [np.concatenate([every, self._rule_rows([b for b in blocks if b.for_id is not None])])
                    for _, blocks in own]
            filt = self._filters.pair_filter(groups, same, where, siblings=siblings,
                                             hide=hide if any(len(h) for h in hide) else None)
            found_all = self._search(q, steer.pool(k), filt, collapse_duplicates, sets=sets,
                                     collapse_parent=collapse_parent, steer=steer)
            for j, (pid, found) in enumerate(zip(chunk, found_all)):
                pins = own[j][0]
                mask = filt.mask() if pins else None
                found, parts, ruled = self._finish(found, k, q[sets[j]], steer, w, pins,
                                                   None if mask is None else mask[j], np.zeros(0, np.int64), explain)
                for rank, (row, s) in enumerate(found, start=1):
                    out_q.append(pid)
                    out_rank.append(rank)
                    out_id.append(self.ids[row])
                    out_s.append(s)
                    out_rule.append(ruled.get(row, ""))
                    if parts is not None:
                        out_parts.append(parts[rank - 1])
        table = pd.DataFrame({"query_id": out_q, "rank": out_rank, "id": out_id, "score": out_s})
        if explain:
            names = list(dict.fromkeys(name for p in out_parts for name in p))
            for name in names:
                table[name] = [p.get(name, 0.0) for p in out_parts]
        if explain or any(out_rule):
            table["rule"] = out_rule
        return table


def _box_of(box: Sequence[float] | str) -> tuple[float, float, float, float]:
    """A region as four numbers ``x, y, w, h`` (text ``"X,Y,W,H"`` too), checked for shape only."""
    parts = box.split(",") if isinstance(box, str) else list(box)
    try:
        values = tuple(float(str(v).strip()) for v in parts)
    except ValueError:
        raise InvalidQueryError(f"a box is X,Y,W,H (pixels, or fractions of the photo), not {box!r}") from None
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InvalidQueryError(f"a box is four numbers X,Y,W,H (pixels, or fractions of the photo), not {box!r}")
    x, y, bw, bh = values
    if x < 0 or y < 0 or bw <= 0 or bh <= 0:
        raise InvalidQueryError(f"box {box!r}: x and y must be >= 0, its width and height > 0")
    return x, y, bw, bh


def _rows_by_product(product: np.ndarray, n: int) -> list[np.ndarray]:
    """Each product's rows, in row order (its main photo first: rows are written in photo order)."""
    if not n:
        return []
    order = np.argsort(product, kind="stable")
    return list(np.split(order, np.cumsum(np.bincount(product, minlength=n))[:-1]))


def _merged_groups(groups: list[list[str]]) -> list[list[str]]:
    """Groups sharing a product merged into one (a product's photos can be in several groups),
    and only those of two products or more, in order of first appearance."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for members in groups:
        for other in members[1:]:
            parent[find(other)] = find(members[0])
    merged: dict[str, dict[str, None]] = {}
    for members in groups:
        for m in members:
            merged.setdefault(find(m), {})[m] = None
    return [list(g) for g in merged.values() if len(g) > 1]


#: a change committed less than this long ago is switched to in the background (0.5 s)
SWITCH_IN_BACKGROUND_NS = 500_000_000
#: a busy worker opens at most one generation per this long (0.25 s): under a stream of
#: writes it skips the generations in between instead of opening every one
MIN_SWITCH_INTERVAL_NS = 250_000_000


class LiveRecommender:
    """The :class:`Recommender` of an index's current generation, reopened when a writer
    commits a new one (``lookalike serve`` workers follow live changes this way).

    :meth:`get` costs one ``stat`` of ``CURRENT`` while nothing changed. Reopening reuses the
    segments already loaded (only a change's new segment is read) and the model, and happens in
    the background; threads keep the recommender they got, so a search never sees half a change.
    """

    def __init__(self, path: str | os.PathLike, *, backend: str | None = None, encoder: Encoder | None = None,
                 recommender: Recommender | None = None) -> None:
        self.path = Path(path)
        self.backend = backend
        self._current_file = Store(self.path).current_file()
        self._lock = threading.Lock()  # held while a generation is being opened
        self._failed: tuple[int, int] | None = None
        self._opened = 0  # time.monotonic_ns() when this process last opened a generation
        self._stamp = self._read_stamp()
        self._rec = recommender if recommender is not None else Recommender.load(self.path, backend=backend,
                                                                                encoder=encoder)

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._current_file)
        except OSError:
            return None  # a format-1 folder (no CURRENT) until its first write
        return (st.st_ino, st.st_mtime_ns)

    def get(self, *, fresh: bool = False, min_generation: int = 0) -> Recommender:
        """The current generation. A change younger than ``SWITCH_IN_BACKGROUND_NS`` is opened by a
        background thread while searches go on with the previous one for those milliseconds (a
        busy worker never stalls on a switch), at most once per ``MIN_SWITCH_INTERVAL_NS``; an
        older one is opened before answering.

        ``fresh`` opens a new generation before answering, however young (read your writes: a
        product read right after a write, on any process, shows it); so does a
        ``min_generation`` newer than the one held (a client that names the generation its
        write returned)."""
        stamp = self._read_stamp()
        if stamp == self._stamp or stamp == self._failed:
            return self._rec
        if fresh or self._rec.generation < min_generation:
            return self.refresh()
        if stamp is not None and time.time_ns() - stamp[1] > SWITCH_IN_BACKGROUND_NS:
            return self.refresh()  # an older change (an idle worker): never answer from before it
        if time.monotonic_ns() - self._opened < MIN_SWITCH_INTERVAL_NS:
            return self._rec  # opened one a moment ago: a later request opens the newest
        if self._lock.acquire(blocking=False):
            try:
                threading.Thread(target=self._switch, args=(stamp,), name="lookalike-switch", daemon=True).start()
            except BaseException:
                self._lock.release()
                raise
        return self._rec

    def refresh(self) -> Recommender:
        """Open the current generation now (after a write, so that this process's next answer
        shows it)."""
        with self._lock:
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._open(stamp)
        return self._rec

    def _switch(self, stamp: tuple[int, int] | None) -> None:
        try:
            self._open(stamp)
        finally:
            self._lock.release()

    def _open(self, stamp: tuple[int, int] | None) -> None:
        try:
            rec = Recommender.from_snapshot(Store(self.path).snapshot(), backend=self.backend,
                                            encoder=self._rec._encoder)
        except IndexFormatError as exc:  # keep answering from the last good generation
            logger.error("can't open the new generation of %s: %s", self.path, exc)
            self._failed = stamp  # tried again when CURRENT moves again
            return
        logger.info("now serving generation %d of %s (%d products)", rec.generation, self.path, len(rec))
        self._rec, self._stamp = rec, stamp
        self._opened = time.monotonic_ns()
