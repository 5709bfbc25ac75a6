"""lookalike.reading.jpeg: progressive JPEGs decoded at 1/8 scale without the scans that scale ignores.

The rewrite is only worth having if the pixels are exactly those of the whole file, so every
test compares against Pillow decoding the file as it is, at the same draft scale.
"""

from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookalike.reading.images import Preprocess, load, open_image
from lookalike.reading.jpeg import eighth_scale_scans

DRAFT = Preprocess(size=320).draft


def _draft_decode(data: bytes, draft: int = DRAFT) -> tuple[np.ndarray, tuple[int, int]]:
    """Pillow on the file as it is: the pixels every rewrite must reproduce."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (draft, draft))
    img.load()
    return np.asarray(img.convert("RGB")), img.decoderconfig


def _photo(size=(1800, 2400), seed=0) -> Image.Image:
    """A product-like picture with edges and texture, so AC coefficients carry real data."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h))], axis=-1)
    noise = rng.integers(0, 40, size=(h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_every_progressive_sample_photo_at_one_eighth_scale_decodes_to_the_same_pixels(fullres_dir):
    """The 1800x2400 photos of ../shared decode at 1/8 scale: all of them through the rewrite,
    bit-identical to the whole file, and in a fraction of the CPU time."""
    rewritten, full_s, lean_s = 0, 0.0, 0.0
    for path in sorted((fullres_dir / "images").glob("*.jpg")):
        data = path.read_bytes()
        want, config = _draft_decode(data)
        lean = eighth_scale_scans(data)
        progressive = Image.open(io.BytesIO(data)).info.get("progressive")
        if config[0] != 8 or not progressive:
            continue
        assert lean is not None, path.name
        rewritten += 1
        t = time.thread_time()
        got = np.asarray(open_image(data, draft=DRAFT))
        lean_s += time.thread_time() - t
        t = time.thread_time()
        _draft_decode(data)
        full_s += time.thread_time() - t
        assert got.shape == want.shape and np.array_equal(got, want), path.name
        assert np.array_equal(_draft_decode(lean)[0], want), path.name
    assert rewritten >= 100  # 109 of the 200 are progressive 1800x2400 photos
    assert lean_s < 0.8 * full_s  # measured: about a third of the time


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("size", [(1800, 2400), (1811, 2413), (2403, 1805)])
def test_generated_progressive_photos_decode_to_the_same_pixels(subsampling, size):
    """Sizes that are no multiple of 8 or 16, landscape too, every chroma subsampling; more
    than 32,767 luma blocks, so the appended scan needs several end-of-band runs."""
    data = _jpeg(_photo(size), progressive=True, subsampling=subsampling)
    want, config = _draft_decode(data)
    assert config[0] == 8
    lean = eighth_scale_scans(data)
    assert lean is not None and len(lean) < len(data)
    assert np.array_equal(_draft_decode(lean)[0], want)
    assert np.array_equal(np.asarray(open_image(data, draft=DRAFT)), want)


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grey_and_cmyk_progressive_photos_decode_to_the_same_pixels(mode):
    data = _jpeg(_photo((1800, 2400), seed=1).convert(mode), progressive=True)
    want, _ = _draft_decode(data)
    lean = eighth_scale_scans(data)
    assert lean is not None
    assert np.array_equal(_draft_decode(lean)[0], want)
    assert np.array_equal(np.asarray(open_image(data, draft=DRAFT)), np.asarray(
        Image.fromarray(want).convert("RGB")))


def test_exif_orientation_survives_the_rewrite():
    img = _photo((1800, 2400), seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    data = _jpeg(img, progressive=True, exif=exif.tobytes())
    got = open_image(data, draft=DRAFT)
    assert got.size == (300, 225)  # 225x300 at 1/8, turned on its side
    want = Image.fromarray(_draft_decode(data)[0]).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("kw", [{}, {"progressive": True, "restart_marker_blocks": 4}])
def test_files_it_does_not_take_are_decoded_as_they_are(kw):
    """Baseline JPEGs, and progressive ones with restart intervals, are left to libjpeg whole."""
    data = _jpeg(_photo((1800, 2400), seed=3), **kw)
    assert eighth_scale_scans(data) is None
    assert np.array_equal(np.asarray(open_image(data, draft=DRAFT)), _draft_decode(data)[0])


def test_other_scales_are_not_rewritten():
    """At 1/4 scale luma needs its AC coefficients: a 1080x1440 photo is decoded whole."""
    data = _jpeg(_photo((1080, 1440), seed=4), progressive=True)
    want, config = _draft_decode(data)
    assert config[0] == 4
    assert np.array_equal(np.asarray(open_image(data, draft=DRAFT)), want)


def test_a_cut_progressive_file_is_not_rewritten_and_still_reported():
    data = _jpeg(_photo((1800, 2400), seed=5), progressive=True)
    cut = data[: len(data) // 3]
    assert eighth_scale_scans(cut) is None
    decoded, reason = load(cut, Preprocess(size=320))
    assert decoded is None and reason.startswith("truncated or corrupt image")


_SEED_FILE = _jpeg(_photo((640, 480), seed=6), progressive=True)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.tuples(st.integers(0, len(_SEED_FILE) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(2, len(_SEED_FILE)))
def test_hostile_bytes_give_a_rewrite_or_none_quickly_never_an_exception(edits, keep):
    """Corrupted headers, lengths and markers: the segment walker answers within milliseconds,
    with bytes or None, and whatever it returns is still only libjpeg's to judge."""
    data = bytearray(_SEED_FILE[:keep])
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    t = time.perf_counter()
    out = eighth_scale_scans(bytes(data))
    assert time.perf_counter() - t < 0.5
    assert out is None or (isinstance(out, bytes) and out.startswith(b"\xff\xd8") and out.endswith(b"\xff\xd9"))


def test_header_fields_at_their_limits_are_refused():
    rng = random.Random(7)
    data = _jpeg(_photo((1800, 2400), seed=8), progressive=True)
    sof = data.index(b"\xff\xc2")
    for patch in (b"\x00\x00", b"\xff\xff"):  # a frame length of 0, and one past the end
        bad = data[: sof + 2] + patch + data[sof + 4:]
        assert eighth_scale_scans(bad) is None
    zero_width = bytearray(data)
    zero_width[sof + 7: sof + 9] = b"\x00\x00"
    assert eighth_scale_scans(bytes(zero_width)) is None
    assert eighth_scale_scans(b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(64))) is None
    assert eighth_scale_scans(b"") is None
