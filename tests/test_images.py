"""Photo decoding: draft mode, EXIF orientation, colour modes, limits and per-item failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageError, demo_catalog
from lookalike.images import (
    COLOUR_DIM,
    Preprocess,
    colour_descriptor,
    dhash,
    file_digest,
    load,
    open_image,
    prepare,
)

DEMO_IMAGES = demo_catalog().parent / "images"
PRE = Preprocess()


def _demo_photo() -> Path:
    return sorted(DEMO_IMAGES.glob("*.jpg"))[0]


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- draft mode ---------------------------------------------------------------------------
@pytest.mark.parametrize("resize", ["pad", "squash", "crop"])
def test_draft_decode_matches_full_decode(fullres_dir, resize):
    pre = Preprocess(resize=resize)
    photos = sorted((fullres_dir / "images").glob("*.jpg"))[:3]
    for path in photos:
        full = open_image(path)
        draft = open_image(path, draft=pre.size)
        # the reduced DCT really is used on these big photos, and still covers the input size
        assert draft.size[0] < full.size[0] and min(draft.size) >= pre.size
        a, b = prepare(draft, pre), prepare(full, pre)
        assert a.shape == b.shape == (224, 224, 3) and a.dtype == np.uint8
        assert _diff(a, b) < 1.5, path.name


def test_load_full_res_photo(fullres_dir):
    path = sorted((fullres_dir / "images").glob("*.jpg"))[0]
    decoded, reason = load(path, PRE)
    assert reason == "" and decoded is not None
    assert decoded.pixels.shape == (224, 224, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.colour.shape == (COLOUR_DIM,) and decoded.colour.dtype == np.float32
    assert abs(float(np.linalg.norm(decoded.colour)) - 1.0) < 1e-5
    # the same bytes decode the same way
    again, _ = load(path.read_bytes(), PRE)
    assert np.array_equal(again.pixels, decoded.pixels) and again.dhash == decoded.dhash


# -- EXIF orientation ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "orientation, stored_as",
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_exif_orientation_is_applied(tmp_path, orientation, stored_as):
    upright = Image.open(_demo_photo()).convert("RGB")
    assert upright.size[0] != upright.size[1]  # a 90-degree mistake would show in the shape
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(stored_as).save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())

    raw = Image.open(tmp_path / "rotated.jpg")
    assert raw.getexif().get(0x0112) == orientation
    img = open_image(tmp_path / "rotated.jpg", draft=224)
    assert img.size == upright.size
    want = prepare(open_image(tmp_path / "upright.jpg"), PRE)
    got = prepare(img, PRE)
    assert _diff(got, want) < 1.0
    # and ignoring the tag would have made a clearly different input
    assert _diff(prepare(raw.convert("RGB"), PRE), want) > 5.0

    decoded, reason = load(tmp_path / "rotated.jpg", PRE)
    assert reason == "" and (decoded.width, decoded.height) == upright.size
    assert _diff(decoded.pixels, want) < 1.0


# -- colour modes -------------------------------------------------------------------------
def test_greyscale_photo_becomes_rgb(fashion_dir):
    path = fashion_dir / "images" / "23500.jpg"  # one of the 10 greyscale photos in the set
    assert Image.open(path).mode == "L"
    img = open_image(path, draft=224)
    assert img.mode == "RGB"
    decoded, reason = load(path, PRE)
    assert reason == ""
    px = decoded.pixels
    assert px.shape == (224, 224, 3)
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])


def test_rgba_becomes_rgb_on_white(tmp_path):
    rgba = Image.open(_demo_photo()).convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, dtype=np.uint8)
    alpha[:, : rgba.size[0] // 2] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "cutout.png")
    img = open_image(tmp_path / "cutout.png")
    assert img.mode == "RGB" and img.size == rgba.size
    px = np.asarray(img)
    assert (px[:, : rgba.size[0] // 2 - 1] == 255).all()
    right = np.asarray(Image.open(_demo_photo()).convert("RGB"))[:, rgba.size[0] // 2 + 1 :]
    assert np.array_equal(px[:, rgba.size[0] // 2 + 1 :], right)
    decoded, reason = load(tmp_path / "cutout.png", PRE)
    assert reason == "" and decoded.pixels.shape == (224, 224, 3)


def test_palette_and_cmyk_inputs_become_rgb(tmp_path):
    photo = Image.open(_demo_photo()).convert("RGB")
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("p.png", "cmyk.jpg"):
        img = open_image(tmp_path / name, draft=224)
        assert img.mode == "RGB"
        assert _diff(prepare(img, PRE), prepare(photo, PRE)) < 2.0, name


# -- limits and bad input -----------------------------------------------------------------
def test_pixel_limit_refuses_oversized_image(fullres_dir, tmp_path):
    path = sorted((fullres_dir / "images").glob("*.jpg"))[0]
    with pytest.raises(ImageError, match="too large"):
        open_image(path, max_pixels=1_000_000)
    decoded, reason = load(path, PRE, max_pixels=1_000_000)
    assert decoded is None and reason.startswith("image too large: 1800x2400")
    # the default limit refuses a decompression bomb before decoding it
    Image.new("1", (8100, 8000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="too large"):
        open_image(tmp_path / "bomb.png")


def test_bad_inputs_raise_image_error_with_one_line(tmp_path):
    photo = _demo_photo().read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    (tmp_path / "half.jpg").write_bytes(photo[: len(photo) // 2])
    cases = {
        tmp_path / "missing.jpg": "file not found",
        tmp_path / "empty.jpg": "empty file",
        tmp_path / "text.jpg": "not an image",
        tmp_path / "half.jpg": "truncated",
        tmp_path: "is a folder",
        b"": "empty file",
        b"GIF89a garbage": "",
    }
    for source, words in cases.items():
        with pytest.raises(ImageError) as err:
            open_image(source, draft=224)
        assert words in str(err.value) and "\n" not in str(err.value)
        decoded, reason = load(source, PRE)  # the per-item path never raises
        assert decoded is None and reason


def test_descriptors(fashion_dir):
    a, b = fashion_dir / "images" / "21838.jpg", fashion_dir / "images" / "23129.jpg"
    assert file_digest(a) == file_digest(b)  # byte-identical photos
    other = fashion_dir / "images" / "42419.jpg"
    assert file_digest(a) != file_digest(other)
    pa, po = load(a, PRE)[0], load(other, PRE)[0]
    assert pa.dhash == dhash(pa.pixels) and 0 <= pa.dhash < 2**64
    assert pa.dhash != po.dhash
    c = colour_descriptor(pa.pixels)
    assert np.allclose(c, pa.colour) and (c >= 0).all()
    white = np.full((224, 224, 3), 255, np.uint8)
    assert abs(float(np.linalg.norm(colour_descriptor(white))) - 1.0) < 1e-5


def test_preprocess_rejects_unknown_resize():
    with pytest.raises(ValueError, match="pad, squash or crop"):
        Preprocess(resize="stretch")
