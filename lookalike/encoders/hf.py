"""Hugging Face models: ``--model hf:DIR``, a local folder of a CLIP, SigLIP or DINOv2-family model.

The folder (what ``save_pretrained`` or ``huggingface-cli download --local-dir`` writes:
``config.json``, the weights, ``preprocessor_config.json`` and, with a text tower, the
tokenizer) is read from disk only, never from the network, with ``transformers`` (the ``hf``
extra). Once per content it is exported to ONNX in ``cache_dir()/models/hf-<key>/``:

    image.onnx       the image tower: normalised ``(n, 3, s, s)`` pixels -> ``(n, d)`` embeddings
    image-int8.onnx  the same, weights quantized to int8 (made on first use of ``precision="int8"``)
    text.onnx        the text tower (CLIP, SigLIP): ``(1, tokens)`` ids -> ``(1, d)`` embeddings
    tokenizer.json   the folder's tokenizer, with the model's truncation (and SigLIP's padding)
    record.json      family, input size, mean and std, dimensions, where it came from

``key`` is the first 12 hex digits of the SHA-1 of the folder's config, preprocessing,
tokenizer and weights files (and :data:`EXPORT_REVISION`). The model is named ``hf:<key>``: that
name in a manifest makes the same encoder (queries, live changes, the server, Ray actors)
wherever the folder went, without transformers or torch (ONNX Runtime and ``tokenizers`` run it).

What each family's tower gives: CLIP the projected image (text) embedding
(``visual_projection``/``text_projection`` of the pooled output), SigLIP the pooled output of its
attention-pooling head (text: of its last token, ids padded to the model's length as SigLIP was
trained), DINOv2 the layer-normed CLS token (no text tower).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lookalike.config import cache_dir
from lookalike.encoders.byo import _KEY, InstalledModel, OnnxConfig, OnnxFileEncoder, _first_line, read_json_object
from lookalike.encoders.cnn import MAX_SIZE, MIN_SIZE, model_file_sha1
from lookalike.errors import InvalidQueryError, MissingDependencyError, ModelError, NoTextTowerError

logger = logging.getLogger(__name__)

__all__ = ["PREFIX", "FAMILIES", "HfModel", "HfEncoder", "is_hf_model", "install", "installed", "resolve",
           "payload", "install_payload", "EXPORT_REVISION", "MAX_TEXT_CHARS"]

PREFIX = "hf:"
#: config.json's ``model_type`` -> whether the family has a text tower
FAMILIES = {"clip": True, "siglip": True, "dinov2": False, "dinov2_with_registers": False}
#: bump when the exported graphs change: another key, so stale exports are never used
EXPORT_REVISION = 2
#: the longest text query (the tokenizer truncates to the model's length anyway)
MAX_TEXT_CHARS = 1000
_HASHED = ("config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
           "merges.txt", "spiece.model", "tokenizer.model", "vocab.txt", "special_tokens_map.json")
_WEIGHTS = (".safetensors", ".bin")
#: a tokenizer's vocabulary is in one of these (transformers makes an empty one without them)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")
_INSTALL_HINT = "pip install 'lookalike[hf]'"


def is_hf_model(name: str) -> bool:
    """Whether ``name`` names a Hugging Face model (``hf:...``)."""
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class HfModel:
    """An exported folder in the model cache."""

    key: str
    root: Path
    family: str
    input_size: int
    mean: tuple[float, float, float]  # 0-255 pixel units
    std: tuple[float, float, float]
    dim: int
    #: the text tower's settings (``max_length``), None when the model has none
    text: dict[str, Any] | None
    #: the folder it was exported from (its name), for people
    source: str
    #: why a family with a text tower has none here (no tokenizer in the folder), else ""
    no_text_reason: str = ""

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.key}"

    def image_path(self, precision: str = "fp32") -> Path:
        return self.root / ("image.onnx" if precision == "fp32" else f"image-{precision}.onnx")

    def as_onnx(self, precision: str = "fp32") -> InstalledModel:
        """The image tower as :class:`OnnxFileEncoder` runs a model of one's own."""
        config = OnnxConfig(input_size=self.input_size, mean=self.mean, std=self.std, output="embeds")
        return InstalledModel(key=self.key, path=self.image_path(precision), config=config, features=(self.dim,),
                              source=self.source, prefix=PREFIX)


def _models() -> Path:
    return cache_dir() / "models"


def installed(key: str) -> HfModel:
    """The model ``hf:<key>`` from this machine's model cache."""
    root = _models() / f"hf-{key}"
    try:
        r = json.loads((root / "record.json").read_text(encoding="utf-8"))
        model = HfModel(key=key, root=root, family=str(r["family"]), input_size=int(r["input_size"]),
                        mean=tuple(float(x) for x in r["mean"]),  # type: ignore[arg-type]  # three, as written
                        std=tuple(float(x) for x in r["std"]),  # type: ignore[arg-type]  # three, as written
                        dim=int(r["dim"]), text=r.get("text"), source=str(r.get("source", "")),
                        no_text_reason=str(r.get("no_text_reason", "")))
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"model {PREFIX}{key} is not in this machine's model cache ({_models()}); "
                         f"give the folder again: --model {PREFIX}DIR") from None
    if not model.image_path().is_file():
        raise ModelError(f"model {PREFIX}{key} is not in this machine's model cache ({model.image_path()} is "
                         f"missing); give the folder again: --model {PREFIX}DIR")
    return model


def folder_key(folder: Path) -> str:
    """The content key of a model folder: its config, preprocessing, tokenizer and weights files
    (hashed once per file and mtime a process: a ViT-B's weights take about a second)."""
    h = hashlib.sha1(f"hf-r{EXPORT_REVISION}".encode())
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.name in _HASHED or p.suffix in _WEIGHTS))
    for path in files:
        h.update(f"\0{path.name}\0{model_file_sha1(path)}".encode())
    return h.hexdigest()[:12]


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path, missing="an hf: model is a folder with config.json, its weights and "
                            "preprocessor_config.json (what save_pretrained writes)")


def _side(value: Any) -> int | None:
    """A square side from a preprocessor's ``size``/``crop_size`` (an int or a dict)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dict):
        if "height" in value and value.get("height") == value.get("width"):
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    return None


def read_preprocessing(folder: Path) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    """The input side and mean/std (0-255 units) from ``preprocessor_config.json``: the crop's
    side when the processor crops, else its resize side."""
    where = folder / "preprocessor_config.json"
    pre = _json(where)
    side = _side(pre.get("crop_size")) if pre.get("do_center_crop", "crop_size" in pre) else None
    side = side or _side(pre.get("size"))
    if side is None or not MIN_SIZE <= side <= MAX_SIZE:
        raise ModelError(f"{where}: no square input size from {MIN_SIZE} to {MAX_SIZE} px in size/crop_size "
                         f"({json.dumps(pre.get('crop_size', pre.get('size')))})")
    three = []
    for key in ("image_mean", "image_std"):
        value = pre.get(key)
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)):
            raise ModelError(f"{where}: {key} must be three numbers, not {json.dumps(value)}")
        three.append(tuple(float(v) * 255.0 for v in value))
    if min(three[1]) <= 0:
        raise ModelError(f"{where}: image_std must be positive")
    return side, three[0], three[1]  # type: ignore[return-value]  # three numbers each, checked above


def _family(folder: Path) -> str:
    where = folder / "config.json"
    kind = _json(where).get("model_type")
    if kind not in FAMILIES:
        raise ModelError(f"{where}: model_type {json.dumps(kind)} is not supported; an hf: model is one of "
                         f"{', '.join(FAMILIES)} (CLIP, SigLIP, DINOv2 families)")
    return str(kind)


def _check_folder(ref: str) -> Path:
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise ModelError(f"hf:{ref} is a file; an hf: model is a folder (config.json, weights, "
                         "preprocessor_config.json); an ONNX file is --model onnx:PATH")
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return _from_hub(ref)
    raise ModelError(f"hf:{ref}: no such folder")


def _from_hub(repo: str) -> Path:
    """A hub id the user named (``hf:org/name``, no such folder): the copy in the local Hugging
    Face cache, else one downloaded now when the hub can be reached; one :class:`ModelError`
    line otherwise. Nothing else in lookalike ever asks the hub."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise MissingDependencyError(f"hf:{repo} comes from the Hugging Face hub: {_INSTALL_HINT}") from exc
    try:
        return Path(huggingface_hub.snapshot_download(repo_id=repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache: ask the hub once
        pass
    try:
        got = Path(huggingface_hub.snapshot_download(repo_id=repo))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, refused: one line
        raise ModelError(f"hf:{repo}: no such folder, and the Hugging Face hub could not give it "
                         f"({type(exc).__name__}: {_first_line(exc)}); download it where it can be reached "
                         f"(huggingface-cli download {repo} --local-dir DIR) and give --model hf:DIR") from None
    logger.info("downloaded hf:%s from the Hugging Face hub into %s", repo, got)
    return got


def install(folder: str | os.PathLike) -> HfModel:
    """Export the model in ``folder`` to ONNX into the model cache (once per content): the model
    as installed. Needs ``transformers`` (the ``hf`` extra) the first time only."""
    ref = str(folder)
    folder = _check_folder(ref)
    source = folder.name if Path(ref).expanduser().is_dir() else ref  # a hub id: the repo it named
    family = _family(folder)
    size, mean, std = read_preprocessing(folder)
    key = folder_key(folder)
    root = _models() / f"hf-{key}"
    if (root / "record.json").is_file():
        return replace(installed(key), source=source)
    tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = _export_folder(folder, family, size, tmp)
        record.update({"family": family, "input_size": size, "mean": list(mean), "std": list(std),
                       "source": source, "revision": EXPORT_REVISION})
        (tmp / "record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        try:
            tmp.replace(root)
        except OSError:  # another process installed it meanwhile
            if not (root / "record.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s as %s%s in %s", folder, PREFIX, key, root)
    return replace(installed(key), source=source)


def _transformers() -> Any:
    try:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder: never ask the hub
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"hf: models are exported with transformers: {_INSTALL_HINT}") from exc
    return transformers


def _export_folder(folder: Path, family: str, size: int, out: Path) -> dict[str, Any]:
    """Load the folder's model with transformers and export its towers into ``out``: the
    record's ``dim`` and ``text`` (and why there is no text tower, where one was expected)."""
    transformers = _transformers()
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - missing or mismatched weights have many faces
        raise ModelError(f"can't load the model in {folder} with transformers: {_first_line(exc)}") from None
    from lookalike.encoders.models import HfImageTower

    _onnx_export(HfImageTower(model, family), (torch.zeros(1, 3, size, size),), out / "image.onnx", "pixels",
                 {0: "n"})
    dim = int(_run_image(out / "image.onnx", size).shape[1])
    record: dict[str, Any] = {"dim": dim, "text": None}
    if FAMILIES[family]:
        try:
            record["text"] = _export_text(folder, model, family, out, transformers)
        except ModelError as exc:
            logger.warning("%s: no text queries: %s", folder, exc)
            record["no_text_reason"] = str(exc)
    return record


def _export_text(folder: Path, model: Any, family: str, out: Path, transformers: Any) -> dict[str, Any]:
    """The text tower and the tokenizer (truncating, for SigLIP padding, to the model's length)."""
    import torch

    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelError(f"its tokenizer is not in the folder (none of {', '.join(_TOKENIZER_FILES)})")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - no or a broken tokenizer
        raise ModelError(f"its tokenizer can't be loaded ({_first_line(exc)})") from None
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None or not hasattr(backend, "save"):
        raise ModelError(f"its tokenizer ({type(tok).__name__}) has no tokenizers (fast) form to save")
    max_length = int(model.config.text_config.max_position_embeddings)
    backend.enable_truncation(max_length)
    if family == "siglip":
        if tok.pad_token_id is None:
            raise ModelError("its tokenizer has no pad token (SigLIP pads texts to the model's length)")
        backend.enable_padding(length=max_length, pad_id=int(tok.pad_token_id), pad_token=str(tok.pad_token))
    else:
        backend.no_padding()
    backend.save(str(out / "tokenizer.json"))
    ids = torch.tensor([backend.encode("a photo").ids], dtype=torch.int64)
    from lookalike.encoders.models import HfTextTower

    _onnx_export(HfTextTower(model, family), (ids,), out / "text.onnx", "input_ids", {0: "n", 1: "tokens"})
    return {"max_length": max_length}


def _onnx_export(module: Any, args: tuple, path: Path, input_name: str, axes: dict[int, str]) -> None:
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(path), input_names=[input_name], output_names=["embeds"],
                              dynamic_axes={input_name: axes, "embeds": {0: "n"}}, opset_version=17, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - an architecture the exporter can't trace
        raise ModelError(f"could not export {path.stem} tower to ONNX: {_first_line(exc)}") from None


def _session(path: Path, threads: int | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime is needed for hf: models: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_image(path: Path, size: int) -> np.ndarray:
    out = _session(path, 1).run(["embeds"], {"pixels": np.zeros((2, 3, size, size), np.float32)})[0]
    if out.ndim != 2:
        raise ModelError(f"the image tower gives {tuple(out.shape)}, not (n, d) embeddings")
    return np.asarray(out)


def resolve(ref: str) -> HfModel:
    """``hf:DIR`` (exported now, once) or ``hf:<key>`` (already in the cache) -> the model."""
    ref = ref[len(PREFIX):] if is_hf_model(ref) else ref
    if not ref:
        raise ModelError("hf: needs a folder: --model hf:DIR (a Hugging Face model saved on disk)")
    if Path(ref).expanduser().exists() or not _KEY.fullmatch(ref):
        return install(ref)
    return installed(ref)


def payload(model: HfModel) -> dict[str, bytes]:
    """The cached model's files, for a process on another machine (:func:`install_payload`);
    the int8 export is made there when asked for."""
    return {p.name: p.read_bytes() for p in sorted(model.root.iterdir())
            if p.is_file() and p.name != "image-int8.onnx" and not p.name.endswith(".tmp")}


def install_payload(name: str, files: dict[str, bytes]) -> HfModel:
    """Put ``hf:<key>`` (as :func:`payload` gave it) into this machine's model cache, unless it
    is there already."""
    key = name[len(PREFIX):]
    root = _models() / f"hf-{key}"
    if not (root / "record.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        for file, data in sorted(files.items(), key=lambda kv: kv[0] == "record.json"):  # the record last
            tmp = root / f"{file}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            tmp.replace(root / file)
    return installed(key)


class HfEncoder(OnnxFileEncoder):
    """A Hugging Face model's image tower run as a model of one's own (ONNX Runtime or
    OpenVINO, fp32 or int8 weights), with its text tower for :meth:`encode_text`."""

    def __init__(self, model: HfModel, *, pooling: str, runtime: str = "auto", resize: str, trim: bool,
                 size: int | None = None, precision: str | None = None, threads: int | None = None,
                 streams: int = 1) -> None:
        precision = precision or "fp32"
        if precision not in ("fp32", "int8"):
            raise ModelError(f"unknown precision {precision!r}; choose fp32 or int8")
        if precision == "int8" and not model.image_path("int8").is_file():
            _quantize(model.image_path("fp32"), model.image_path("int8"))  # once: the file is this encoder's weights
        super().__init__(model.as_onnx(precision), pooling=pooling, runtime=runtime, resize=resize, trim=trim,
                         size=size, precision=None, threads=threads, streams=streams)
        self.hf = model
        self.precision = precision
        self._text_session: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return super().__repr__().replace("OnnxFileEncoder(", "HfEncoder(", 1)

    @property
    def has_text(self) -> bool:
        """Whether the model has a text tower (text queries: :meth:`encode_text`)."""
        return self.hf.text is not None and (self.hf.root / "text.onnx").is_file()

    def _ensure_export(self) -> Path:
        path = self.hf.image_path(self.precision)
        if not path.is_file() and self.precision == "int8":
            _quantize(self.hf.image_path("fp32"), path)
        if not path.is_file():
            raise ModelError(f"{path} is gone from the model cache; give the folder again: --model {PREFIX}DIR")
        return path

    def is_prepared(self) -> bool:
        return self.hf.image_path(self.precision).is_file()

    def text_error(self) -> str:
        """Why this model takes no text queries ("" when it does)."""
        if self.has_text:
            return ""
        why = f" ({self.hf.no_text_reason})" if self.hf.no_text_reason else ""
        return (f"model {self.name} ({self.hf.family}, from {self.hf.source or 'a folder'}) has no text tower"
                f"{why}: text queries need a CLIP or SigLIP model")

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Texts -> float32 ``(n, d)`` text-tower embeddings (not normalised), in the space of
        the image tower's; :class:`NoTextTowerError` when the model has no text tower."""
        if not self.has_text:
            raise NoTextTowerError(self.text_error())
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise InvalidQueryError("a text query must be some words, not empty")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidQueryError(f"a text query is at most {MAX_TEXT_CHARS} characters, not {len(text):,}")
        session, tokenizer = self._text()
        out = [session.run(["embeds"], {"input_ids": np.asarray([tokenizer.encode(t).ids], np.int64)})[0][0]
               for t in texts]
        return np.ascontiguousarray(np.stack(out) if out else np.zeros((0, self.dim)), dtype=np.float32)

    def _text(self) -> tuple[Any, Any]:
        if self._text_session is None:
            with self._lock:
                if self._text_session is None:
                    try:
                        from tokenizers import Tokenizer
                    except ImportError as exc:
                        raise MissingDependencyError(f"text queries need tokenizers: {_INSTALL_HINT}") from exc
                    self._tokenizer = Tokenizer.from_file(str(self.hf.root / "tokenizer.json"))
                    self._text_session = _session(self.hf.root / "text.onnx", self.threads)
        return self._text_session, self._tokenizer


def _quantize(fp32: Path, path: Path) -> None:
    """int8 weights for the transformer's matrix products (dynamic quantization: activations
    are quantized per batch, so no calibration photos are needed)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise MissingDependencyError(f"int8 needs onnxruntime's quantization tools ({exc}); pip install onnx, "
                                     "or use precision fp32") from exc
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    prepared = path.with_name(f"{path.name}.{os.getpid()}.pre")
    logger.info("quantizing %s to int8 (once): %s", fp32.parent.name, path)
    try:
        # ONNX Runtime's graph optimisations first, as it advises (its symbolic shape inference
        # fails on these graphs, and dynamic quantization needs no shapes)
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
        tmp.replace(path)
    except Exception as exc:  # noqa: BLE001 - any quantizer failure is one clear error
        raise ModelError(f"could not quantize {fp32.parent.name} to int8 ({type(exc).__name__}: {exc}); "
                         "use precision fp32 (--precision fp32)") from exc
    finally:
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
