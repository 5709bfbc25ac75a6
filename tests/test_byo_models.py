"""Models of one's own (``--model onnx:PATH``): tiny torch CNNs exported here, EfficientNet-Lite0
through ``onnx:`` against the built-in model, an index's life after the file moved, clear errors."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lookalike import ModelError, Recommender, build, demo_catalog, get_encoder
from lookalike.analysis.evaluate import evaluate
from lookalike.cli import main
from lookalike.encoders import EncoderSettings, OnnxFileEncoder
from lookalike.writing.writer import Index

DEMO = demo_catalog()
DEMO_IMAGES = DEMO.parent / "images"
PHOTOS = sorted(DEMO_IMAGES.glob("*.jpg"))[:4]
TABLE = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
SIZE = 64
RGB = {"input_size": SIZE, "mean": [120.0, 110.0, 100.0], "std": [60.0, 61.0, 62.0]}


pytestmark = pytest.mark.usefixtures("restore_logging")  # main() configures logging (tests/conftest.py)


class TinyCNN(nn.Module):
    """Random weights; ``(n, 16, 15, 15)`` at 64 px, or ``(n, 24)`` vectors with ``vectors``."""

    def __init__(self, vectors: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 16, 3, 2), nn.ReLU())
        self.head = nn.Linear(16, 24) if vectors else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.body(x)
        return fmap if self.head is None else self.head(fmap.mean(dim=(2, 3)))


class NhwcBgr(nn.Module):
    """The same network taking BGR ``(n, h, w, 3)`` and giving an ``(n, h, w, c)`` map."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2).flip(1)).permute(0, 2, 3, 1)


class Rank3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)


def export(module: nn.Module, path: Path, config: dict | None, *, nhwc: bool = False, names: tuple = ("out",),
           short_json: bool = False) -> Path:
    shape = (1, SIZE, SIZE, 3) if nhwc else (1, 3, SIZE, SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), str(path), input_names=["x"], output_names=list(names),
                          dynamic_axes={"x": {0: "n"}, **{n: {0: "n"} for n in names}}, opset_version=17, dynamo=False)
    if config is not None:
        (path.with_suffix(".json") if short_json else path.with_name(path.name + ".json")).write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    bgr = {**RGB, "mean": RGB["mean"][::-1], "std": RGB["std"][::-1], "channels": "bgr", "layout": "nhwc"}
    return {
        "map": export(TinyCNN(), root / "map.onnx", RGB),
        "vectors": export(TinyCNN(vectors=True), root / "vectors.onnx", RGB, short_json=True),
        "nhwc_bgr": export(NhwcBgr(TinyCNN()), root / "nhwc.onnx", bgr, nhwc=True),
    }


# -- tiny models ------------------------------------------------------------------------------
def test_feature_map_is_pooled_with_the_index_pooling(tiny):
    for pooling, dim in (("gem", 16), ("avg", 16), ("grid2", 64), ("none", 16 * 15 * 15)):
        enc = get_encoder(f"onnx:{tiny['map']}", pooling=pooling, runtime="onnx")
        assert isinstance(enc, OnnxFileEncoder) and enc.name.startswith("onnx:") and len(enc.name) == 17
        vecs = enc.encode(PHOTOS, batch_size=3)
        assert vecs.shape == (len(PHOTOS), dim) and vecs.dtype == np.float32 and np.isfinite(vecs).all()
        assert enc.preprocess.size == SIZE and enc.dim == dim
    avg = get_encoder(f"onnx:{tiny['map']}", pooling="avg", runtime="onnx")
    pixels = np.stack([np.asarray(p) for p in map(_pixels(avg), PHOTOS)])
    x = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - torch.tensor(RGB["mean"]).view(1, 3, 1, 1)) \
        / torch.tensor(RGB["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = TinyCNN()(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(avg.encode_pixels(pixels), expected, rtol=1e-4, atol=1e-5)


def _pixels(enc):
    from lookalike.reading.images import model_input

    return lambda p: model_input(p, enc.preprocess)


def test_vector_output_is_used_as_is_and_model_json_is_read(tiny):
    enc = get_encoder(f"onnx:{tiny['vectors']}", pooling="grid2", runtime="onnx")  # pooling has nothing to pool
    vecs = enc.encode(PHOTOS, normalize_embeddings=True)
    assert vecs.shape == (len(PHOTOS), 24) and enc.dim == 24
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


def test_nhwc_bgr_model_gives_the_rgb_nchw_model_vectors(tiny):
    plain = get_encoder(f"onnx:{tiny['map']}", pooling="grid2", runtime="onnx")
    flipped = get_encoder(f"onnx:{tiny['nhwc_bgr']}", pooling="grid2", runtime="onnx")
    assert plain.name != flipped.name
    np.testing.assert_allclose(flipped.encode(PHOTOS), plain.encode(PHOTOS), rtol=1e-4, atol=1e-5)


def test_openvino_runs_the_same_model(tiny):
    pytest.importorskip("openvino")
    for key in ("map", "nhwc_bgr"):
        ref = get_encoder(f"onnx:{tiny[key]}", runtime="onnx").encode(PHOTOS)
        ov = get_encoder(f"onnx:{tiny[key]}", runtime="openvino").encode(PHOTOS)
        np.testing.assert_allclose(ov, ref, rtol=1e-3, atol=1e-4)


def test_settings_make_the_same_encoder_from_the_cache(tiny, tmp_path):
    moved = tmp_path / "elsewhere.onnx"
    shutil.copy(tiny["map"], moved)
    shutil.copy(tiny["map"].with_name("map.onnx.json"), tmp_path / "elsewhere.onnx.json")
    enc = get_encoder(f"onnx:{moved}", runtime="onnx")
    moved.unlink()
    settings = EncoderSettings.of(enc)
    assert settings.model == enc.name and settings.weights is None
    again = settings.make(threads=1)
    np.testing.assert_array_equal(again.encode(PHOTOS[:2]), enc.encode(PHOTOS[:2]))
    assert enc.weights_id == f"elsewhere.onnx#{enc.name[5:]}" and again.weights_id.endswith(enc.name[5:])


def test_a_changed_file_or_json_is_another_model(tiny, tmp_path):
    path = export(TinyCNN(), tmp_path / "m.onnx", RGB)
    first = get_encoder(f"onnx:{path}").name
    (tmp_path / "m.onnx.json").write_text(json.dumps({**RGB, "mean": [0, 0, 0]}))
    second = get_encoder(f"onnx:{path}").name
    export(TinyCNN(vectors=True), path, None)
    third = get_encoder(f"onnx:{path}").name
    assert len({first, second, third}) == 3


# -- errors: one clear line --------------------------------------------------------------------
@pytest.mark.parametrize("change, words", [
    ({"input_size": "224"}, "input_size must be a whole number of pixels from 64 to 1024"),
    ({"input_size": 32}, "input_size must be"),
    ({"mean": [1, 2]}, "mean must be three numbers"),
    ({"std": [1, 0, 1]}, "std must be three positive numbers"),
    ({"channels": "rgba"}, "channels must be 'rgb' or 'bgr', not \"rgba\""),
    ({"layout": "chw"}, "layout must be 'nchw' or 'nhwc'"),
    ({"output": 3}, "output must be the name of one of the model's outputs"),
    ({"output": "nope"}, "output 'nope' is not one of the model's outputs (out)"),
    ({"colour": "rgb"}, "unknown key 'colour'; allowed: input_size, mean, std, channels, layout, output"),
    ({"std": None}, "std must be three positive numbers"),
])
def test_bad_json_is_one_clear_line(tiny, tmp_path, change, words):
    path = tmp_path / "m.onnx"
    shutil.copy(tiny["map"], path)
    (tmp_path / "m.onnx.json").write_text(json.dumps({**RGB, **change}))
    with pytest.raises(ModelError, match="m.onnx.json: " if "output '" not in words else "m.onnx: ") as err:
        get_encoder(f"onnx:{path}")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_or_broken_json_missing_key_and_file(tiny, tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(tiny["map"], path)
    with pytest.raises(ModelError, match=r"m\.onnx\.json not found: an onnx: model needs its preprocessing"):
        get_encoder(f"onnx:{path}")
    (tmp_path / "m.onnx.json").write_text("{input_size: 64")
    with pytest.raises(ModelError, match="is not valid JSON"):
        get_encoder(f"onnx:{path}")
    (tmp_path / "m.onnx.json").write_text(json.dumps({"input_size": 64, "mean": [0, 0, 0]}))
    with pytest.raises(ModelError, match="std is missing"):
        get_encoder(f"onnx:{path}")
    with pytest.raises(ModelError, match="ONNX model not found"):
        get_encoder(f"onnx:{tmp_path / 'absent.onnx'}")
    with pytest.raises(ModelError, match="is not in this machine's model cache"):
        get_encoder("onnx:0123456789ab")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "junk.onnx.json").write_text(json.dumps(RGB))
    with pytest.raises(ModelError, match="is not an ONNX model ONNX Runtime can load"):
        get_encoder(f"onnx:{tmp_path / 'junk.onnx'}")


def test_wrong_output_rank_and_wrong_settings(tiny, tmp_path):
    path = export(Rank3(), tmp_path / "r3.onnx", RGB)
    with pytest.raises(ModelError, match=r"has shape \(2, 3, 4096\); an onnx: model must give \(n, d\) vectors"):
        get_encoder(f"onnx:{path}")
    with pytest.raises(ModelError, match="takes 64-px photos"):
        get_encoder(f"onnx:{tiny['map']}", size=128)
    with pytest.raises(ModelError, match="runs as given"):
        get_encoder(f"onnx:{tiny['map']}", precision="int8")
    with pytest.raises(ModelError, match="ONNX Runtime or OpenVINO"):
        get_encoder(f"onnx:{tiny['map']}", runtime="torch")
    with pytest.raises(ModelError, match="its own weights"):
        get_encoder(f"onnx:{tiny['map']}", weights=tiny["map"])


# -- an index built with one, after the file moved -----------------------------------------------
def test_build_similar_add_reload_after_the_file_is_gone(tiny, tmp_path):
    path = tmp_path / "mine.onnx"
    shutil.copy(tiny["map"], path)
    shutil.copy(tiny["map"].with_name("map.onnx.json"), tmp_path / "mine.onnx.json")
    rows = TABLE.iloc[:12]
    build(rows, tmp_path / "idx", images=DEMO_IMAGES, model=f"onnx:{path}", pooling="gem", projection_dim=0,
          workers=1, show_progress_bar=False)
    path.unlink()
    (tmp_path / "mine.onnx.json").unlink()
    rec = Recommender.load(tmp_path / "idx")
    name = rec.settings.model.name
    assert name.startswith("onnx:") and rec.settings.model.weights == f"mine.onnx#{name[5:]}"
    pid = rows["ProductId"].iloc[0]
    by_photo = rec.similar(image=DEMO_IMAGES / rows["Image"].iloc[0], k=3)
    # the query photo goes through the encoder rebuilt from the cache: the product's own photo is itself
    assert by_photo.ids[0] == pid and by_photo.items[0].score > 0.999
    new = TABLE.iloc[20].to_dict()
    report = Index(tmp_path / "idx").upsert([new], images=DEMO_IMAGES, show_progress_bar=False)
    assert report.applied == 1 and not report.problems, report.changes
    again = Recommender.load(tmp_path / "idx")
    assert new["ProductId"] in again and len(again) == 13
    assert again.settings.model.name == name
    added = again.similar(image=DEMO_IMAGES / new["Image"], k=1)
    assert added.ids == [new["ProductId"]] and added.items[0].score > 0.999
    stored = again.similar(new["ProductId"], k=3)
    assert len(stored.ids) == 3


def test_cli_build_and_info_name_the_model(tiny, tmp_path, capsys):
    cat = tmp_path / "cat.csv"
    TABLE.iloc[:8].to_csv(cat, index=False)
    code = main(["build", str(cat), "--images", str(DEMO_IMAGES), "--out", str(tmp_path / "idx"),
                 "--model", f"onnx:{tiny['vectors']}", "--projection-dim", "0", "--runtime", "onnx"])
    assert code == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "idx")]) == 0
    out = capsys.readouterr().out
    model_line = next(line for line in out.splitlines() if line.startswith("model"))
    assert "onnx:" in model_line and "vectors.json" not in model_line and "vectors.onnx#" in model_line
    code = main(["build", str(cat), "--images", str(DEMO_IMAGES), "--out", str(tmp_path / "bad"),
                 "--model", f"onnx:{tmp_path / 'nope.onnx'}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ONNX model not found" in err


# -- EfficientNet-Lite0 through onnx: is the built-in model ---------------------------------------
@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory) -> Path:
    builtin = get_encoder(precision="fp32", runtime="onnx")
    src = builtin.export()  # the fp32 export the built-in model runs (CNNEncoder._onnx_path("fp32"))
    path = tmp_path_factory.mktemp("lite0") / "lite0.onnx"
    shutil.copy(src, path)
    spec = builtin.spec
    (path.parent / "lite0.onnx.json").write_text(json.dumps(
        {"input_size": builtin.preprocess.size, "mean": list(spec.mean), "std": list(spec.std), "channels": "rgb",
         "layout": "nchw", "output": "features"}))
    return path


def test_lite0_through_onnx_gives_the_builtin_vectors(lite0_file):
    builtin = get_encoder(precision="fp32", runtime="onnx")
    mine = get_encoder(f"onnx:{lite0_file}", runtime="onnx")
    assert mine.dim == builtin.dim and mine.preprocess == builtin.preprocess
    a, b = mine.encode(PHOTOS, normalize_embeddings=True), builtin.encode(PHOTOS, normalize_embeddings=True)
    assert float(np.abs(a - b).max()) < 1e-5


def test_lite0_through_onnx_scores_the_builtin_p_at_5(lite0_file, tmp_path):
    scores = {}
    for label, model in (("builtin", "efficientnet-lite0"), ("onnx", f"onnx:{lite0_file}")):
        build(DEMO, tmp_path / label, images=DEMO_IMAGES, model=model, precision="fp32", runtime="onnx",
              show_progress_bar=False)
        scores[label] = evaluate(Recommender.load(tmp_path / label), ["ProductType"], k=5, same="Gender",
                                 show_progress_bar=False)["p@5_ProductType"]
    assert scores["builtin"] > 0.3
    assert abs(scores["onnx"] - scores["builtin"]) <= 0.005


def test_a_machine_without_the_model_gets_it_from_its_payload(tiny, tmp_path, monkeypatch):
    from lookalike.encoders.byo import install_payload, payload

    enc = get_encoder(f"onnx:{tiny['map']}", runtime="onnx")
    shipped = payload(enc.model)
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "other-machine"))
    with pytest.raises(ModelError, match="not in this machine's model cache"):
        EncoderSettings.of(enc).make()
    install_payload(enc.name, *shipped)
    np.testing.assert_array_equal(EncoderSettings.of(enc).make().encode(PHOTOS[:2]), enc.encode(PHOTOS[:2]))


@pytest.mark.slow
def test_ray_engine_builds_the_local_index_with_an_onnx_model(tiny, tmp_path):
    pytest.importorskip("ray")
    rows = TABLE.iloc[:10]
    same = {"images": DEMO_IMAGES, "model": f"onnx:{tiny['map']}", "pooling": "gem", "projection_dim": 0,
            "show_progress_bar": False}
    build(rows, tmp_path / "local", **same)
    build(rows, tmp_path / "ray", engine="ray", actors=1, **same)  # actors make the encoder from its name
    from lookalike.folder.store import Store

    local, ray = (Store(tmp_path / e).snapshot().dense()[0] for e in ("local", "ray"))
    np.testing.assert_allclose(ray, local, rtol=1e-4, atol=1e-5)


def test_server_searches_and_writes_with_an_onnx_model_whose_file_is_gone(tiny, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    path = tmp_path / "served.onnx"
    shutil.copy(tiny["vectors"], path)
    shutil.copy(tiny["vectors"].with_suffix(".json"), tmp_path / "served.json")  # the short name
    rows = TABLE.iloc[:10]
    build(rows, tmp_path / "idx", images=DEMO_IMAGES, model=f"onnx:{path}", projection_dim=0, show_progress_bar=False)
    path.unlink()
    token = "a-write-token-0123456789abcdef"
    new = TABLE.iloc[30]
    # a loaded recommender: create_app(path, write_token=...) asks for the index before loading it
    with TestClient(create_app(Recommender.load(tmp_path / "idx"), write_token=token)) as client:
        photo = (DEMO_IMAGES / new["Image"]).read_bytes()
        put = client.put(f"/products/{new['ProductId']}", headers={"Authorization": f"Bearer {token}"},
                         files={"image": ("p.jpg", photo, "image/jpeg")}, data={"Gender": new["Gender"]})
        assert put.status_code == 201, put.text
        found = client.post("/similar", files={"image": ("q.jpg", photo, "image/jpeg")}, params={"k": 1})
        assert found.status_code == 200, found.text
        assert [r["id"] for r in found.json()["results"]] == [new["ProductId"]]


def test_update_with_the_file_changed_at_its_path_embeds_every_photo_again(tmp_path):
    path = export(TinyCNN(), tmp_path / "m.onnx", RGB)
    rows = TABLE.iloc[:6]
    same = {"images": DEMO_IMAGES, "model": f"onnx:{path}", "pooling": "avg", "projection_dim": 0,
            "show_progress_bar": False}
    build(rows, tmp_path / "idx", **same)
    assert build(rows, tmp_path / "idx", update=True, **same).reused == 6  # the same model: nothing embedded
    first = Recommender.load(tmp_path / "idx").settings.model.name
    export(TinyCNN(vectors=True), path, None)  # another network at the same path
    assert build(rows, tmp_path / "idx", update=True, **same).reused == 0
    rec = Recommender.load(tmp_path / "idx")
    assert rec.settings.model.name != first and rec.settings.dim == 24
