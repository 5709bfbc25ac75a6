"""Bring your own model: ``--model onnx:PATH``, an ONNX image embedder with its preprocessing in JSON.

The model at ``PATH`` comes with ``PATH.json`` beside it (``model.onnx.json``; ``model.json``
is read when that is absent)::

    {"input_size": 224, "mean": [123.7, 116.3, 103.5], "std": [58.4, 57.1, 57.4],
     "channels": "rgb", "layout": "nchw", "output": "features"}

``input_size`` (the square side in pixels), ``mean`` and ``std`` (per channel, 0-255 pixel
units, in the order of ``channels``) are required; ``channels`` (``rgb`` or ``bgr``, default
``rgb``), ``layout`` of the input and of a feature-map output (``nchw`` or ``nhwc``, default
``nchw``) and ``output`` (an output's name, default the first) are not. An ``(n, d)`` output
is the vector as it is; an ``(n, c, h, w)`` one (``(n, h, w, c)`` with ``nhwc``) is pooled with
the index's pooling.

The file is copied into ``cache_dir()/models/<key>.onnx`` (its validated settings and output
shape in ``<key>.onnx.json``), ``key`` being the first 12 hex digits of the SHA-1 of the model's
bytes and its settings. The model is named ``onnx:<key>``: that name in an index's manifest
makes the same encoder again (queries, live changes, the server) wherever the original file has
gone, and a file changed at the same path is another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.config import cache_dir
from lookalike.encoders.base import POOLINGS
from lookalike.encoders.cnn import MAX_SIZE, MIN_SIZE, CNNEncoder, ModelSpec
from lookalike.encoders.runtimes import Session, open_session
from lookalike.errors import MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

__all__ = ["PREFIX", "OnnxConfig", "InstalledModel", "OnnxFileEncoder", "read_config", "read_json_object", "install",
           "installed", "is_onnx_model", "resolve", "payload", "install_payload"]

#: a model name with this prefix is a model of one's own: ``onnx:PATH`` or, once installed, ``onnx:<key>``
PREFIX = "onnx:"
_KEY = re.compile(r"[0-9a-f]{12}")
_CHOICES = {"channels": ("rgb", "bgr"), "layout": ("nchw", "nhwc")}
_KEYS = ("input_size", "mean", "std", "channels", "layout", "output")


def is_onnx_model(name: str) -> bool:
    """Whether ``name`` names a model of one's own (``onnx:...``)."""
    return name.startswith(PREFIX)


@dataclass(frozen=True)
class OnnxConfig:
    """A model's preprocessing, as its JSON gives it (see the module docstring)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: str = "rgb"
    layout: str = "nchw"
    output: str | None = None


@dataclass(frozen=True)
class InstalledModel:
    """A model in the cache: its key, file, settings, output shape per photo and where it came from."""

    key: str
    path: Path
    config: OnnxConfig
    features: tuple[int, ...]  # (d,) or (c, h, w)
    #: the file name it was given by now (installed from a path), else when first installed
    source: str
    #: what its name starts with (``hf:`` for a Hugging Face model's exported image tower)
    prefix: str = PREFIX

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.key}"


def sidecar(path: Path) -> Path:
    """The JSON beside ``path``: ``model.onnx.json``, else ``model.json``."""
    first = path.with_name(path.name + ".json")
    return first if first.is_file() or not path.with_suffix(".json").is_file() else path.with_suffix(".json")


def _three(where: Path, key: str, value: Any, positive: bool) -> tuple[float, float, float]:
    ok = (isinstance(value, list) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value))
    if not ok or (positive and min(value) <= 0):
        raise ModelError(f"{where}: {key} must be three {'positive ' if positive else ''}numbers "
                         f"(0-255 pixel units), not {json.dumps(value)}")
    return float(value[0]), float(value[1]), float(value[2])


def read_json_object(where: Path, *, missing: str, holds: str = "") -> dict[str, Any]:
    """The one JSON object in the file ``where`` (a model's settings); a :class:`ModelError` line
    when it is absent (``missing`` says what should be there), not JSON or not one object."""
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{where} not found: {missing}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{where} must hold one JSON object{holds}")
    return raw


def read_config(where: Path) -> OnnxConfig:
    """The preprocessing in the JSON file ``where``; one :class:`ModelError` line naming the key
    and what it allows for anything else."""
    raw = read_json_object(where, missing="an onnx: model needs its preprocessing in a JSON file beside it "
                           "(keys input_size, mean, std; channels, layout, output optional)",
                           holds=f" with keys {', '.join(_KEYS)}")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ModelError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(_KEYS)}")
    for key in ("input_size", "mean", "std"):
        if key not in raw:
            raise ModelError(f"{where}: {key} is missing (required: input_size, mean, std)")
    size = raw["input_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ModelError(f"{where}: input_size must be a whole number of pixels from {MIN_SIZE} to {MAX_SIZE}, "
                         f"not {json.dumps(size)}")
    for key, allowed in _CHOICES.items():
        if key in raw and raw[key] not in allowed:
            raise ModelError(f"{where}: {key} must be {' or '.join(map(repr, allowed))}, not {json.dumps(raw[key])}")
    output = raw.get("output")
    if output is not None and (not isinstance(output, str) or not output):
        raise ModelError(f"{where}: output must be the name of one of the model's outputs, not {json.dumps(output)}")
    return OnnxConfig(input_size=size, mean=_three(where, "mean", raw["mean"], False),
                      std=_three(where, "std", raw["std"], True), channels=raw.get("channels", "rgb"),
                      layout=raw.get("layout", "nchw"), output=output)


def _probe(path: Path, config: OnnxConfig) -> tuple[int, ...]:
    """Run the model once on ONNX Runtime on a blank batch: the shape of one photo's output,
    ``(d,)`` or ``(c, h, w)``, checking its input and output are what the JSON says."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime is needed for onnx: models: pip install onnxruntime") from exc
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors for a file that is not a model vary
        raise ModelError(f"{path} is not an ONNX model ONNX Runtime can load: {_first_line(exc)}") from None
    inputs, outputs = session.get_inputs(), [o.name for o in session.get_outputs()]
    if len(inputs) != 1:
        raise ModelError(f"{path} takes {len(inputs)} inputs; an onnx: model takes one batch of photos")
    if config.output is not None and config.output not in outputs:
        raise ModelError(f"{path}: output {config.output!r} is not one of the model's outputs ({', '.join(outputs)})")
    s = config.input_size
    shape = (2, 3, s, s) if config.layout == "nchw" else (2, s, s, 3)
    try:
        out = session.run([config.output or outputs[0]], {inputs[0].name: np.zeros(shape, np.float32)})[0]
    except Exception as exc:  # noqa: BLE001 - a shape or type the model refuses
        raise ModelError(f"{path} did not run on a float32 {tuple(shape)} batch ({config.layout}, "
                         f"input_size {s}): {_first_line(exc)}") from None
    if out.ndim == 2:
        return (int(out.shape[1]),)
    if out.ndim == 4:
        c, h, w = out.shape[1:] if config.layout == "nchw" else (out.shape[3], out.shape[1], out.shape[2])
        return int(c), int(h), int(w)
    raise ModelError(f"{path}: output {config.output or outputs[0]!r} has shape {tuple(out.shape)}; an onnx: model "
                     f"must give (n, d) vectors or an (n, c, h, w) feature map ((n, h, w, c) with layout nhwc)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _models() -> Path:
    return cache_dir() / "models"


def installed(key: str) -> InstalledModel:
    """The model ``onnx:<key>`` from this machine's model cache."""
    path, meta = _models() / f"{key}.onnx", _models() / f"{key}.onnx.json"
    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
        config = OnnxConfig(**{**record["config"], "mean": tuple(record["config"]["mean"]),
                               "std": tuple(record["config"]["std"])})
        features = tuple(int(x) for x in record["features"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"model {PREFIX}{key} is not in this machine's model cache ({_models()}); "
                         f"give the file again: --model {PREFIX}PATH") from None
    if not path.is_file():
        raise ModelError(f"model {PREFIX}{key} is not in this machine's model cache ({path} is missing); "
                         f"give the file again: --model {PREFIX}PATH")
    return InstalledModel(key=key, path=path, config=config, features=features, source=str(record.get("source", "")))


def install(path: str | os.PathLike) -> InstalledModel:
    """Copy the model at ``path`` and its JSON into the model cache (once per content), checking
    both first; the model as installed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"ONNX model not found: {path}")
    config = read_config(sidecar(path))
    data = path.read_bytes()
    settings = json.dumps(asdict(config), sort_keys=True).encode()
    key = hashlib.sha1(data + b"\0" + settings).hexdigest()[:12]
    target, meta = _models() / f"{key}.onnx", _models() / f"{key}.onnx.json"
    if target.is_file() and meta.is_file():  # the same bytes and settings, maybe under another name
        return replace(installed(key), source=path.name)
    features = _probe(path, config)
    record = {"config": asdict(config), "features": list(features), "source": path.name,
              "sha1": hashlib.sha1(data).hexdigest()}
    _write(target, data, meta, json.dumps(record, indent=1).encode())
    logger.info("installed %s as %s%s in %s", path, PREFIX, key, target.parent)
    return replace(installed(key), source=path.name)


def payload(model: InstalledModel) -> tuple[bytes, bytes]:
    """The cached model and its record, for a process on another machine (:func:`install_payload`)."""
    return model.path.read_bytes(), model.path.with_name(model.path.name + ".json").read_bytes()


def install_payload(name: str, data: bytes, record: bytes) -> InstalledModel:
    """Put ``onnx:<key>`` (as :func:`payload` gave it) into this machine's model cache, unless
    it is there already: a Ray actor elsewhere makes the encoder from its name after this."""
    key = name[len(PREFIX):]
    target, meta = _models() / f"{key}.onnx", _models() / f"{key}.onnx.json"
    if not (target.is_file() and meta.is_file() and target.read_bytes() == data):
        _write(target, data, meta, record)
    return installed(key)


def _write(target: Path, data: bytes, meta: Path, record: bytes) -> None:
    """The model, then its record (what :func:`installed` looks for), each written aside and moved in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for dest, content in ((target, data), (meta, record)):
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(content)
        tmp.replace(dest)


def resolve(ref: str) -> InstalledModel:
    """``onnx:PATH`` (installed now) or ``onnx:<key>`` (already in the cache) -> the model."""
    ref = ref[len(PREFIX):] if is_onnx_model(ref) else ref
    if not ref:
        raise ModelError("onnx: needs a path: --model onnx:PATH (an .onnx file with its .json beside it)")
    if Path(ref).expanduser().is_file() or not _KEY.fullmatch(ref):
        return install(ref)
    return installed(ref)


class OnnxFileEncoder(CNNEncoder):
    """A model of one's own (:mod:`lookalike.encoders.byo`), run like the built-in ones: the same
    photo preparation, batching, threads and runtimes (``auto`` is ONNX Runtime: there is no
    calibration of one's own models), fp32 as given."""

    def __init__(self, model: InstalledModel, *, pooling: str, runtime: str = "auto", resize: str, trim: bool,
                 size: int | None = None, precision: str | None = None, threads: int | None = None,
                 streams: int = 1) -> None:
        cfg = model.config
        if size is not None and size != cfg.input_size:
            raise ModelError(f"{model.name} takes {cfg.input_size}-px photos (its JSON's input_size), not {size}")
        if precision not in (None, "fp32"):
            raise ModelError(f"{model.name} runs as given (fp32); precision {precision} is for built-in models")
        if runtime == "torch":
            raise ModelError(f"{model.name} runs on ONNX Runtime or OpenVINO; choose runtime auto, onnx or openvino")
        if pooling not in POOLINGS:
            raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if len(model.features) == 3 and pooling == "grid2" and min(model.features[1:]) < 2:
            raise ModelError(f"{model.name}'s feature map is {model.features[1]} x {model.features[2]}; "
                             "grid2 pooling needs at least 2 x 2 (use gem, avg or max)")
        spec = ModelSpec(name=model.name, channels=model.features[0], input_size=cfg.input_size, stride=1,
                         mean=cfg.mean, std=cfg.std, builder="", find_weights=lambda: model.path)
        super().__init__(spec, pooling=pooling, weights=model.path, runtime=runtime, resize=resize, trim=trim,
                         size=cfg.input_size, precision="fp32", threads=threads, streams=streams)
        self.model = model
        if len(model.features) == 1:
            self.dim = model.features[0]
        else:
            c, h, w = model.features
            self.grid = h
            self.dim = c * {"none": h * w, "grid2": 4}.get(pooling, 1)

    def __repr__(self) -> str:
        return super().__repr__().replace("CNNEncoder(", "OnnxFileEncoder(", 1)

    @property
    def weights_id(self) -> str:
        """The file's name and the model's key (the name is what it was given by, for people;
        the key, also in :attr:`name`, is what identifies it)."""
        return f"{self.model.source or self.model.path.name}#{self.model.key}"

    def onnx_path(self) -> Path:
        return self.model.path

    def _ensure_export(self) -> Path:
        if not self.model.path.is_file():
            raise ModelError(f"{self.model.path} is gone from the model cache; give the file again: "
                             f"--model {PREFIX}PATH")
        return self.model.path

    def prepare(self) -> Path | None:
        return self.export()

    def is_prepared(self) -> bool:
        return True

    def _chosen_runtime(self) -> str:
        return "onnx" if self.runtime == "auto" else self.runtime  # no calibration of one's own models

    def _onnx_session(self) -> Session:
        if self._session is None:
            with self._lock:
                if self._session is None:
                    path = self._ensure_export()
                    engine = self._chosen_runtime()
                    cfg = self.model.config
                    try:
                        self._session = open_session(engine, path, self.threads, cfg.mean, cfg.std, self.streams,
                                                     layout=cfg.layout, output=cfg.output)
                    except MissingDependencyError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - a runtime that can't run this file
                        raise ModelError(f"{engine} could not load {self.name} ({type(exc).__name__}: "
                                         f"{_first_line(exc)})") from exc
        return self._session

    def _feature_map(self, pixels: np.ndarray) -> np.ndarray:
        if self.model.config.channels == "bgr":
            pixels = pixels[..., ::-1]
        out = np.asarray(self._onnx_session().run(pixels))
        if out.ndim == 4 and self.model.config.layout == "nhwc":
            out = out.transpose(0, 3, 1, 2)
        if out.shape[1:] != self.model.features:
            raise ModelError(f"{self.name} gave {tuple(out.shape)} for {len(pixels)} photos, "
                             f"not (n, {', '.join(map(str, self.model.features))}) as when installed")
        return out

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.ndim == 3:
            pixels = pixels[None]
        if len(pixels) == 0 or len(self.model.features) == 3:
            return super().encode_pixels(pixels)
        return np.ascontiguousarray(self._feature_map(pixels), dtype=np.float32)
