"""Encoders: shapes per pooling, determinism, ONNX vs eager PyTorch, ResNet50 weight loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import (
    DEFAULT_MODEL,
    DEFAULT_POOLING,
    MODELS,
    POOLINGS,
    Encoder,
    ImageError,
    ModelError,
    demo_catalog,
    get_encoder,
)
from lookalike.reading.images import open_image, prepare

DEMO_IMAGES = demo_catalog().parent / "images"
PHOTOS = sorted(DEMO_IMAGES.glob("*.jpg"))[:4]
#: EfficientNet-Lite0's last map is 1280 x 8 x 8 at its default 256-px input
DIMS = {"gem": 1280, "avg": 1280, "max": 1280, "none": 1280 * 8 * 8, "grid2": 4 * 1280}


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    """Elementwise agreement within ``rel`` of the largest magnitude."""
    scale = max(float(np.abs(b).max()), 1e-6)
    return float(np.abs(a - b).max()) <= rel * scale


@pytest.fixture(scope="module")
def onnx_vectors(encoder) -> np.ndarray:
    return encoder.encode(PHOTOS)


# -- the default model --------------------------------------------------------------------
def test_encoder_contract(encoder, onnx_vectors):
    assert isinstance(encoder, Encoder)
    assert (encoder.name, encoder.pooling) == (DEFAULT_MODEL, DEFAULT_POOLING)
    assert encoder.dim == DIMS[encoder.pooling]
    assert encoder.preprocess.size == 256 and encoder.grid == 8
    assert encoder.preprocess.trim and encoder.preprocess.resize == "pad"
    assert onnx_vectors.shape == (len(PHOTOS), encoder.dim) and onnx_vectors.dtype == np.float32
    assert np.isfinite(onnx_vectors).all()
    assert len({v.tobytes() for v in onnx_vectors}) == len(PHOTOS)  # different photos, different vectors


@pytest.mark.parametrize("pooling", sorted(DIMS))
def test_pooling_shapes(pooling):
    if pooling not in POOLINGS:
        pytest.skip(f"{pooling} pooling is not offered")
    enc = get_encoder(pooling=pooling)
    assert enc.dim == DIMS[pooling]
    out = enc.encode(PHOTOS[:2])
    assert out.shape == (2, DIMS[pooling]) and out.dtype == np.float32 and np.isfinite(out).all()
    assert set(POOLINGS) <= set(DIMS)  # a new pooling needs its dimension here


def test_pooling_relations(encoder):
    """avg <= gem <= max per channel on the same map (GeM lies between the two)."""
    encs = {p: get_encoder(pooling=p) for p in ("avg", "gem", "max", "none")}
    v = {p: e.encode(PHOTOS[:2]) for p, e in encs.items()}
    assert np.all(v["gem"] >= v["avg"] - 1e-3) and np.all(v["gem"] <= v["max"] + 1e-3)
    fmap = v["none"].reshape(2, encoder.grid, encoder.grid, 1280)  # channels-last flattening, as the reference
    assert np.allclose(fmap.mean(axis=(1, 2)), v["avg"], atol=1e-4)
    assert np.allclose(fmap.max(axis=(1, 2)), v["max"], atol=1e-5)


@pytest.mark.parametrize(("size", "grid"), [(224, 7), (320, 10)])
def test_input_size_sets_map_and_export(size, grid, onnx_vectors):
    """Other input sides work: the map is size / 32 wide, and each side has its own export."""
    enc = get_encoder(pooling="none", size=size)
    assert enc.preprocess.size == size and enc.grid == grid and enc.dim == 1280 * grid * grid
    assert f"-{size}-" in enc.onnx_path().name
    out = enc.encode(PHOTOS[:1])
    assert out.shape == (1, enc.dim) and np.isfinite(out).all()
    other = get_encoder(size=size).encode(PHOTOS[:1])
    assert not _close(other, onnx_vectors[:1], 1e-3)  # another input size, other vectors


@pytest.mark.parametrize("size", [0, 32, 200, 1056])
def test_input_size_out_of_range_is_a_model_error(size):
    with pytest.raises(ModelError, match="input size"):
        get_encoder(size=size)


def test_deterministic(encoder, onnx_vectors):
    assert np.array_equal(encoder.encode(PHOTOS), onnx_vectors)
    fresh = get_encoder()  # a new session over the cached export
    assert np.array_equal(fresh.encode(PHOTOS), onnx_vectors)


def test_single_image_equals_batch(encoder, onnx_vectors):
    one = encoder.encode(PHOTOS[1])
    assert one.shape == (1, encoder.dim)
    assert _close(one[0], onnx_vectors[1], 1e-4)
    by_ones = encoder.encode(PHOTOS, batch_size=1)
    assert _close(by_ones, onnx_vectors, 1e-4)


def test_sources_bytes_pil_and_prepared_pixels(encoder, onnx_vectors):
    path = PHOTOS[0]
    from_bytes = encoder.encode([path.read_bytes()])
    from_pil = encoder.encode(Image.open(path))
    from_str = encoder.encode(str(path))
    pixels = prepare(open_image(path, draft=encoder.preprocess.draft), encoder.preprocess)
    from_pixels = encoder.encode_pixels(pixels[None])
    for got in (from_bytes, from_pil, from_str, from_pixels):
        assert _close(got[0], onnx_vectors[0], 1e-4)


def test_normalize_and_empty(encoder):
    unit = encoder.encode(PHOTOS[:2], normalize_embeddings=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    empty = encoder.encode([])
    assert empty.shape == (0, encoder.dim) and empty.dtype == np.float32


def test_unreadable_photo_raises_image_error(encoder, tmp_path):
    (tmp_path / "x.jpg").write_text("not a photo")
    with pytest.raises(ImageError):
        encoder.encode([PHOTOS[0], tmp_path / "x.jpg"])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_onnx_and_torch_runtimes_agree(encoder, onnx_vectors):
    eager = get_encoder(runtime="torch")
    assert eager.precision == "fp32"
    out = eager.encode(PHOTOS)
    assert out.shape == onnx_vectors.shape and out.dtype == np.float32
    fp32 = get_encoder(precision="fp32")
    assert _close(fp32.encode(PHOTOS), out, 1e-3)  # the plain export computes what torch does
    # the default int8 export: the same vectors up to quantization noise (its P@5 on the
    # 2,906 set equals fp32's, docs/quality.md); each photo stays nearest its fp32 self
    assert encoder.precision == "int8" and "-int8-" in encoder.onnx_path().name
    assert fp32.onnx_path() != encoder.onnx_path()
    assert _cosines(onnx_vectors, out).min() > 0.9 and not _close(onnx_vectors, out, 1e-3)
    a = onnx_vectors / np.linalg.norm(onnx_vectors, axis=1, keepdims=True)
    b = out / np.linalg.norm(out, axis=1, keepdims=True)
    assert list((a @ b.T).argmax(axis=1)) == list(range(len(PHOTOS)))


def test_failed_quantization_is_one_model_error_and_leaves_no_file(tmp_path, monkeypatch):
    import onnxruntime.quantization as quantization

    def broken(*args, **kwargs):
        raise RuntimeError("calibration ran out of memory")

    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(quantization, "quantize_static", broken)
    enc = get_encoder(size=64)  # tiny input: the fp32 export is quick
    with pytest.raises(ModelError, match="could not quantize .*out of memory.*fp32"):
        enc.encode(PHOTOS[:1])
    left = sorted(p.name for p in (tmp_path / "cache" / "onnx").iterdir())
    assert left == [enc._onnx_path("fp32").name]  # the fp32 export stays, no int8 or temp file


def test_prepare_exports_once_without_a_session(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    enc = get_encoder(size=64, precision="fp32")
    path = enc.prepare()
    assert path == enc.onnx_path() and path.is_file() and enc._session is None

    def again(*args):
        raise AssertionError("exported twice")

    monkeypatch.setattr(enc, "_export", again)
    assert enc.prepare() == path
    assert enc.encode(PHOTOS[:1]).shape == (1, enc.dim)  # the session uses the prepared file
    assert get_encoder(runtime="torch").prepare() is None


def test_precision_choices():
    with pytest.raises(ModelError, match="int8, fp32"):
        get_encoder(precision="fp16")
    with pytest.raises(ModelError, match="fp32 only"):
        get_encoder(runtime="torch", precision="int8")
    assert get_encoder("resnet50", weights=PHOTOS[0]).precision == "fp32"  # quality unmeasured


def test_unknown_model_pooling_runtime_list_the_choices():
    with pytest.raises(ModelError) as err:
        get_encoder("vgg16")
    assert "vgg16" in str(err.value) and all(name in str(err.value) for name in MODELS)
    with pytest.raises(ModelError) as err:
        get_encoder(pooling="median")
    assert "median" in str(err.value) and all(p in str(err.value) for p in POOLINGS)
    with pytest.raises(ModelError, match="auto, onnx, openvino, torch"):
        get_encoder(runtime="tensorrt")


def test_missing_weights_file(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="weights file not found"):
        get_encoder(weights=tmp_path / "nope.pth")
    monkeypatch.setenv("LOOKALIKE_RESNET50_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(ModelError, match="weights file not found"):
        get_encoder("resnet50")


def test_cached_onnx_export_runs_without_importing_torch(encoder, tmp_path):
    encoder.encode(PHOTOS[:1])  # make sure the export is cached
    code = (
        "import sys, lookalike\n"
        "enc = lookalike.get_encoder()\n"
        f"v = enc.encode([{str(PHOTOS[0])!r}])\n"
        "assert v.shape == (1, enc.dim)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "LOOKALIKE_CACHE_DIR": os.environ["LOOKALIKE_CACHE_DIR"]}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# -- ResNet50 from a generated torchvision-format state dict ------------------------------
@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> Path:
    import torch

    from lookalike.encoders.models import ResNet50

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "resnet50-test.pth"
    torch.save(ResNet50().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet_torch_vectors(resnet_weights) -> np.ndarray:
    enc = get_encoder("resnet50", weights=resnet_weights, runtime="torch", pooling="gem")
    assert enc.dim == 2048
    return enc.encode(PHOTOS[:2])


def test_resnet50_torch(resnet_weights, resnet_torch_vectors):
    reference = get_encoder("resnet50", weights=resnet_weights, runtime="torch", pooling="none")
    assert reference.preprocess.size == 224 and reference.dim == 7 * 7 * 2048  # the recipe's 100,352-d
    assert resnet_torch_vectors.shape == (2, 2048) and resnet_torch_vectors.dtype == np.float32
    assert np.isfinite(resnet_torch_vectors).all()


def test_resnet50_onnx_matches_torch(resnet_weights, resnet_torch_vectors, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    enc = get_encoder("resnet50", weights=resnet_weights, pooling="gem")
    assert enc.precision == "fp32"
    out = enc.encode(PHOTOS[:2])
    assert out.shape == (2, 2048) and out.dtype == np.float32
    assert _close(out, resnet_torch_vectors, 1e-3)
    exported = enc.onnx_path()
    assert exported.is_file() and exported.is_relative_to(tmp_path / "cache")
    # other poolings share the export; the unpooled map is the reference's 7x7x2048
    assert get_encoder("resnet50", weights=resnet_weights, pooling="none").dim == 100352


def test_resnet50_weights_from_env_and_download_cache(resnet_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_RESNET50_WEIGHTS", str(resnet_weights))
    assert get_encoder("resnet50").weights_path == resnet_weights
    # a file already at the download target is used as is: nothing is fetched
    monkeypatch.delenv("LOOKALIKE_RESNET50_WEIGHTS")
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path))
    target = tmp_path / "weights" / MODELS["resnet50"].weights_url.rsplit("/", 1)[-1]
    target.parent.mkdir()
    os.link(resnet_weights, target)
    assert get_encoder("resnet50").weights_path == target


def test_resnet50_wrapped_state_dict_loads(resnet_weights, tmp_path):
    import torch

    state = torch.load(resnet_weights, weights_only=True)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pth")
    enc = get_encoder("resnet50", weights=tmp_path / "checkpoint.pth", runtime="torch")
    assert enc._torch_module() is not None


@pytest.fixture(scope="module")
def broken(resnet_weights) -> dict[str, Path]:
    """State dicts with a renamed and with a missing key (written once per module)."""
    import torch

    paths = {}
    for kind in ("renamed", "missing"):
        state = torch.load(resnet_weights, weights_only=True)
        if kind == "renamed":
            state["fc.weights"] = state.pop("fc.weight")
        else:
            del state["layer1.0.conv1.weight"]
        paths[kind] = resnet_weights.parent / f"{kind}.pth"
        torch.save(state, paths[kind])
    return paths


@pytest.mark.parametrize("kind", ["renamed", "missing"])
def test_resnet50_bad_state_dict_is_a_model_error(broken, kind):
    path = broken[kind]
    enc = get_encoder("resnet50", weights=path, runtime="torch")
    with pytest.raises(ModelError) as err:
        enc.encode(PHOTOS[:1])
    assert str(path) in str(err.value) and "ResNet50" in str(err.value)


@pytest.mark.parametrize("kind, key", [("renamed", "fc.weight"), ("missing", "layer1.0.conv1.weight")])
def test_resnet50_bad_state_dict_names_the_key(broken, kind, key):
    path = broken[kind]
    enc = get_encoder("resnet50", weights=path, runtime="torch")
    with pytest.raises(ModelError) as err:
        enc.encode(PHOTOS[:1])
    assert key in str(err.value)


def test_resnet50_not_a_state_dict(tmp_path):
    import torch

    (tmp_path / "garbage.pth").write_bytes(b"\x00not a torch file")
    with pytest.raises(ModelError, match="can't read ResNet50 weights"):
        get_encoder("resnet50", weights=tmp_path / "garbage.pth", runtime="torch").encode(PHOTOS[:1])
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ModelError, match="does not hold a state dict"):
        get_encoder("resnet50", weights=tmp_path / "list.pth", runtime="torch").encode(PHOTOS[:1])


def test_resnet50_bad_state_dict_through_onnx_is_a_model_error(broken, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    path = broken["renamed"]
    with pytest.raises(ModelError):
        get_encoder("resnet50", weights=path).encode(PHOTOS[:1])
    assert not list((tmp_path / "cache").rglob("*.onnx"))  # nothing half-exported left behind


def test_weights_are_named_by_content_not_by_install(encoder, tmp_path):
    """The manifest's weights key is the same for the same file installed anew (another mtime,
    another folder) and differs when the content does: a reinstall must not read as other weights."""
    from lookalike.encoders.cnn import _weights_key

    original = encoder.weights_path
    copy = tmp_path / original.name
    copy.write_bytes(original.read_bytes())
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    assert _weights_key(copy) == _weights_key(original)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert _weights_key(copy) != _weights_key(original)
