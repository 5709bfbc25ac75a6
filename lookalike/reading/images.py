"""Open, decode, orient and shrink photos; describe their colour; fingerprint them.

Everything here is per item and never raises for a bad catalogue photo: :func:`load`
returns ``(Decoded | None, reason)``. Query photos go through :func:`open_image`, which
raises :class:`~lookalike.errors.ImageError` with one clear line instead, of a subclass that says
which kind: :class:`~lookalike.errors.NotAnImageError` (not an allowed format),
:class:`~lookalike.errors.ImageTooLargeError` (too many pixels, from the header),
:class:`~lookalike.errors.ImageNotFoundError` (no file); corrupt, truncated or empty photos are
plain ``ImageError``.

This is the one place where photos are opened, for builds, the CLI and the server alike,
so the defences against hostile files live here:

- only JPEG, PNG, WebP, GIF, BMP and TIFF are decoded (``ALLOWED_FORMATS``): the first bytes
  must be one of them before Pillow sees the file, and Pillow then tries only that format's
  plugin, so its other plugins (EPS, which runs Ghostscript, and dozens of rarely used
  parsers) are never reached by a catalogue photo or an upload;
- a photo with more than ``max_pixels`` pixels is refused from its header, and so is one
  past Pillow's own decompression-bomb limit;
- decoding costs memory in proportion to the pixels, so at most :func:`decode_slots`
  decodes run at once in a process (one per core by default), big photos are shrunk
  while decoding where the format allows (JPEG draft) or right after it, in their own
  mode, before any colour conversion (``Image.reduce``), and memory is handed back to
  the system after a big decode (``malloc_trim`` on glibc);
- a JPEG whose frame promises more pixels than its bytes can hold, or whose lower half
  is the decoder's grey fill, is "truncated or corrupt", not a grey picture;
- every colour mode Pillow opens becomes the right RGB picture (16- and 32-bit ones
  scaled to 8 bits), or an ImageError.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import math
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence, Union

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from lookalike.errors import ImageError, ImageNotFoundError, ImageTooLargeError, NotAnImageError
from lookalike.reading.jpeg import eighth_scale_scans

__all__ = [
    "crop_box",
    "Preprocess",
    "Decoded",
    "ImageSource",
    "open_image",
    "prepare",
    "model_input",
    "load",
    "colour_descriptor",
    "dhash",
    "open_photo_file",
    "sniff_image_type",
    "decode_slots",
    "set_decode_slots",
    "COLOUR_DIM",
    "DEFAULT_MAX_PIXELS",
    "ALLOWED_FORMATS",
]

#: the only formats decoded (Pillow's names), recognised by their first bytes; anything else is
#: "not an image" before Pillow sees it (docs/security.md)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Photos larger than this many pixels are refused before decoding (decompression bombs).
DEFAULT_MAX_PIXELS = 64_000_000
#: JPEG draft decoding keeps at least this share of the model input side (see Preprocess.draft)
DRAFT_FRACTION = 0.7
#: decodes of at least this many pixels give their memory back to the system afterwards
TRIM_AFTER_PIXELS = 4_000_000
#: a pixel whose channels all lie within this of the background colour is background
BACKGROUND_TOLERANCE = 24
#: trimming: a row or column is product where this share of its pixels is; the margin kept
TRIM_LINE, TRIM_MARGIN = 0.005, 0.10
#: progressive JPEGs up to this size are rewritten for 1/8-scale decoding (lookalike.reading.jpeg)
LEAN_MAX_BYTES = 64 << 20
#: transparent photos are shrunk in strips of about this many pixels
_STRIP_PIXELS = 2_000_000

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
    ``trim`` first cuts away the uniform background around the product
    (:func:`trim_background`), so the product fills the input whatever its framing.
    """

    size: int = 224
    resize: str = "squash"
    fill: int = 255
    trim: bool = False

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
    width: int  # size as decoded (after draft/reduce), after EXIF orientation
    height: int


# -- how many decodes at once -----------------------------------------------------------
_gate_lock = threading.Lock()
_gate: threading.BoundedSemaphore | None = None
_slots = 0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _current_gate() -> threading.BoundedSemaphore:
    global _gate, _slots
    with _gate_lock:
        if _gate is None:
            _slots = _cores()
            _gate = threading.BoundedSemaphore(_slots)
        return _gate


def decode_slots() -> int:
    """How many photos this process decodes at once (default: one per core)."""
    _current_gate()
    return _slots


def set_decode_slots(n: int) -> None:
    """Let at most ``n`` photos decode at once in this process; the others wait their turn.

    A decode holds the photo's full pixels until they are shrunk (up to ``max_pixels`` x 4
    bytes, twice that for a transparent photo), so this bounds decode memory as well as CPU.
    ``lookalike serve`` gives each worker process its share of the cores.
    """
    global _gate, _slots
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"decode slots must be a whole number >= 1, not {n!r}")
    with _gate_lock:
        _slots, _gate = n, threading.BoundedSemaphore(n)


_malloc_trim: object = None


def _give_memory_back() -> None:
    """Hand freed heap memory back to the system.

    glibc keeps freed memory in its arenas; after a few big decodes in parallel threads a
    server stayed at its peak for good. ``malloc_trim(0)`` returns it (a no-op elsewhere).
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        try:
            trim = ctypes.CDLL(None).malloc_trim  # glibc only; musl, macOS, Windows lack it
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            _malloc_trim = trim
        except (OSError, AttributeError, TypeError):
            pass
    if _malloc_trim:
        _malloc_trim(0)  # type: ignore[operator]  # a ctypes function, found at import


# -- opening ------------------------------------------------------------------------------
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def _too_large(exc: Exception, max_pixels: int) -> str:
    """Pillow's own decompression-bomb refusal, worded like ours."""
    found = _BOMB_PIXELS.search(str(exc))
    pixels = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return f"image too large: {pixels} (limit {max_pixels:,})"


def _open(source: ImageSource, max_pixels: int) -> tuple[Image.Image, int | None]:
    """The photo opened but not decoded (its header checked), and its size in bytes."""
    if isinstance(source, Image.Image):
        return source, None
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file")
        fp: object = io.BytesIO(source)
        nbytes = len(source)
        head = bytes(source[:_SNIFF_BYTES])
    else:
        path = Path(source)
        if not path.exists():
            raise ImageNotFoundError(f"file not found: {path}")
        if path.is_dir():
            raise ImageError(f"is a folder, not a photo: {path}")
        nbytes = path.stat().st_size
        if nbytes == 0:
            raise ImageError("empty file")
        fp = path
        try:
            with open(path, "rb") as f:
                head = f.read(_SNIFF_BYTES)
        except OSError as exc:
            raise ImageError(f"unreadable image: {exc.strerror or exc}") from None
    # the allowlist: Pillow tries only the plugin of the format the first bytes name (the
    # file may change after this read; formats= still keeps Pillow to that one plugin)
    fmt = _FORMAT_OF.get(sniff_image_type(head) or "")
    if fmt is None:
        raise NotAnImageError("not an image (unrecognised file format)")
    try:
        img = Image.open(fp, formats=(fmt,))  # type: ignore[arg-type]  # Pillow's stub wants a list; it takes any sequence
    except UnidentifiedImageError:
        raise NotAnImageError("not an image (unrecognised file format)") from None
    except _BOMBS as exc:  # past Pillow's own limit (the warning, when warnings are errors)
        raise ImageTooLargeError(_too_large(exc, max_pixels)) from None
    except OSError as exc:
        raise ImageError(f"unreadable image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a format plugin choking on a hostile header
        raise ImageError(f"unreadable image: {type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageTooLargeError(f"image too large: {w}x{h} pixels (limit {max_pixels:,})")
    if w == 0 or h == 0:
        img.close()
        raise ImageError("image has no pixels")
    return img, nbytes


def open_image(
    source: ImageSource, *, draft: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open and fully decode a photo as RGB, EXIF orientation applied.

    ``draft`` asks for a photo that still covers ``draft`` x ``draft`` pixels and may be
    smaller: JPEG decodes at 1/2, 1/4 or 1/8 scale, and other formats are shrunk by a whole
    factor right after decoding, in their own mode (``Image.reduce``), so a big photo's
    full-size RGB copy is never made. At most :func:`decode_slots` decodes run at once.
    Raises :class:`ImageError` for anything that is not a readable image.
    """
    img, nbytes = _open(source, max_pixels)
    pixels = img.width * img.height
    out: Image.Image | None = None
    with _current_gate():
        try:
            out = _decode(img, draft, nbytes)
        except ImageError:
            raise
        except _BOMBS as exc:
            raise ImageTooLargeError(_too_large(exc, max_pixels)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(f"truncated or corrupt image: {exc}") from None
        finally:
            if out is not img and not isinstance(source, Image.Image):
                img.close()  # frees the full-size pixels now, not at the next garbage collection
    if pixels >= TRIM_AFTER_PIXELS:
        _give_memory_back()
    return out


_ORIENTATION = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode(img: Image.Image, draft: int | None, nbytes: int | None) -> Image.Image:
    jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
    if jpeg:
        _check_jpeg_length(img, nbytes)
        if draft:
            # draft() scales by a power of two, keeping both sides >= the requested ones;
            # EXIF may rotate later, so request a square.
            img.draft("RGB", (draft, draft))
            img = _lean_eighth_scale(img, draft, nbytes)
    img.load()
    if jpeg:
        _check_jpeg_fill(img)
    try:
        orientation = img.getexif().get(_ORIENTATION)
    except Exception:  # noqa: BLE001 - a damaged EXIF block only loses the orientation
        orientation = None
    out = _to_rgb(img, draft)
    method = _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    if method is not None:
        out = out.transpose(method)
        out.info = {}  # the orientation is applied: a second open_image must not apply it again
    return out


def _lean_eighth_scale(img: Image.Image, draft: int, nbytes: int | None) -> Image.Image:
    """A progressive JPEG drafted to 1/8 scale, opened again without the scans that scale does
    not read (:mod:`lookalike.reading.jpeg`): the same pixels for about a third of the decoding. Any
    other photo, or one the rewrite does not take, comes back as it was."""
    if (getattr(img, "decoderconfig", (1,))[0] != 8 or not img.info.get("progressive") or nbytes is None
            or nbytes > LEAN_MAX_BYTES or getattr(img, "fp", None) is None):
        return img
    fp: Any = img.fp  # type: ignore[attr-defined]  # an ImageFile's open source; Image.Image declares none
    try:
        fp.seek(0)
        data = fp.read(nbytes + 1)
    except (OSError, ValueError, AttributeError):
        return img
    lean = eighth_scale_scans(data) if len(data) == nbytes else None
    if lean is None:
        return img
    out = Image.open(io.BytesIO(lean), formats=("JPEG",))
    out.draft("RGB", (draft, draft))
    return out if out.size == img.size and out.mode == img.mode else img


def _shrink(img: Image.Image, draft: int | None) -> Image.Image:
    """Shrink by the largest whole factor that keeps both sides >= ``draft`` (box filter)."""
    if not draft:
        return img
    factor = min(img.size) // draft
    if factor < 2:
        return img
    if img.mode not in ("LA", "RGBA"):
        return img.reduce(factor)
    # Pillow reduces transparent modes through a premultiplied full-size copy; strips of a
    # few megapixels keep that copy small (reduce's boxes line up with the strip edges)
    w, h = img.size
    rows = max(1, _STRIP_PIXELS // (w * factor)) * factor
    out = Image.new(img.mode, ((w + factor - 1) // factor, (h + factor - 1) // factor))
    for top in range(0, h, rows):
        out.paste(img.crop((0, top, w, min(h, top + rows))).reduce(factor), (0, top // factor))
    return out


_DEEP = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_rgb(img: Image.Image, draft: int | None) -> Image.Image:
    """Any mode Pillow opens as RGB, shrunk before the conversion where the mode allows.

    Transparent pixels become white (studio backgrounds are white); 16-bit, 32-bit and
    float pixels are scaled to 8 bits; palettes, bilevel, LAB and HSV are converted before
    shrinking (averaging palette indexes or hues would be wrong).
    """
    mode = img.mode
    if mode in _DEEP:
        return _deep_to_grey(img, draft).convert("RGB")
    try:
        if mode == "1":
            img = img.convert("L")
        elif mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in ("PA", "RGBa"):
            img = img.convert("RGBA")
        elif mode == "La":
            img = img.convert("LA")
        elif mode in ("L", "RGB") and "transparency" in img.info:
            img = img.convert("RGBA")
        elif mode not in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            img = img.convert("RGB")  # LAB, HSV and anything newer
        img = _shrink(img, draft)  # Pillow premultiplies LA and RGBA while it reduces
        if img.mode in ("LA", "RGBA"):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img if img.mode == "RGB" else img.convert("RGB")
    except ValueError as exc:  # "conversion from X to Y not supported"
        raise ImageError(f"unsupported colour mode {mode}: {exc}") from None


def _deep_to_grey(img: Image.Image, draft: int | None) -> Image.Image:
    """An 8-bit grey picture from a 16-bit, 32-bit integer or float one.

    16-bit pixels are scaled by 255/65535. 32-bit and float ones have no fixed range, so
    their values decide: 0..1 (float) is scaled to 0..255, 0..255 is kept, 0..65535 is
    taken as 16-bit, anything else is stretched from its minimum to its maximum.
    """
    if img.mode in ("I", "F"):
        arr = np.asarray(_shrink(img, draft), dtype=np.float32)  # Pillow reduces I and F
    else:
        arr = np.asarray(img)  # uint16, whatever the byte order; no reduce for I;16 in Pillow
        factor = min(img.size) // draft if draft else 1
        if factor >= 2:
            arr = _box_reduce(arr, factor)
        return _grey(np.asarray(arr, dtype=np.float32) * (255.0 / 65535.0))
    arr = np.where(np.isfinite(arr), arr, 0.0).astype(np.float32, copy=False)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        arr = arr * (255.0 / 65535.0)
    else:
        arr = (arr - lo) * (255.0 / (hi - lo))
    return _grey(arr)


def _box_reduce(arr: np.ndarray, f: int) -> np.ndarray:
    """Mean of each f x f box, partial boxes at the edges included (as ``Image.reduce``)."""
    h, w = arr.shape
    hf, wf = h // f * f, w // f * f
    out = np.empty((-(-h // f), -(-w // f)), dtype=np.float32)
    out[: hf // f, : wf // f] = arr[:hf, :wf].reshape(hf // f, f, wf // f, f).mean(axis=(1, 3), dtype=np.float32)
    if wf < w:
        out[: hf // f, -1] = arr[:hf, wf:].reshape(hf // f, f * (w - wf)).mean(axis=1, dtype=np.float32)
    if hf < h:
        out[-1, : wf // f] = arr[hf:, :wf].reshape(h - hf, wf // f, f).mean(axis=(0, 2), dtype=np.float32)
    if hf < h and wf < w:
        out[-1, -1] = arr[hf:, wf:].mean(dtype=np.float32)
    return out


def _grey(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


# -- damaged JPEGs --------------------------------------------------------------------------
# start-of-frame markers of arithmetic-coded JPEGs, which can spend less than a bit per block
_ARITHMETIC_SOF = tuple(bytes([0xFF, m]) for m in (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _check_jpeg_length(img: Image.Image, nbytes: int | None) -> None:
    """Refuse a JPEG whose frame promises more pixels than its bytes can hold.

    Huffman coding spends at least one bit on every 8x8 block (its DC code). A header that
    claims 7000x7000 over a few hundred bytes of scan is mostly missing: libjpeg would fill
    the rest with grey, without an error.
    """
    fp: Any = getattr(img, "fp", None)  # an ImageFile's open source (Image.Image declares no fp)
    if nbytes is None or fp is None:
        return
    try:
        start = fp.tell()  # Pillow stops reading at the start of the scan
        fp.seek(0)
        head = fp.read(start)
        fp.seek(start)
    except (OSError, ValueError, AttributeError):
        return
    if any(marker in head for marker in _ARITHMETIC_SOF):
        return
    w, h = img.size
    blocks = math.ceil(w / 8) * math.ceil(h / 8)
    data = nbytes - start
    if data * 8 < blocks:
        raise ImageError(
            f"truncated or corrupt image: a {w}x{h} JPEG needs more than the {max(data, 0):,} bytes of data it holds"
        )


def _check_jpeg_fill(img: Image.Image) -> None:
    """Refuse a decoded JPEG whose lower half is libjpeg's fill for missing data.

    A scan that ends early (an end marker appended to a cut file) decodes without an error;
    libjpeg fills the missing blocks with mid-grey, exactly 128 in every channel. Whole rows
    of it from the middle down are a photo that is mostly missing.
    """
    if img.mode not in ("L", "RGB"):
        return
    w, h = img.size
    if h < 16:
        return
    for y in (h // 2, 5 * h // 8, 3 * h // 4, 7 * h // 8, h - 1):
        extrema = img.crop((0, y, w, y + 1)).getextrema()
        bands = (extrema,) if img.mode == "L" else extrema
        if any(lo != 128 or hi != 128 for lo, hi in bands):  # type: ignore[misc]  # getextrema: one pair per band
            return
    raise ImageError("truncated or corrupt image: its lower half is missing (decoder fill)")


# -- photo files the server hands out -------------------------------------------------------
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"),  # BigTIFF
    (b"MM\x00+", "image/tiff"),
    (b"BM", "image/bmp"),
)
#: a sniffed media type -> the one Pillow plugin allowed to open it (ALLOWED_FORMATS)
_FORMAT_OF = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF",
              "image/bmp": "BMP", "image/tiff": "TIFF"}
_SNIFF_BYTES = 16


def sniff_image_type(head: bytes) -> str | None:
    """The media type of an image from its first bytes (magic numbers), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, media in _MAGIC:
        if head.startswith(magic):
            return media
    return None


def _is_inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives
        return False


def open_photo_file(
    path: str | os.PathLike, *, root: str | os.PathLike | Sequence[str | os.PathLike] | None = None
) -> BinaryIO:
    """Open a photo file read-only as a build recorded it, refusing whatever was swapped in since.

    ``path`` must still be its own real path (``build`` records resolved paths), so a link
    anywhere on it means the file was replaced; with ``root`` (a folder, or several) it must
    also lie inside one of them. The file is opened without following a last link (``O_NOFOLLOW``) or waiting on
    a FIFO, and must be a regular file. Raises :class:`ImageError`; messages name no path.
    """
    p = os.path.abspath(os.fspath(path))
    real = os.path.realpath(p)
    if real != p:
        raise ImageError("the photo's path goes through a link now")
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root or [])
    if root is not None and not any(_is_inside(real, os.path.abspath(os.fspath(r))) for r in roots):
        raise ImageError("the photo is outside the images folder")
    flags = os.O_RDONLY
    for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise ImageNotFoundError("file not found") from None
    except OSError as exc:
        raise ImageError(f"can't open the photo: {exc.strerror or type(exc).__name__}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError("the photo is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def model_input(source: ImageSource, pre: Preprocess) -> np.ndarray:
    """A photo as the model takes it: decoded in draft mode for ``pre``, then :func:`prepare`d.

    Raises :class:`ImageError`; :func:`load` is the never-raising variant for catalogues.
    """
    return prepare(open_image(source, draft=pre.draft), pre)


def _background(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The background colour of a studio photo (the median of its border pixels) and the mask
    of the pixels that differ from it: those are the product."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    bg = np.median(border, axis=0)
    # channel by channel: a max over the last axis of 3 is ten times slower in NumPy
    fg = np.abs(rgb[..., 0] - bg[0]) > BACKGROUND_TOLERANCE
    for c in range(1, rgb.shape[2]):
        fg |= np.abs(rgb[..., c] - bg[c]) > BACKGROUND_TOLERANCE
    return bg, fg


def trim_background(img: Image.Image) -> Image.Image:
    """The photo cut to its product plus a ``TRIM_MARGIN`` margin each side.

    Rows and columns where at least ``TRIM_LINE`` of the pixels differ from the background
    bound the product. A photo with too little product (a white shirt on white), or none to
    cut, comes back whole.
    """
    w, h = img.size
    if w < 16 or h < 16:
        return img
    _, fg = _background(np.asarray(img, dtype=np.int16))
    if fg.mean() < 0.03:
        return img
    rows = np.flatnonzero(fg.sum(axis=1) > TRIM_LINE * w)
    cols = np.flatnonzero(fg.sum(axis=0) > TRIM_LINE * h)
    if not len(rows) or not len(cols):
        return img
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    dy, dx = int((bottom - top) * TRIM_MARGIN), int((right - left) * TRIM_MARGIN)
    box = (max(0, left - dx), max(0, top - dy), min(w, right + dx), min(h, bottom + dy))
    return img if box == (0, 0, w, h) else img.crop(box)


#: the smallest region a box query may take, in pixels each way
MIN_BOX = 8


def crop_box(img: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """The region ``(x, y, w, h)`` of a photo: pixels, or fractions of its width and height when
    all four are at most 1. Raises :class:`~lookalike.errors.InvalidQueryError` for a region that
    is not inside the photo or smaller than ``MIN_BOX`` pixels."""
    from lookalike.errors import InvalidQueryError

    x, y, w, h = box
    if max(box) <= 1.0:
        x, y, w, h = x * img.width, y * img.height, w * img.width, h * img.height
    left, top, right, bottom = round(x), round(y), round(x + w), round(y + h)
    if right > img.width or bottom > img.height:
        raise InvalidQueryError(f"box {','.join(f'{v:g}' for v in box)} is not inside the "
                                f"{img.width}x{img.height} photo")
    if right - left < MIN_BOX or bottom - top < MIN_BOX:
        raise InvalidQueryError(f"box {','.join(f'{v:g}' for v in box)} is smaller than {MIN_BOX}x{MIN_BOX} pixels")
    return img.crop((left, top, right, bottom))


def prepare(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize an RGB photo to the model's square input; uint8 (size, size, 3)."""
    if pre.trim:
        img = trim_background(img)
    size = pre.size
    w, h = img.size
    if pre.resize == "squash":
        out = img.resize((size, size), Image.Resampling.BICUBIC)
    elif pre.resize == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        out = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        out = out.crop((left, top, left + size, top + size))
    else:
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = img.resize((nw, nh), Image.Resampling.BICUBIC)
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
        img = img.resize((64, 64), Image.Resampling.BILINEAR)
    _, fg = _background(np.asarray(img, dtype=np.float32))
    if fg.mean() < 0.03:
        fg = np.ones_like(fg)  # a product the colour of its background: use everything
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
    grey = Image.fromarray(pixels).convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    a = np.asarray(grey, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


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
