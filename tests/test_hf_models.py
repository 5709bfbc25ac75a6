"""Hugging Face models (``--model hf:DIR``) and text queries: tiny randomly-initialised CLIP, SigLIP
and DINOv2 models made and saved here (with a tokenizer built in memory), exported to ONNX and
checked against transformers, indexes of real photos built and queried by photo and by words."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lookalike import MissingDependencyError, ModelError, Recommender, build, demo_catalog, get_encoder
from lookalike.cli import main
from lookalike.encoders import EncoderSettings, HfEncoder
from lookalike.reading.images import model_input

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("restore_logging")  # main() configures logging (tests/conftest.py)

DEMO = demo_catalog()
DEMO_IMAGES = DEMO.parent / "images"
TABLE = pd.read_csv(DEMO, dtype=str, keep_default_na=False)
PHOTOS = sorted(DEMO_IMAGES.glob("*.jpg"))[:5]
SIZE, TEXT_LEN = 64, 16
WORDS = "red blue black white green shoe shoes running dress shirt bag watch jeans top".split()
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def _tokenizer():
    """A word-level tokenizer over a few words, ``<s> words </s>``, with ``</s>`` the last id (as
    CLIP's end-of-text is, whose position pools the text)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    vocab["</s>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 2), ("</s>", vocab["</s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    return fast, len(vocab)


def _save(model, folder: Path, processor, tokenizer=None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Random tiny models saved as Hugging Face folders: clip, siglip, dino (no text tower)."""
    root = tmp_path_factory.mktemp("hf")
    tok, vocab = _tokenizer()
    text = {**TINY, "vocab_size": vocab, "max_position_embeddings": TEXT_LEN, "pad_token_id": 0}
    vision = {**TINY, "image_size": SIZE, "patch_size": 16}
    torch.manual_seed(0)
    clip = transformers.CLIPModel(transformers.CLIPConfig(
        text_config={**text, "eos_token_id": vocab - 1, "bos_token_id": 2}, vision_config=vision, projection_dim=24))
    siglip = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
    dino = transformers.Dinov2Model(transformers.Dinov2Config(**TINY, image_size=SIZE, patch_size=16))
    crop = {"size": {"shortest_edge": SIZE}, "crop_size": {"height": SIZE, "width": SIZE}}
    return {
        "clip": _save(clip, root / "clip", transformers.CLIPImageProcessor(**crop), tok),
        "siglip": _save(siglip, root / "siglip", transformers.SiglipImageProcessor(size={"height": SIZE, "width": SIZE}),
                        tok),
        "dino": _save(dino, root / "dino", transformers.BitImageProcessor(
            **crop, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
    }


def _torch_model(folder: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()


def _tensor(out):
    """transformers 5 returns model outputs from get_*_features, 4 tensors."""
    return out if torch.is_tensor(out) else out.pooler_output


def _torch_pixels(folder: Path, pixels: np.ndarray):
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    mean, std = (torch.tensor(pre[k]).view(1, 3, 1, 1) for k in ("image_mean", "image_std"))
    return (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def _torch_image(folder: Path, pixels: np.ndarray) -> np.ndarray:
    model, x = _torch_model(folder), _torch_pixels(folder, pixels)
    with torch.no_grad():
        out = model(pixel_values=x).pooler_output if not hasattr(model, "get_image_features") else \
            _tensor(model.get_image_features(pixel_values=x))
    return out.numpy()


def _torch_text(folder: Path, text: str) -> np.ndarray:
    model = _torch_model(folder)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    pad = {"padding": "max_length", "max_length": TEXT_LEN} if model.config.model_type == "siglip" else {}
    ids = tok([text], return_tensors="pt", **pad)["input_ids"]
    with torch.no_grad():
        return _tensor(model.get_text_features(input_ids=ids)).numpy()[0]


def _pixels(enc, photos=PHOTOS) -> np.ndarray:
    return np.stack([model_input(p, enc.preprocess) for p in photos])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- the export is the model ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["clip", "siglip", "dino"])
def test_onnx_export_gives_the_torch_models_vectors(tiny, family):
    enc = get_encoder(f"hf:{tiny[family]}", runtime="onnx")
    assert isinstance(enc, HfEncoder) and enc.name.startswith("hf:") and len(enc.name) == 15
    assert enc.preprocess.size == SIZE and enc.has_text == (family != "dino")
    pixels = _pixels(enc)
    np.testing.assert_allclose(enc.encode_pixels(pixels), _torch_image(tiny[family], pixels), rtol=1e-4, atol=1e-5)
    if enc.has_text:
        for text in ("red running shoes", "a green dress with a black bag and white jeans"):
            np.testing.assert_allclose(enc.encode_text(text)[0], _torch_text(tiny[family], text), rtol=1e-4, atol=1e-5)


def test_openvino_runs_the_same_image_tower(tiny):
    pytest.importorskip("openvino")
    ref = get_encoder(f"hf:{tiny['siglip']}", runtime="onnx").encode(PHOTOS)
    ov = get_encoder(f"hf:{tiny['siglip']}", runtime="openvino").encode(PHOTOS)
    np.testing.assert_allclose(ov, ref, rtol=1e-3, atol=1e-4)


def test_preprocessing_comes_from_the_folder(tiny):
    enc = get_encoder(f"hf:{tiny['dino']}")
    assert enc.model.config.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    assert enc.model.config.std == pytest.approx((0.229 * 255, 0.224 * 255, 0.225 * 255))
    assert get_encoder(f"hf:{tiny['siglip']}").model.config.mean == pytest.approx((127.5,) * 3)


def test_int8_weights_stay_close_to_fp32(tiny):
    fp32 = get_encoder(f"hf:{tiny['clip']}", runtime="onnx")
    int8 = get_encoder(f"hf:{tiny['clip']}", runtime="onnx", precision="int8")
    assert int8.onnx_path().name == "image-int8.onnx" and EncoderSettings.of(int8).precision == "int8"
    a, b = fp32.encode(PHOTOS, normalize_embeddings=True), int8.encode(PHOTOS, normalize_embeddings=True)
    assert float((a * b).sum(1).min()) > 0.98


def test_a_second_build_reuses_the_export_and_a_changed_folder_is_another_model(tiny, tmp_path, monkeypatch):
    import lookalike.encoders.hf as hf

    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    copy = shutil.copytree(tiny["clip"], tmp_path / "clip-copy")
    first = get_encoder(f"hf:{copy}")
    exported = first.onnx_path().stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(hf, "_export_folder", no_export)
    rows = TABLE.iloc[:6]
    for out in ("a", "b"):
        build(rows, tmp_path / out, images=DEMO_IMAGES, model=f"hf:{copy}", show_progress_bar=False)
    assert Recommender.load(tmp_path / "b").settings.model.name == first.name
    assert first.onnx_path().stat().st_mtime_ns == exported
    monkeypatch.undo()
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "image_mean": [0.5, 0.5, 0.5]}))
    assert get_encoder(f"hf:{copy}").name != first.name


def test_the_model_travels_by_payload_to_a_machine_without_it(tiny, tmp_path, monkeypatch):
    from lookalike.encoders.hf import install_payload, payload

    enc = get_encoder(f"hf:{tiny['siglip']}", runtime="onnx")
    shipped = payload(enc.hf)
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "other-machine"))
    with pytest.raises(ModelError, match="not in this machine's model cache"):
        EncoderSettings.of(enc).make()
    install_payload(enc.name, shipped)
    again = EncoderSettings.of(enc).make()
    np.testing.assert_array_equal(again.encode(PHOTOS[:2]), enc.encode(PHOTOS[:2]))
    np.testing.assert_array_equal(again.encode_text("blue shirt"), enc.encode_text("blue shirt"))


# -- an index of real photos, queried by photo and by words -----------------------------------
@pytest.fixture(scope="module")
def clip_index(tiny, tmp_path_factory, store_dir) -> Path:
    out = tmp_path_factory.mktemp("clip-index") / "index"
    build(store_dir / "catalog.csv", out, images=store_dir / "images", id_column="product_id",
          image_column="images", model=f"hf:{tiny['clip']}", show_progress_bar=False)
    return out


def _expected_text_scores(rec: Recommender, folder: Path, text: str) -> dict[str, float]:
    """Each product's score for ``text`` from the torch model's own vectors of its photos: the
    text-image cosine (through the index's projection when it has one), best photo."""
    pixels = np.stack([model_input(Path(p), rec.encoder.preprocess) for p in rec._data["_image"]])
    x, t = _unit(_torch_image(folder, pixels)), _unit(_torch_text(folder, text))
    if rec.projection is not None:
        x, t = _unit(rec.projection.apply(x)), _unit(_unit(t) @ rec.projection.components.T)
    best: dict[str, float] = {}
    for pid, score in zip(rec.ids, x @ t):
        best[pid] = max(best.get(pid, -2.0), float(score))
    return best


def test_text_query_ranks_photos_as_the_model_does(clip_index, tiny):
    rec = Recommender.load(clip_index)
    assert rec.supports_text and rec.projection is None and rec.multi_photo
    expected = _expected_text_scores(rec, tiny["clip"], "red running shoes")
    found = rec.similar(text="red running shoes", k=10)
    assert found.query["text"] == "red running shoes" and len(found.ids) == 10
    assert found.ids == sorted(expected, key=lambda p: (-expected[p], p))[:10]
    assert [r.score for r in found] == pytest.approx([expected[p] for p in found.ids], abs=1e-4)
    # the same words as steering takes them: a filter, and colour weight 0 whatever the index's
    kept = rec.similar(text="red running shoes", k=3, where=["platform=opencart"], colour_weight=0.5)
    assert kept.ids == [p for p in found.ids if rec.product(p)["platform"] == "opencart"][:3]


def test_text_query_through_a_projection(tiny, tmp_path):
    build(TABLE.iloc[:40], tmp_path / "idx", images=DEMO_IMAGES, model=f"hf:{tiny['siglip']}", projection_dim=8,
          show_progress_bar=False)
    rec = Recommender.load(tmp_path / "idx")
    assert rec.projection is not None and rec.settings.dim == 8 and rec.supports_text
    expected = _expected_text_scores(rec, tiny["siglip"], "black watch")
    found = rec.similar(text="black watch", k=5)
    assert found.ids == sorted(expected, key=lambda p: (-expected[p], p))[:5]
    assert [r.score for r in found] == pytest.approx([expected[p] for p in found.ids], abs=1e-3)


def test_photo_queries_and_cli_text_query(clip_index, tmp_path, capsys):
    rec = Recommender.load(clip_index)
    first = rec.ids[0]
    by_photo = rec.similar(image=rec.photo_paths(first)[0], k=2)
    assert by_photo.ids[0] == first and by_photo.items[0].score > 0.999
    assert main(["similar", str(clip_index), "--text", "blue bag", "-k", "3", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"]["text"] == "blue bag" and [r["id"] for r in out["results"]] == \
        rec.similar(text="blue bag", k=3).ids
    sheet = tmp_path / "sheet.png"
    assert main(["similar", str(clip_index), "--text", "blue bag", "-k", "2", "--sheet", str(sheet)]) == 0
    assert "query text: blue bag" in capsys.readouterr().out and sheet.stat().st_size > 1000


def test_a_model_without_a_text_tower_refuses_text_in_one_line(tiny, tmp_path, demo_index, capsys):
    build(TABLE.iloc[:8], tmp_path / "dino", images=DEMO_IMAGES, model=f"hf:{tiny['dino']}", show_progress_bar=False)
    for index, words in ((tmp_path / "dino", "(dinov2, from dino) has no text tower"),
                         (demo_index, "efficientnet-lite0 has no text tower")):
        rec = Recommender.load(index)
        assert not rec.supports_text
        with pytest.raises(ModelError, match=r"no text tower") as err:
            rec.similar(text="red shoes")
        assert words in str(err.value) and "\n" not in str(err.value)
        assert main(["similar", str(index), "--text", "red shoes"]) == 1
        err_lines = capsys.readouterr().err.strip().splitlines()
        assert len(err_lines) == 1 and "no text tower" in err_lines[0]


def test_server_answers_text_and_says_whether_it_can(clip_index, tiny, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    build(TABLE.iloc[:8], tmp_path / "dino", images=DEMO_IMAGES, model=f"hf:{tiny['dino']}", show_progress_bar=False)
    with TestClient(create_app(Recommender.load(clip_index))) as client:
        assert client.get("/health").json()["text_queries"] is True
        found = client.post("/similar", json={"text": "white shirt", "k": 4, "where": ["platform=opencart"]})
        assert found.status_code == 200, found.text
        expected = Recommender.load(clip_index).similar(text="white shirt", k=4, where=["platform=opencart"])
        assert [r["id"] for r in found.json()["results"]] == expected.ids
        both = client.post("/similar", json={"text": "white shirt", "ids": [expected.ids[0]]})
        assert both.status_code == 422 and "one of them" in both.json()["detail"]
        empty = client.post("/similar", json={"text": "  "})
        assert empty.status_code == 422
    with TestClient(create_app(Recommender.load(tmp_path / "dino"))) as client:
        assert client.get("/health").json()["text_queries"] is False
        refused = client.post("/similar", json={"text": "white shirt"})
        assert refused.status_code == 422 and "no text tower" in refused.json()["detail"]


# -- what is refused, in one line -------------------------------------------------------------
def test_folders_that_are_not_supported_models(tiny, tmp_path):
    cases = {}
    bert = shutil.copytree(tiny["dino"], tmp_path / "bert")
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases[f"hf:{bert}"] = 'model_type "bert" is not supported; an hf: model is one of clip, siglip, dinov2'
    bare = shutil.copytree(tiny["dino"], tmp_path / "bare")
    (bare / "preprocessor_config.json").unlink()
    cases[f"hf:{bare}"] = "preprocessor_config.json not found"
    broken = shutil.copytree(tiny["dino"], tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not weights")
    cases[f"hf:{broken}"] = "can't load the model in"
    cases[f"hf:{tmp_path / 'absent'}"] = "no such folder"
    cases["hf:"] = "hf: needs a folder"
    for name, words in cases.items():
        with pytest.raises(ModelError) as err:
            get_encoder(name)
        assert words in str(err.value) and "\n" not in str(err.value), (name, str(err.value))
    with pytest.raises(ModelError, match="weights are its folder's"):
        get_encoder(f"hf:{tiny['dino']}", weights=tiny["dino"] / "model.safetensors")


def test_missing_transformers_names_the_extra(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))  # nothing exported yet
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'lookalike\[hf\]'"):
        get_encoder(f"hf:{tiny['dino']}")


def test_a_clip_folder_without_its_tokenizer_searches_photos_only(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_CACHE_DIR", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny["clip"], tmp_path / "clip-no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    enc = get_encoder(f"hf:{folder}")
    assert not enc.has_text and enc.encode(PHOTOS[:1]).shape == (1, 24)
    with pytest.raises(ModelError, match=r"\(clip, from clip-no-tokenizer\) has no text tower \(its tokenizer is not in the folder"):
        enc.encode_text("red shoes")


@pytest.mark.slow
def test_ray_actors_make_the_hf_model_from_its_name(tiny, tmp_path):
    pytest.importorskip("ray")
    from lookalike.folder.store import Store

    rows = TABLE.iloc[:10]
    same = {"images": DEMO_IMAGES, "model": f"hf:{tiny['clip']}", "show_progress_bar": False}
    build(rows, tmp_path / "local", **same)
    build(rows, tmp_path / "ray", engine="ray", actors=1, **same)  # actors install the driver's export first
    local, ray = (Store(tmp_path / e).snapshot().dense()[0] for e in ("local", "ray"))
    np.testing.assert_allclose(ray, local, rtol=1e-4, atol=1e-5)


def test_the_page_searches_by_words_where_the_model_reads_them(clip_index, demo_index, monkeypatch):
    """The page offers "By words" only on an index whose model has a text tower, and lists what
    ``similar(text=...)`` gives, with the sidebar's filter applied."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    import lookalike.app as page

    def start(index: Path) -> AppTest:
        monkeypatch.setenv("LOOKALIKE_INDEX", str(index))
        at = AppTest.from_file(page.__file__, default_timeout=90)
        at.run()
        assert not at.exception, at.exception
        return at

    assert page.WORDS not in start(demo_index).radio(key="mode").options
    at = start(clip_index)
    assert page.WORDS in at.radio(key="mode").options
    at.radio(key="mode").set_value(page.WORDS).run()
    at.text_input(key="words").set_value("red running shoes").run()
    assert not at.exception, at.exception
    shown = [b.key.removeprefix("more_") for b in at.button if b.key and b.key.startswith("more_")]
    rec = Recommender.load(clip_index)
    k = int(at.slider(key="k").value)
    assert shown == rec.similar(text="red running shoes", k=k).ids and len(shown) == k
    assert any("red running shoes" in s.value for s in at.subheader)


def test_a_hub_id_comes_from_the_local_hub_cache_or_one_download_and_else_one_line(tiny, tmp_path, monkeypatch):
    """``hf:org/name`` (no such folder) asks huggingface_hub for the local cache's copy first, then
    for one download; offline it is one line. The hub is never reached here: snapshot_download
    is replaced by one that answers as the local cache or the network would."""
    hub = pytest.importorskip("huggingface_hub")
    asked: list[tuple[str, bool]] = []

    def cached(repo_id: str, local_files_only: bool = False, **_: object) -> str:
        asked.append((repo_id, local_files_only))
        return str(tiny["clip"])

    monkeypatch.setattr(hub, "snapshot_download", cached)
    enc = get_encoder("hf:someone/tiny-clip")
    assert asked == [("someone/tiny-clip", True)] and enc.name.startswith("hf:")  # from the cache: no download
    assert enc.name == get_encoder(f"hf:{tiny['clip']}").name  # the same files: the same model

    def downloaded(repo_id: str, local_files_only: bool = False, **_: object) -> str:
        asked.append((repo_id, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not in the local cache")
        return str(tiny["dino"])

    asked.clear()
    monkeypatch.setattr(hub, "snapshot_download", downloaded)
    assert get_encoder("hf:someone/tiny-dino").name == get_encoder(f"hf:{tiny['dino']}").name
    assert asked == [("someone/tiny-dino", True), ("someone/tiny-dino", False)]

    def offline(repo_id: str, local_files_only: bool = False, **_: object) -> str:
        raise OSError("[Errno 101] Network is unreachable\nmore lines")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(ModelError) as err:
        get_encoder("hf:openai/clip-vit-base-patch16")
    said = str(err.value)
    assert "\n" not in said and "Network is unreachable" in said
    assert "huggingface-cli download openai/clip-vit-base-patch16 --local-dir DIR" in said
