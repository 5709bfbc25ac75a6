"""The encoder contract and the pooling of CNN feature maps."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from lookalike.errors import ModelError
from lookalike.folder.rows import l2_normalize  # defined with the row format it serves
from lookalike.reading.images import ImageSource, Preprocess

__all__ = ["Encoder", "POOLINGS", "pool", "pooled_dim", "l2_normalize"]

#: ``none`` keeps the flattened C x H x W map (the reference recipe); ``grid2`` averages each
#: quarter of the map (top-left, top-right, bottom-left, bottom-right) into 4 x C, keeping
#: coarse layout; the others pool the whole map to C.
POOLINGS = ("grid2", "gem", "avg", "max", "none")


def pooled_dim(channels: int, grid: int, pooling: str) -> int:
    return channels * {"none": grid * grid, "grid2": 4}.get(pooling, 1)
GEM_P = 3.0


@runtime_checkable
class Encoder(Protocol):
    """Turns photos into float32 ``(n, dim)`` vectors and carries its own preprocessing."""

    name: str
    pooling: str
    dim: int
    preprocess: Preprocess

    def encode(
        self,
        images: ImageSource | Sequence[ImageSource],
        *,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
    ) -> np.ndarray: ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode a uint8 ``(n, size, size, 3)`` batch already prepared by :func:`images.prepare`."""
        ...


def pool(fmap: np.ndarray, pooling: str) -> np.ndarray:
    """Pool an ``(n, c, h, w)`` feature map into ``(n, d)`` float32 vectors."""
    if pooling == "avg":
        out = fmap.mean(axis=(2, 3))
    elif pooling == "max":
        out = fmap.max(axis=(2, 3))
    elif pooling == "gem":
        # generalised mean (p=3): between average and max; activations can be slightly
        # negative after swish, so clamp first
        out = np.cbrt(np.power(np.maximum(fmap, 1e-6), GEM_P).mean(axis=(2, 3)))
    elif pooling == "grid2":
        h, w = fmap.shape[2], fmap.shape[3]
        rows = np.array_split(np.arange(h), 2)
        cols = np.array_split(np.arange(w), 2)
        out = np.concatenate(
            [fmap[:, :, r[0] : r[-1] + 1, c[0] : c[-1] + 1].mean(axis=(2, 3)) for r in rows for c in cols], axis=1
        )
    elif pooling == "none":
        # channels-last flattening, as Keras' Flatten() on a 7x7x2048 map in the reference
        out = fmap.transpose(0, 2, 3, 1).reshape(fmap.shape[0], -1)
    else:
        raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return np.ascontiguousarray(out, dtype=np.float32)
