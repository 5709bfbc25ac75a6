"""``tune``: learn a projection from the catalogue's own labels, judged on held-out products.

The products are split (deterministically, by id, keeping identical photos together) into
a fitting part and a held-out part. A linear discriminant projection is fitted on the
fitting part only: directions in which products of different label values (e.g.
ProductType x Colour) differ most, relative to how much products of the same value
differ. The tuned vectors are the normalised ``[sqrt(1-a) * original, sqrt(a) * discriminant]``,
so the generic similarity is kept and the labels only add to it. Quality is reported on the
held-out products alone, as queries *and* as candidates, before and after.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from lookalike.analysis.evaluate import score_export
from lookalike.encoders import l2_normalize
from lookalike.errors import InvalidQueryError
from lookalike.folder.projection import Projection
from lookalike.folder.rows import searchable
from lookalike.folder.store import Store
from lookalike.search.backends import ExactIndex, Filter, make_index

logger = logging.getLogger(__name__)

__all__ = ["tune", "split_holdout"]


def _product_groups(ids: Sequence[str], groups: np.ndarray) -> np.ndarray:
    """Rows joined into one group when they are photos of one product or byte-identical photos."""
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, object], int] = {}
    for i, (pid, g) in enumerate(zip(ids, groups)):
        for key in (("id", pid), ("group", int(g))):
            j = first.setdefault(key, i)
            if j != i:
                parent[find(i)] = find(j)
    return np.array([find(i) for i in range(len(ids))], dtype=np.int64)


def split_holdout(ids: Sequence[str], groups: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """True for held-out rows: a stable hash of each duplicate group's first id."""
    first: dict[int, str] = {}
    for pid, g in zip(ids, groups):
        first.setdefault(int(g), pid)
    out = np.zeros(len(ids), dtype=bool)
    for i, g in enumerate(groups):
        h = hashlib.sha1(f"{seed}:{first[int(g)]}".encode()).digest()
        out[i] = int.from_bytes(h[:4], "big") / 2**32 < fraction
    return out


def _discriminant(x: np.ndarray, classes: np.ndarray, dim: int, reg: float = 1e-2) -> np.ndarray:
    mu = x.mean(axis=0)
    d = x.shape[1]
    sw = np.zeros((d, d))
    sb = np.zeros((d, d))
    for c in np.unique(classes):
        xc = x[classes == c]
        mc = xc.mean(axis=0)
        diff = xc - mc
        sw += diff.T @ diff
        sb += len(xc) * np.outer(mc - mu, mc - mu)
    sw /= len(x)
    sb /= len(x)
    sw += reg * np.trace(sw) / d * np.eye(d)
    # generalised eigenproblem sb v = l sw v through sw^-1/2
    vals, vecs = np.linalg.eigh(sw)
    w = vecs @ np.diag(1.0 / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T
    lv, lvec = np.linalg.eigh(w @ sb @ w)
    order = np.argsort(lv)[::-1][:dim]
    return (w @ lvec[:, order]).astype(np.float32)


def _search_subset(vec: np.ndarray, rows: np.ndarray, allowed_same: list[np.ndarray], exact: np.ndarray,
                   k: int) -> list[list[int]]:
    """Top k among ``rows`` only, for each of ``rows``: the exact index with a mask per query."""
    sub = exact[rows][:, None] != exact[rows][None, :]
    for codes in allowed_same:
        sub &= codes[rows][:, None] == codes[rows][None, :]
    allowed = np.zeros((len(rows), len(vec)), dtype=bool)
    allowed[:, rows] = sub
    _, found = ExactIndex(vec).search(vec[rows], k, filter=Filter.of_mask(allowed))
    return [[int(r) for r in hits if r >= 0] for hits in found]


def _holdout_scores(vec: np.ndarray, meta: pd.DataFrame, id_column: str, rows: np.ndarray, labels: list[str],
                    same: list[str], exact: np.ndarray, k: int) -> dict[str, Any]:
    same_codes = [pd.factorize(meta[c].astype(str))[0] for c in same]
    found = _search_subset(vec, rows, same_codes, exact, k)
    ids = meta[id_column].astype(str).to_numpy()
    export = pd.DataFrame(
        [(ids[q], rank, ids[r], 0.0) for q, hits in zip(rows, found) for rank, r in enumerate(hits, start=1)],
        columns=["query_id", "rank", "id", "score"],
    )
    return score_export(export, meta.iloc[rows], id_column=id_column, labels=labels, k=k)


def tune(
    index: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: Sequence[str],
    same: Sequence[str] = (),
    holdout: float = 0.2,
    dim: int = 64,
    share: float = 0.5,
    k: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on the non-held-out products, write the tuned index to ``out``, report held-out quality."""
    index, out = Path(index), Path(out)
    snap = Store(index).snapshot()
    settings = snap.settings
    if settings.metric != "cosine":
        raise InvalidQueryError("tune needs an index built with metric cosine")
    if not 0.0 < holdout < 1.0 or not 0.0 < share < 1.0:
        raise InvalidQueryError("holdout and share must be between 0 and 1")
    vectors, colour, meta = snap.dense()
    for col in [*labels, *same]:
        if col not in meta.columns or col.startswith("_"):
            raise InvalidQueryError(f"unknown column {col!r}")
    if not labels:
        raise InvalidQueryError("give at least one label column")
    id_column = settings.catalog.id_column
    ids = meta[id_column].astype(str).tolist()
    exact = meta["_dup_exact"].to_numpy().copy()
    alone = exact < 0
    exact[alone] = exact.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    exact = _product_groups(ids, exact)  # a product's photos are held out, and never answer, together
    held = split_holdout(ids, exact, holdout, seed)
    fit_rows, held_rows = np.flatnonzero(~held), np.flatnonzero(held)
    if len(fit_rows) < 10 or len(held_rows) < 2:
        raise InvalidQueryError("too few products to hold some out; use a larger catalogue")
    classes = pd.factorize(meta[list(labels)].astype(str).agg("\x1f".join, axis=1))[0]
    x = l2_normalize(np.asarray(vectors, dtype=np.float32))
    n_classes = len(np.unique(classes[fit_rows]))
    d = max(1, min(dim, n_classes - 1, x.shape[1]))
    lda = _discriminant(x[fit_rows], classes[fit_rows], d)
    # scale the discriminant part to unit norm on average, then weight the two parts
    lda /= float(np.linalg.norm(x[fit_rows] @ lda, axis=1).mean()) or 1.0
    post = np.hstack([np.sqrt(1 - share) * np.eye(x.shape[1], dtype=np.float32),
                      np.sqrt(share) * lda]).astype(np.float32)
    tuned = l2_normalize(x @ post)
    before = _holdout_scores(x, meta, id_column, held_rows, list(labels), list(same), exact, k)
    after = _holdout_scores(tuned, meta, id_column, held_rows, list(labels), list(same), exact, k)

    old = snap.projection
    backend = settings.index.backend
    info = {"labels": list(labels), "same": list(same), "holdout": holdout, "dim": d, "share": share,
            "seed": seed, "fitted_on": int(len(fit_rows)), "held_out": int(len(held_rows)),
            "source": str(index.resolve()), "held_out_before": before, "held_out_after": after}
    tuned_settings = replace(settings, dim=int(tuned.shape[1]), extra={**settings.extra, "tune": info},
                             projection=None if old is None else {"kind": "pca+tune", "dim": int(tuned.shape[1]),
                                                                  "input_dim": old.input_dim})
    # photo queries go through the same map: PCA, normalise, post (the index normalises)
    projection = None if old is None else Projection(old.mean, old.components, post)
    stored = meta.drop(columns=["_dup_exact", "_dup_near"])
    with Store(out).writer(create=True) as w:
        seg = w.add_segment(tuned, colour, stored, projection=projection,
                            extra=make_index(backend, searchable(tuned, colour, "cosine"), metric="cosine").serialize())
        w.commit(settings=tuned_settings.to_json(), segments=[seg], live=np.ones(len(tuned), bool),
                 dup_exact=meta["_dup_exact"].to_numpy(), dup_near=meta["_dup_near"].to_numpy(),
                 report=Store(index).report(), operation={"kind": "tune", "source": str(index.resolve())},
                 projection_segment=seg["name"] if projection is not None else None)
    return info
