"""PCA projection fitted on the catalogue itself at build time (unsupervised, any catalogue).

Pooled CNN vectors share a large common component: every product photo looks like "a
product on white". Centering removes it and PCA keeps the directions in which this
catalogue's products actually differ, which both sharpens cosine similarity and shrinks
the stored vectors (5,120 -> 256 floats for the default model). Stored as
``projection.npz`` in the index's base segment and applied to photo queries too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lookalike.encoders import l2_normalize
from lookalike.errors import InvalidQueryError

__all__ = ["Projection", "DEFAULT_PROJECTION_DIM", "FILE"]

#: dimensions kept by default (0 or None: no projection)
DEFAULT_PROJECTION_DIM = 256
FILE = "projection.npz"
_FIT_ROWS = 20_000


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray  # (d_in,)
    components: np.ndarray  # (d_out, d_in), rows orthonormal
    #: optional second linear map, applied to the L2-normalised PCA output (``lookalike tune``)
    post: np.ndarray | None = None  # (d_out, d_tuned)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0] if self.post is None else self.post.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @staticmethod
    def check_dim(dim: object) -> int:
        """A requested projection size: 0 or ``None`` for none, else a whole number >= 1."""
        if dim is None:
            return 0
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
            raise InvalidQueryError(f"projection dimensions must be 0 (none) or a whole number >= 1, not {dim!r}")
        return int(dim)

    @classmethod
    def fit(cls, raw: np.ndarray, dim: int, *, seed: int = 0) -> "Projection":
        """Fit on L2-normalised rows (a deterministic sample of at most 20,000)."""
        x = l2_normalize(np.asarray(raw, dtype=np.float32))
        if len(x) > _FIT_ROWS:
            rng = np.random.default_rng(seed)
            x = x[np.sort(rng.choice(len(x), _FIT_ROWS, replace=False))]
        mean = x.mean(axis=0)
        xc = x - mean
        dim = max(1, min(dim, len(x) - 1, x.shape[1])) if len(x) > 1 else 1
        # the Gram route is cheaper when there are fewer rows than dimensions
        if len(xc) < xc.shape[1]:
            gram = xc.astype(np.float64) @ xc.T.astype(np.float64)
            vals, vecs = np.linalg.eigh(gram)
            order = np.argsort(vals)[::-1][:dim]
            comps = (vecs[:, order].T @ xc.astype(np.float64)) / np.sqrt(np.maximum(vals[order], 1e-12))[:, None]
        else:
            cov = xc.T.astype(np.float64) @ xc.astype(np.float64)
            vals, vecs = np.linalg.eigh(cov)
            comps = vecs[:, np.argsort(vals)[::-1][:dim]].T
        # fix signs so that refits on the same data give the same vectors
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        comps = comps * np.where(signs == 0, 1, signs)[:, None]
        return cls(mean.astype(np.float32), comps.astype(np.float32))

    def apply(self, raw: np.ndarray) -> np.ndarray:
        x = l2_normalize(np.asarray(raw, dtype=np.float32))
        y = (x - self.mean) @ self.components.T
        if self.post is not None:
            y = l2_normalize(y.astype(np.float32)) @ self.post
        return np.ascontiguousarray(y, dtype=np.float32)

    def direction(self, raw: np.ndarray) -> np.ndarray:
        """:meth:`apply` without the centring, for a query from another modality (a CLIP text
        embedding): ``C · t`` has with a stored ``C (x − m)`` the inner product ``t · (x − m)``
        (up to the dimensions PCA dropped), which ranks photos as ``t · x`` does; subtracting the
        photos' mean ``m`` from ``t`` too would add the bias ``−m · x`` against typical photos."""
        y = l2_normalize(np.asarray(raw, dtype=np.float32)) @ self.components.T
        if self.post is not None:
            y = l2_normalize(y.astype(np.float32)) @ self.post
        return np.ascontiguousarray(y, dtype=np.float32)

    def to_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        arrays = {"mean": self.mean, "components": self.components}
        if self.post is not None:
            arrays["post"] = self.post
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle into **kwds
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Projection":
        import io

        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["mean"], z["components"], z["post"] if "post" in z.files else None)
