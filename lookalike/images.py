"""Open, decode, orient and shrink photos; describe their colour; fingerprint them.

Everything here is per item and never raises for a bad catalogue photo: :func:`load`
returns ``(Decoded | None, reason)``. Query photos go through :func:`open_image`, which
raises :class:`~lookalike.errors.ImageError` with one clear line instead.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = [
    "Preprocess",
    "Decoded",
    "ImageSource",
    "open_image",
    "prepare",
    "model_input",
    "load",
    "colour_descriptor",
    "dhash",
    "file_digest",
    "COLOUR_DIM",
    "DEFAULT_MAX_PIXELS",
]

#: Photos larger than this many pixels are refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000
#: JPEG draft decoding keeps at least this share of the model input side (see Preprocess.draft)
DRAFT_FRACTION = 0.7

ImageSource = Union[str, os.PathLike, bytes, Image.Image]

# Chromatic bins: 12 hues x 2 saturations x 2 values; achromatic bins: 5 greys.
_HUE_BINS, _SAT_BINS, _VAL_BINS, _GREY_BINS = 12, 2, 2, 5
COLOUR_DIM = _HUE_BINS * _SAT_BINS * _VAL_BINS + _GREY_BINS


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes a model input.

    ``resize``: ``"pad"`` fits the whole photo into the square and fills the rest with
    ``fill`` (studio backgrounds are white, so padding is invisible); ``"squash"`` stretches
    it to the square like the reference recipe; ``"crop"`` cuts the centre square.
    """

    size: int = 224
    resize: str = "squash"
    fill: int = 255

    def __post_init__(self) -> None:
        if self.resize not in ("pad", "squash", "crop"):
            raise ValueError(f"resize must be pad, squash or crop, not {self.resize!r}")

    @property
    def draft(self) -> int:
        """The square that JPEG draft decoding must still cover: ``DRAFT_FRACTION`` of ``size``.

        A 1800x2400 photo decodes at 1/8 scale (225x300) instead of 1/4 for a 320-px input:
        several times less decoding, and P@5 moved by at most 0.002 when the 2,906-product set
        was cut to 300 px first (benchmarks/input_size_study.py --cut 300).
        """
        return max(1, math.ceil(self.size * DRAFT_FRACTION))


@dataclass
class Decoded:
    """One decoded photo: the model input and cheap descriptors computed on the way."""

    pixels: np.ndarray  # uint8 (size, size, 3)
    colour: np.ndarray  # float32 (COLOUR_DIM,), L2-normalised histogram
    dhash: int  # 64-bit difference hash of the photo, for near-duplicate listings
    width: int  # original size, after EXIF orientation
    height: int


def _open(source: ImageSource, max_pixels: int) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file")
        fp: object = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageError(f"file not found: {path}")
        if path.is_dir():
            raise ImageError(f"is a folder, not a photo: {path}")
        if path.stat().st_size == 0:
            raise ImageError("empty file")
        fp = path
    try:
        img = Image.open(fp)  # type: ignore[arg-type]
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised file format)") from None
    except OSError as exc:
        raise ImageError(f"unreadable image: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"image too large: {w}x{h} pixels (limit {max_pixels:,})")
    if w == 0 or h == 0:
        raise ImageError("image has no pixels")
    return img


def open_image(
    source: ImageSource, *, draft: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open and fully decode a photo as RGB, EXIF orientation applied.

    ``draft`` asks JPEG decoding for a reduced-size DCT (1/2, 1/4 or 1/8 scale) that
    still covers ``draft`` x ``draft`` pixels: big catalogue photos decode several times
    faster. Raises :class:`ImageError` for anything that is not a readable image.
    """
    img = _open(source, max_pixels)
    try:
        if draft and img.format == "JPEG":
            # draft() scales by a power of two, keeping both sides >= the requested ones;
            # EXIF may rotate later, so request a square.
            img.draft("RGB", (draft, draft))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba).convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"truncated or corrupt image: {exc}") from None
    return img


def model_input(source: ImageSource, pre: Preprocess) -> np.ndarray:
    """A photo as the model takes it: decoded in draft mode for ``pre``, then :func:`prepare`d.

    Raises :class:`ImageError`; :func:`load` is the never-raising variant for catalogues.
    """
    return prepare(open_image(source, draft=pre.draft), pre)


def prepare(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize an RGB photo to the model's square input; uint8 (size, size, 3)."""
    size = pre.size
    w, h = img.size
    if pre.resize == "squash":
        out = img.resize((size, size), Image.BICUBIC)
    elif pre.resize == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        out = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        out = out.crop((left, top, left + size, top + size))
    else:
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = img.resize((nw, nh), Image.BICUBIC)
        out = Image.new("RGB", (size, size), (pre.fill,) * 3)
        out.paste(small, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(out, dtype=np.uint8)


def colour_descriptor(pixels: np.ndarray) -> np.ndarray:
    """Colour histogram of the product itself, ignoring a uniform studio background.

    The background colour is the median of the border pixels; pixels close to it are
    dropped (unless that would leave almost nothing, as for a white shirt on white).
    Chromatic pixels vote into hue x saturation x value bins (softly between neighbouring
    hues), the rest into grey levels. Returns the L2-normalised histogram: its cosine
    rewards a shared dominant colour more than a shared trace of one.
    """
    img = Image.fromarray(pixels)
    if img.size[0] > 64:
        img = img.resize((64, 64), Image.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.abs(rgb - bg).max(axis=2)
    fg = dist > 24
    if fg.mean() < 0.03:
        fg = dist >= 0  # a product the colour of its background: use everything
    hsv = np.asarray(img.convert("HSV"), dtype=np.float32)[fg] / 255.0
    h, s, v = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    chromatic = (s > 0.2) & (v > 0.2)
    hist = np.zeros(COLOUR_DIM, dtype=np.float32)
    # soft hue binning: each pixel splits its vote between the two nearest hue bins, so
    # a hue on a bin edge does not flip the descriptor
    pos = h[chromatic] * _HUE_BINS - 0.5
    lo = np.floor(pos).astype(int)
    frac = (pos - lo).astype(np.float32)
    sb = np.minimum(((s[chromatic] - 0.2) / 0.8 * _SAT_BINS).astype(int), _SAT_BINS - 1)
    vb = np.minimum(((v[chromatic] - 0.2) / 0.8 * _VAL_BINS).astype(int), _VAL_BINS - 1)
    for hue, weight in ((lo % _HUE_BINS, 1.0 - frac), ((lo + 1) % _HUE_BINS, frac)):
        np.add.at(hist, (hue * _SAT_BINS + sb) * _VAL_BINS + vb, weight)
    gb = np.minimum((v[~chromatic] * _GREY_BINS).astype(int), _GREY_BINS - 1)
    np.add.at(hist, _HUE_BINS * _SAT_BINS * _VAL_BINS + gb, 1.0)
    norm = float(np.linalg.norm(hist))
    return hist / norm if norm > 0 else hist


def dhash(pixels: np.ndarray) -> int:
    """64-bit difference hash: near-identical photos differ in few bits."""
    grey = Image.fromarray(pixels).convert("L").resize((9, 8), Image.BILINEAR)
    a = np.asarray(grey, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes: byte-identical photos get the same digest."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(
    source: ImageSource, pre: Preprocess, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[Decoded | None, str]:
    """Decode one photo for the model. Never raises: ``(None, reason)`` on failure."""
    try:
        img = open_image(source, draft=pre.draft, max_pixels=max_pixels)
        # the size *after* draft is what we have; report the true size when it's cheap
        width, height = img.size
        pixels = prepare(img, pre)
    except ImageError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a bad photo must never kill a batch
        return None, f"unreadable image: {type(exc).__name__}: {exc}"
    return Decoded(pixels, colour_descriptor(pixels), dhash(pixels), width, height), ""
