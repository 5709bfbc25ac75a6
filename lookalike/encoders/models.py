"""The CNN backbones, as PyTorch modules that return the last feature map, and the towers of a
Hugging Face model as exported for ``hf:`` models (:mod:`lookalike.encoders.hf`).

Imported only when a model must be built or exported (torch is slow to import); a cached
ONNX export is used without importing this module at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lookalike.errors import ModelError

__all__ = ["build_efficientnet_lite0", "build_resnet50", "ResNet50", "HfImageTower", "HfTextTower"]


class _FeatureMap(nn.Module):
    def __init__(self, body: nn.Module, fn: str) -> None:
        super().__init__()
        self.body = body
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.body, self.fn)(x)


def build_efficientnet_lite0(weights: Path) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights; returns its 1280 x 7 x 7 head map."""
    from efficientnet_lite_pytorch import EfficientNet

    try:
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    except Exception as exc:  # noqa: BLE001 - a bad weights file has many faces
        raise ModelError(f"can't load EfficientNet-Lite0 weights from {weights}: {exc}") from exc
    # Lite models use ReLU6 throughout (it exports as is); never call set_swish(), which
    # would swap in swish and silently ruin the features
    return _FeatureMap(model.eval(), "extract_features").eval()


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 (v1.5) with torchvision's parameter names, so its state dicts load as is."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        layers = []
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            seq = []
            for i in range(blocks):
                s = stride if i == 0 else 1
                seq.append(_Bottleneck(inplanes, planes, s, downsample=(i == 0)))
                inplanes = planes * 4
            layers.append(nn.Sequential(*seq))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def build_resnet50(weights: Path) -> nn.Module:
    """ResNet-50 from a torchvision-format ImageNet state dict; returns its 2048 x 7 x 7 map."""
    model = ResNet50()
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"can't read ResNet50 weights {weights}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{weights} does not hold a state dict")
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}"
                         + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else ""))
        raise ModelError(f"{weights} is not a torchvision ResNet50 state dict: {'; '.join(parts)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ModelError(f"{weights} does not fit ResNet50: {detail}") from exc
    return _FeatureMap(model.eval(), "features").eval()


class HfImageTower(nn.Module):
    """A transformers CLIP, SigLIP or DINOv2 model's image embedding: CLIP's projected pooled
    output, SigLIP's attention-pooled output, DINOv2's layer-normed CLS token."""

    def __init__(self, model: nn.Module, family: str) -> None:
        super().__init__()
        self.model, self.family = model, family

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        if self.family == "clip":
            return m.visual_projection(m.vision_model(pixel_values=pixels).pooler_output)
        if self.family == "siglip":
            return m.vision_model(pixel_values=pixels).pooler_output
        return m(pixel_values=pixels).pooler_output


class HfTextTower(nn.Module):
    """A CLIP or SigLIP model's text embedding from token ids (CLIP's projected, SigLIP's pooled)."""

    def __init__(self, model: nn.Module, family: str) -> None:
        super().__init__()
        self.model, self.family = model, family

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        m: Any = self.model
        pooled = m.text_model(input_ids=input_ids).pooler_output
        return m.text_projection(pooled) if self.family == "clip" else pooled
