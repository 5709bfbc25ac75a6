"""What a stored row is, in one place: written by builds and live changes, read by every search.

A row is one product: its catalogue cells (text), and what the index keeps of its photo::

    vector    float32 (dim,)        the shape embedding: pooled model output, projected, and
                                    L2-normalised for metric cosine (:func:`stored_vectors`)
    colour    float32 (COLOUR_DIM,) the colour descriptor, unit length
    _image    the photo's path on this machine      _row    the catalogue row it came from
    _sha1     SHA-1 of the photo's bytes (:func:`photo_sha1`): byte-identical photos match
    _dhash    64-bit difference hash (int64 on disk: Parquet has no uint64 everywhere)
    _ref      the photo as the catalogue names it (a path or URL)
    _photo    the photo's place among its product's photos (0: the main one)

Rows become searchable as ``[vector, colour]`` for cosine (the colour weight is applied to the
*query*, so one stored row serves every weight) and as the vector alone for euclidean
(:func:`searchable`); a query is formed the same way (:func:`query_vector`). A row whose photo
bytes the index already holds reuses the stored vector bit for bit, whether a build ``--update``
or a live change meets it (:class:`StoredRows`).

A product with several photos is several such rows sharing its id and its cells, one per photo,
written together in photo order (``_photo`` 0, 1, …); searches group them by product (a product
scores by its best photo). Segments written before ``_ref`` and ``_photo`` existed read as one
photo per product, named by its path (:func:`fill_hidden`).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["HIDDEN_COLUMNS", "REQUIRED_HIDDEN", "fill_hidden", "GROUP_COLUMNS", "ALL_HIDDEN", "l2_normalize", "searchable", "query_vector", "stored_vectors",
           "photo_sha1", "file_sha1", "file_sha1s", "hidden_columns", "StoredRows", "text_column", "product_etag",
           "photo_key", "photo_keys"]

#: columns a segment stores beside the catalogue's own
HIDDEN_COLUMNS = ("_image", "_row", "_sha1", "_dhash", "_ref", "_photo")
#: hidden columns every segment has (``_ref`` and ``_photo`` came with several photos per product)
REQUIRED_HIDDEN = ("_image", "_row", "_sha1", "_dhash")
#: columns the dense view adds from the generation's state
GROUP_COLUMNS = ("_dup_exact", "_dup_near")
#: every column of a reader's metadata that is not the catalogue's own
ALL_HIDDEN = (*HIDDEN_COLUMNS, *GROUP_COLUMNS)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


_unit = l2_normalize


def stored_vectors(raw: np.ndarray, projection: Any, metric: str) -> np.ndarray:
    """What the index stores for pooled model output: projected, L2-normalised for cosine."""
    out = projection.apply(raw) if projection is not None else np.asarray(raw, dtype=np.float32)
    return _unit(out) if metric == "cosine" else out


def searchable(vectors: np.ndarray, colour: np.ndarray, metric: str) -> np.ndarray:
    """Stored rows as a back end searches them: ``[vector, colour]`` for cosine, else the vector."""
    if metric != "cosine":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    return np.hstack([np.asarray(vectors, dtype=np.float32), np.asarray(colour, dtype=np.float32)])


def query_vector(shape: np.ndarray, colour: np.ndarray, weight: float, metric: str) -> np.ndarray:
    """A query against :func:`searchable` rows: for cosine, ``(1 − w)·shape + w·colour`` of unit
    parts, so its inner product with a row is ``(1 − w)·cos(shape) + w·cos(colour)``."""
    if metric != "cosine":
        return np.asarray(shape, dtype=np.float32)
    return np.concatenate([(1.0 - weight) * _unit(shape), weight * _unit(colour)], axis=-1)


def photo_sha1(data: bytes) -> str:
    """A photo's identity: SHA-1 of its bytes (byte-identical photos get the same)."""
    return hashlib.sha1(data).hexdigest()


def file_sha1(path: str | os.PathLike) -> str:
    """:func:`photo_sha1` of a file, read in chunks (raises OSError when it can't be read)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha1s(paths: Sequence[os.PathLike | str], workers: int = 1) -> list[str]:
    """:func:`file_sha1` of each file, ``""`` for one that can't be read (threads past 16 files)."""
    def one(p: os.PathLike | str) -> str:
        try:
            return file_sha1(p)
        except OSError:
            return ""

    if workers <= 1 or len(paths) < 16:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-hash") as pool:
        return list(pool.map(one, paths))


def hidden_columns(images: Sequence[os.PathLike | str], catalogue_rows: Sequence[int], sha1s: Sequence[str],
                   dhashes: np.ndarray, refs: Sequence[str] | None = None,
                   photos: Sequence[int] | None = None) -> dict[str, Any]:
    """The columns a segment stores beside the catalogue's own, for rows in this order
    (``refs``: each photo as the catalogue names it, default its path; ``photos``: its place
    among its product's photos, default 0)."""
    paths = [str(os.path.realpath(p)) for p in images]
    return {
        "_image": paths,
        "_row": list(catalogue_rows),
        "_sha1": list(sha1s),
        "_dhash": np.asarray(dhashes, dtype=np.uint64).astype(np.int64),  # parquet has no uint64 everywhere
        "_ref": list(refs) if refs is not None else list(paths),
        "_photo": np.asarray(photos if photos is not None else np.zeros(len(paths)), dtype=np.int64),
    }


def fill_hidden(cells: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A segment's columns with ``_ref`` and ``_photo`` where it predates them: one photo per
    product (its place 0), named by its path."""
    if "_ref" not in cells:
        cells["_ref"] = cells["_image"]
    if "_photo" not in cells:
        cells["_photo"] = np.zeros(len(cells["_image"]), dtype=np.int64)
    return cells


class StoredRows:
    """The rows a generation holds, looked up for reuse: a product's rows by id (``row_of``: its
    main photo's), and the first row holding given photo bytes. Both a build ``--update`` and a
    live change ask it, so a photo the index already holds is never embedded again and gets the
    stored vector bit for bit (equal scores then rank by id, whatever the order of changes)."""

    def __init__(self, ids: Sequence[str], sha1s: Sequence[str]) -> None:
        self.row_of: dict[str, int] = {}
        self.rows_of: dict[str, list[int]] = {}
        for i, pid in enumerate(ids):
            self.rows_of.setdefault(str(pid), []).append(i)
            self.row_of.setdefault(str(pid), i)
        self._sha1s = list(sha1s)
        self._by_sha1: dict[str, int] = {}
        for i, sha in enumerate(self._sha1s):
            self._by_sha1.setdefault(sha, i)

    @classmethod
    def of(cls, meta: Mapping[str, Any], id_column: str) -> "StoredRows":
        """Over a generation's dense columns (``Snapshot.dense_columns()``)."""
        return cls(list(meta[id_column]), list(meta["_sha1"]))

    def reuse(self, pid: str, sha1: str) -> tuple[int | None, bool]:
        """The stored row whose photo features a photo of ``pid`` with these bytes can take, and
        whether it is one of the product's own (that photo unchanged); ``(None, False)``: embed it."""
        for own in self.rows_of.get(pid, ()):
            if self._sha1s[own] == sha1:
                return own, True
        return self._by_sha1.get(sha1), False

    def sha1s_of(self, pid: str) -> list[str]:
        """The product's photos' hashes, in photo order (empty: not indexed)."""
        return [self._sha1s[i] for i in self.rows_of.get(pid, ())]


def photo_key(pid: str, photo: int) -> str:
    """A photo's key where a store needs one key per row (Milvus' primary key): the product id
    for its main photo (as before products had several), ``id``, U+001F and the photo's place
    for the others."""
    return pid if int(photo) == 0 else f"{pid}\x1f{int(photo)}"


def photo_keys(ids: Sequence[str], photos: Sequence[int]) -> list[str]:
    """:func:`photo_key` of each row."""
    return [photo_key(str(p), int(n)) for p, n in zip(ids, photos)]


def text_column(values: list[str]) -> np.ndarray:
    """Text as a 1-d array of ``str`` objects (``np.array`` would make fixed-width unicode)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def product_etag(cells: Mapping[str, Any], columns: Sequence[str], sha1: str | Sequence[str]) -> str:
    """A product version's HTTP entity tag: a digest of its catalogue cells and its photos'
    hashes (in order), so any change to either (and only a change) gives a new tag. Quoted, as
    HTTP writes it. A product of one photo gets the tag it had before products had several."""
    import json

    sha1s = [sha1] if isinstance(sha1, str) else list(sha1)
    text = json.dumps([[c, str(cells.get(c, ""))] for c in sorted(columns)] + [str(s) for s in sha1s],
                      ensure_ascii=False)
    return '"' + hashlib.sha1(text.encode("utf-8")).hexdigest()[:24] + '"'
