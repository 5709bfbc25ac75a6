"""Photo decoding: draft mode, EXIF orientation, colour modes, limits and per-item failures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from hostile import cut_jpeg, eps, lying_jpeg, pillow_file, png
from PIL import Image

from lookalike import ImageError, ImageNotFoundError, ImageTooLargeError, NotAnImageError, demo_catalog
from lookalike.folder.rows import file_sha1
from lookalike.reading.images import (
    ALLOWED_FORMATS,
    COLOUR_DIM,
    DEFAULT_MAX_PIXELS,
    Preprocess,
    colour_descriptor,
    dhash,
    load,
    open_image,
    open_photo_file,
    prepare,
    sniff_image_type,
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
    assert file_sha1(a) == file_sha1(b)  # byte-identical photos
    other = fashion_dir / "images" / "42419.jpg"
    assert file_sha1(a) != file_sha1(other)
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


# -- every colour mode ----------------------------------------------------------------------
def _scene(w: int = 96, h: int = 64) -> Image.Image:
    """A smooth, colourful picture: hue across, brightness down, a white band."""
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    rgb = np.stack([255 * x, 255 * (1 - x) * (0.3 + 0.7 * y), 255 * y], axis=-1)
    rgb[h // 3 : h // 2] = 255
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def _grey16(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.uint16) * 257  # the full 16-bit range


def _make(mode: str, src: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(``src`` in ``mode``, the RGB picture open_image must give back)."""
    grey = src.convert("L").convert("RGB")
    g16 = _grey16(src)
    w, h = src.size
    deep = {
        "I;16": Image.frombytes("I;16", src.size, g16.astype("<u2").tobytes()),
        "I;16L": Image.frombytes("I;16L", src.size, g16.astype("<u2").tobytes()),
        "I;16B": Image.frombytes("I;16B", src.size, g16.astype(">u2").tobytes()),
        "I": Image.fromarray(g16.astype(np.int32), "I"),  # 0..65535 in 32 bits: a 16-bit source
        "I (8-bit values)": src.convert("L").convert("I"),
        "I (negative)": Image.fromarray(g16.astype(np.int32) - 40000, "I"),  # stretched min..max
        "F": Image.fromarray(g16.astype(np.float32) / 65535, "F"),  # 0..1 floats
        "F (8-bit values)": src.convert("L").convert("F"),
    }
    if mode in deep:
        return deep[mode], grey
    if mode == "1":
        bilevel = src.convert("L").point(lambda v: 255 if v >= 128 else 0).convert("1")
        return bilevel, bilevel.convert("L").convert("RGB")
    if mode in ("L", "LA", "La"):
        out = src.convert("L").convert(mode) if mode != "La" else src.convert("LA").convert("La")
        return out, grey
    if mode in ("P", "PA"):
        p = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
        return (p if mode == "P" else p.convert("PA")), p.convert("RGB")
    return src.convert(mode), src


MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I;16", "I;16L", "I;16B", "I", "I (8-bit values)", "I (negative)", "F", "F (8-bit values)"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("draft", [None, 20])
def test_every_colour_mode_becomes_the_right_rgb(mode, draft):
    src = _scene()
    img, want = _make(mode, src)
    assert img.mode == mode.split(" ")[0]
    got = open_image(img, draft=draft)
    assert got.mode == "RGB"
    if draft is not None:  # shrunk by a whole factor (64 // 20 = 3) in the source mode, then converted
        assert got.size == (32, 22)
        want = want.reduce(3)
    assert got.size == want.size
    a, b = np.asarray(got), np.asarray(want)
    if mode == "I (negative)":  # stretched from its minimum to its maximum: the same picture, darker
        assert np.corrcoef(a[..., 0].ravel(), b[..., 0].ravel())[0, 1] > 0.999
    else:
        assert _diff(a, b) < 3.0, mode


@pytest.mark.parametrize("mode, fmt", [
    ("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("1", "PNG"), ("LA", "PNG"),
    ("P", "PNG"), ("P", "GIF"), ("RGBA", "PNG"), ("RGB", "WEBP"), ("CMYK", "TIFF"), ("CMYK", "JPEG"),
    ("YCbCr", "TIFF"), ("LAB", "TIFF"), ("L", "JPEG"),
])
def test_saved_colour_modes_become_the_right_rgb(mode, fmt):
    """The same through files as Pillow writes them (a 16-bit PNG used to come out blank white)."""
    src = _scene(240, 160)
    img, want = _make(mode, src)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    data = buf.getvalue()
    opened = Image.open(io.BytesIO(data))
    assert opened.mode in (mode, "I;16" if mode == "I;16B" else mode, "I" if mode == "I;16" else mode)
    got = open_image(data)
    tolerance = 8.0 if fmt in ("JPEG", "GIF") else 3.0
    assert _diff(np.asarray(got), np.asarray(want)) < tolerance, (mode, fmt)
    decoded, reason = load(data, PRE)
    assert reason == "" and _diff(decoded.pixels, prepare(want, PRE)) < tolerance


def test_sixteen_bit_greyscale_png_is_not_blank():
    g16 = _grey16(_scene()) // 4  # a dark 16-bit photo: every value over 255, all under a quarter
    buf = io.BytesIO()
    Image.fromarray(g16.astype(np.uint16)).save(buf, format="PNG")
    px = np.asarray(open_image(buf.getvalue()))
    assert 20 < px.mean() < 70 and px.max() < 70  # was 255 everywhere


def test_unsupported_mode_is_an_image_error(monkeypatch):
    img = _scene().convert("RGB")
    monkeypatch.setattr(img, "_mode", "XYZ", raising=False)
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: (_ for _ in ()).throw(ValueError("no")))
    with pytest.raises(ImageError, match="unsupported colour mode XYZ"):
        open_image(img)


# -- memory: shrink before converting, a bounded number of decodes at once -------------------
def test_big_photo_is_shrunk_in_its_own_mode_before_any_conversion(monkeypatch):
    big = png(3000, 2000, channels=4)  # 6 MP RGBA: a full-size RGBA -> RGBa -> RGB chain was 4 copies
    assert len(big) < 50_000
    sizes: list[tuple[int, int]] = []
    real_convert = Image.Image.convert

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(self.size)
        return real_convert(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", spy)
    img = open_image(big, draft=100)
    assert img.mode == "RGB" and img.size == (150, 100)  # factor 20
    assert sizes and max(w * h for w, h in sizes) <= 2_000_000  # strips, never the whole photo
    px = np.asarray(img)
    assert (px[10, 75] == 255).all() and _diff(px[50, 75], np.array([30, 60, 200])) < 2


def test_decodes_wait_for_a_free_slot(monkeypatch):
    import threading
    import time

    from lookalike.reading import images

    running, most = [0], [0]
    lock = threading.Lock()
    real = images._decode

    def slow(*args):  # type: ignore[no-untyped-def]
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return real(*args)

    monkeypatch.setattr(images, "_decode", slow)
    before = images.decode_slots()
    images.set_decode_slots(2)
    try:
        photo = _demo_photo().read_bytes()
        threads = [threading.Thread(target=open_image, args=(photo,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        images.set_decode_slots(before)
    assert most[0] == 2
    with pytest.raises(ValueError):
        images.set_decode_slots(0)


def test_each_bad_photo_raises_its_kind_of_image_error(tmp_path):
    """The kind of failure is the exception's type (the server maps types to statuses), never
    only its words; every kind is still an ImageError for callers that catch that."""
    photo = _demo_photo().read_bytes()
    (tmp_path / "text.jpg").write_text("hello")
    cases = [
        (tmp_path / "missing.jpg", ImageNotFoundError),
        (tmp_path / "text.jpg", NotAnImageError),
        (b"hello", NotAnImageError),
        (eps(), NotAnImageError),
        (pillow_file("PCX"), NotAnImageError),
        (b"GIF89a garbage", NotAnImageError),  # the plugin can't read the header: unrecognised
        (png(20_000, 20_000, rows=b""), ImageTooLargeError),  # past Pillow's own limit
        (png(10_000, 10_000, rows=b""), ImageTooLargeError),  # past ours
        (b"", ImageError),
        (photo[: len(photo) // 2], ImageError),
        (lying_jpeg(7000, 7000), ImageError),
        (cut_jpeg(photo, 0.3), ImageError),
        (b"\x89PNG\r\n\x1a\n garbage", ImageError),
        (tmp_path, ImageError),
    ]
    for source, kind in cases:
        with pytest.raises(ImageError) as err:
            open_image(source, draft=224)
        assert type(err.value) is kind, (source if isinstance(source, Path) else source[:16], err.value)
    with pytest.raises(ImageNotFoundError, match="^file not found$"):
        open_photo_file(tmp_path / "gone.jpg")


# -- bombs and damaged files --------------------------------------------------------------
def test_decompression_bomb_past_pillows_limit_is_image_too_large():
    bomb = png(20_000, 20_000, rows=b"")  # 400 MP claimed in 68 bytes: Pillow itself refuses it
    assert len(bomb) < 200
    for max_pixels in (DEFAULT_MAX_PIXELS, 10**12):  # whatever our own limit
        with pytest.raises(ImageError, match=r"^image too large: 400,000,000 pixels"):
            open_image(bomb, max_pixels=max_pixels)
    decoded, reason = load(bomb, PRE, max_pixels=10**12)
    assert decoded is None and reason.startswith("image too large")


def test_pillows_bomb_warning_as_an_error_is_image_too_large():
    import warnings

    bomb = png(10_000, 10_000, rows=b"")  # past Pillow's warning limit (89 MP), under its error limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="^image too large"):
            open_image(bomb, max_pixels=200_000_000)


def test_jpeg_claiming_more_pixels_than_its_data_is_corrupt():
    data = lying_jpeg(7000, 7000)  # decoded as a grey 7000x7000 picture, without an error, before
    assert len(data) < 1000
    with pytest.raises(ImageError, match="^truncated or corrupt image"):
        open_image(data, draft=224)
    decoded, reason = load(data, PRE)
    assert decoded is None and reason.startswith("truncated or corrupt image")


def test_jpeg_cut_short_with_an_end_marker_is_corrupt():
    photo = _demo_photo().read_bytes()
    with pytest.raises(ImageError, match="^truncated or corrupt image"):
        open_image(cut_jpeg(photo, 0.3))
    decoded, reason = load(cut_jpeg(photo, 0.3), PRE)
    assert decoded is None and reason.startswith("truncated or corrupt image")
    # whole photos are untouched, greyscale and progressive ones included
    gray = io.BytesIO()
    Image.open(_demo_photo()).convert("L").save(gray, format="JPEG", progressive=True)
    for data in (photo, gray.getvalue()):
        assert load(data, PRE)[1] == ""


# -- photo files as the server hands them out ---------------------------------------------
def test_open_photo_file_refuses_what_was_swapped_in(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    photo = root / "a.jpg"
    photo.write_bytes(_demo_photo().read_bytes())
    with open_photo_file(photo, root=root) as f:
        assert sniff_image_type(f.read(16)) == "image/jpeg"
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\n secret")
    cases = {}
    cases["outside"] = outside
    link = root / "link.jpg"
    link.symlink_to(outside)
    cases["link"] = link
    (root / "folder.jpg").mkdir()
    cases["folder"] = root / "folder.jpg"
    os.mkfifo(root / "fifo.jpg")
    cases["fifo"] = root / "fifo.jpg"
    cases["missing"] = root / "gone.jpg"
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "b.jpg").write_bytes(b"x")
    (root / "sub").symlink_to(tmp_path / "real")
    cases["link on the way"] = root / "sub" / "b.jpg"
    for what, path in cases.items():
        with pytest.raises(ImageError) as err:
            open_photo_file(path, root=root)
        assert str(tmp_path) not in str(err.value), what
    with pytest.raises(ImageError, match="file not found"):
        open_photo_file(root / "gone.jpg", root=root)
    # without a root (an index built with allow_outside_images), only links are refused
    open_photo_file(outside).close()
    with pytest.raises(ImageError):
        open_photo_file(link)


@pytest.mark.parametrize("fmt, media", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("GIF", "image/gif"),
                                        ("WEBP", "image/webp"), ("TIFF", "image/tiff"), ("BMP", "image/bmp")])
def test_sniff_image_type(fmt, media):
    buf = io.BytesIO()
    _scene().save(buf, format=fmt)
    assert sniff_image_type(buf.getvalue()[:16]) == media
    assert sniff_image_type(b"<html><script>") is None



# -- only an allowlist of formats reaches Pillow ----------------------------------------------
@pytest.mark.parametrize("fmt", ["EPS", "PCX", "PPM"])
def test_formats_outside_the_allowlist_never_reach_pillow(fmt, tmp_path, monkeypatch):
    """EPS (Pillow runs Ghostscript to draw it) and other formats Pillow would open are "not an
    image", from bytes and from a file whatever its name, without Pillow seeing them."""
    data = eps() if fmt == "EPS" else pillow_file(fmt)
    with Image.open(io.BytesIO(data)) as img:  # a real file of its format: Pillow alone opens it
        assert img.format == fmt
    real_open, opened = Image.open, []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    (tmp_path / "photo.jpg").write_bytes(data)
    for source in (data, tmp_path / "photo.jpg"):
        with pytest.raises(ImageError, match=r"^not an image \(unrecognised file format\)$"):
            open_image(source, draft=224)
        decoded, reason = load(source, PRE)
        assert decoded is None and reason.startswith("not an image")
    assert opened == []


def test_pillow_tries_only_the_plugin_of_the_sniffed_format(tmp_path, monkeypatch):
    from lookalike.reading import images

    assert sorted(images._FORMAT_OF.values()) == sorted(ALLOWED_FORMATS)
    real_open, tried = Image.open, []

    def spy(fp, mode="r", formats=None):  # type: ignore[no-untyped-def]
        tried.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    for fmt in ALLOWED_FORMATS:
        buf = io.BytesIO()
        _scene().save(buf, format=fmt)
        (tmp_path / f"photo.{fmt}").write_bytes(buf.getvalue())
        assert open_image(buf.getvalue()).size == open_image(tmp_path / f"photo.{fmt}").size == _scene().size
    assert tried == [(fmt,) for fmt in ALLOWED_FORMATS for _ in range(2)]

def test_memory_is_given_back_after_big_decodes_only(monkeypatch):
    from lookalike.reading import images

    calls = []
    monkeypatch.setattr(images, "_give_memory_back", lambda: calls.append(1))
    open_image(_demo_photo())
    assert calls == []
    open_image(png(2500, 2000), draft=100)  # 5 MP: over TRIM_AFTER_PIXELS
    assert calls == [1]
    monkeypatch.undo()
    images._give_memory_back()  # malloc_trim where glibc has it, nothing elsewhere; never raises


# -- trimming the studio background (issue 12: the same P@5 from a 256-px input) -------------------
def _studio(w: int, h: int, box: tuple[int, int, int, int], colour=(200, 30, 40), bg=(250, 250, 250)) -> Image.Image:
    img = Image.new("RGB", (w, h), bg)
    img.paste(Image.new("RGB", (box[2] - box[0], box[3] - box[1]), colour), box[:2])
    return img


def test_trim_cuts_to_the_product_and_its_margin():
    from lookalike.reading.images import TRIM_MARGIN, trim_background

    img = _studio(300, 400, (100, 150, 200, 300))
    out = trim_background(img)
    dx, dy = int(100 * TRIM_MARGIN), int(150 * TRIM_MARGIN)
    assert out.size == (100 + 2 * dx, 150 + 2 * dy)
    arr = np.asarray(out)
    assert (arr[dy:-dy, dx:-dx] == (200, 30, 40)).all() and (arr[:dy] == 250).all()


def test_trim_leaves_photos_without_a_product_to_cut_as_they_are():
    from lookalike.reading.images import trim_background

    for img in (Image.new("RGB", (300, 400), (255, 255, 255)),  # nothing but background
                _studio(300, 400, (140, 190, 150, 200)),  # too little product to trust (< 3%)
                _studio(300, 400, (0, 0, 300, 400)),  # product fills the frame
                _studio(12, 12, (3, 3, 9, 9))):  # too small to judge
        assert trim_background(img) is img


def test_trimmed_real_photos_keep_their_product(fullres_dir):
    """On real studio photos the cut keeps every product pixel and drops background."""
    from lookalike.reading.images import _background, trim_background

    for path in sorted((fullres_dir / "images").glob("*.jpg"))[:20]:
        img = open_image(path, draft=180)
        out = trim_background(img)
        _, fg = _background(np.asarray(img, dtype=np.int16))
        assert out.size[0] * out.size[1] <= img.size[0] * img.size[1]
        assert np.count_nonzero(_background(np.asarray(out, dtype=np.int16))[1]) >= 0.95 * np.count_nonzero(fg)


def test_prepare_trims_only_when_asked():
    img = _studio(300, 400, (100, 150, 200, 300))
    whole = prepare(img, Preprocess(size=64, resize="pad"))
    trimmed = prepare(img, Preprocess(size=64, resize="pad", trim=True))
    red = lambda a: np.count_nonzero((a[..., 0] > 150) & (a[..., 1] < 100))  # noqa: E731
    assert red(trimmed) > 2 * red(whole)
