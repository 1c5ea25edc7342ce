"""Model registry: torchvision backbones plus a compact CPU-friendly CNN ("pneumonet").

Every model is wrapped in ``CamModel`` whose forward returns ``(features, logits)`` so class
activation maps can be computed from the *same* forward pass that produced the prediction.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were requested but cannot be found locally nor downloaded."""


class CamModel(nn.Module):
    """features -> head. ``linear`` is set when head == global-average-pool + Linear.

    When ``linear`` is set, CAM for class c is simply sum_k w_ck * A_k (Zhou et al. 2016): no
    gradients needed, so it works under torch.inference_mode. Otherwise we fall back to
    Grad-CAM on ``features``.
    """

    def __init__(
        self, features: nn.Module, head: nn.Module, linear: nn.Linear | None, in_channels: int
    ) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.linear = linear
        self.in_channels = in_channels

    @property
    def supports_plain_cam(self) -> bool:
        return self.linear is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return feats, self.head(feats)


class GapLinearHead(nn.Module):
    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        # Dropout before a linear layer commutes with the spatial mean in eval mode, so
        # CAM = W . A stays exact.
        return self.fc(self.dropout(feats.mean(dim=(2, 3))))


# --------------------------------------------------------------------------------------------
# Compact custom CNN
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.short(x))


def pneumonet_features(
    in_channels: int = 1,
    widths: tuple[int, ...] = (32, 64, 128, 256),
    blocks: tuple[int, ...] = (1, 1, 2, 1),
) -> tuple[nn.Module, int]:
    """Small ResNet-style trunk: two stride-2 stem convs, then 4 stages (strides 1,2,2,2).

    Total stride 32, like ResNet, so a 192 px input gives a 6x6 CAM grid. ~1.5 M parameters,
    ~0.2 GMAC at 192 px: fast enough for >40 img/s with CAM on 2 CPU cores.
    """
    stem_w = widths[0] // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, stem_w, 3, 2, 1, bias=False),
        nn.BatchNorm2d(stem_w),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_w, widths[0], 3, 2, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            stride = 2 if (j == 0 and i > 0) else 1
            layers.append(BasicBlock(cin, w, stride))
            cin = w
    return nn.Sequential(*layers), cin


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    # Zero-init the last BN of each residual branch: blocks start as identity, which makes
    # from-scratch training of a ResNet noticeably more stable (Goyal et al. 2017).
    for m in module.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def _build_pneumonet(
    num_classes: int, in_channels: int, width: int = 32, dropout: float = 0.2
) -> CamModel:
    widths = (width, width * 2, width * 4, width * 8)
    feats, c = pneumonet_features(in_channels, widths)
    head = GapLinearHead(c, num_classes, dropout)
    model = CamModel(feats, head, head.fc, in_channels)
    _init_weights(model.features)
    return model


# --------------------------------------------------------------------------------------------
# torchvision backbones
# --------------------------------------------------------------------------------------------

_TV_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "densenet121": "DenseNet121_Weights",
    "vgg16": "VGG16_Weights",
    "efficientnet_b0": "EfficientNet_B0_Weights",
    "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
}


def _load_tv(arch: str, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    ctor = getattr(tvm, arch)
    if not pretrained:
        return ctor(weights=None)
    weights = getattr(tvm, _TV_WEIGHTS[arch]).IMAGENET1K_V1
    try:
        return ctor(weights=weights)
    except Exception as exc:  # URLError, HTTPError, OSError, hash mismatch, ...
        torch_home = os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch"))
        fname = weights.url.rsplit("/", 1)[-1]
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {arch!r} are not available: they are not in the local cache "
            f"and could not be downloaded ({type(exc).__name__}: {exc}). On a machine with "
            f"internet access download {weights.url} and copy it to "
            f"{os.path.join(torch_home, 'hub', 'checkpoints', fname)} (set TORCH_HOME to "
            f"choose the cache directory), or train from scratch without --pretrained."
        ) from exc


def _wrap_tv(arch: str, net: nn.Module, num_classes: int) -> CamModel:
    if arch.startswith("resnet"):
        feats = nn.Sequential(
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        head = GapLinearHead(net.fc.in_features, num_classes)
        return CamModel(feats, head, head.fc, 3)
    if arch.startswith("densenet"):
        # torchvision applies ReLU after the last norm inside forward(); keep it in features.
        feats = nn.Sequential(net.features, nn.ReLU(inplace=False))
        head = GapLinearHead(net.classifier.in_features, num_classes)
        return CamModel(feats, head, head.fc, 3)
    if arch.startswith("efficientnet"):
        lin = net.classifier[1]
        head = GapLinearHead(lin.in_features, num_classes, dropout=0.2)
        return CamModel(net.features, head, head.fc, 3)
    if arch.startswith("mobilenet_v3"):
        # Classifier is Linear-Hardswish-Dropout-Linear after pooling: not a linear head, so
        # CAM falls back to Grad-CAM.
        cls = net.classifier
        cls[-1] = nn.Linear(cls[-1].in_features, num_classes)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), cls)
        return CamModel(net.features, head, None, 3)
    if arch == "vgg16":
        cls = net.classifier
        cls[-1] = nn.Linear(cls[-1].in_features, num_classes)
        head = nn.Sequential(net.avgpool, nn.Flatten(1), cls)
        return CamModel(net.features, head, None, 3)
    raise KeyError(arch)


@dataclass(frozen=True)
class ArchInfo:
    name: str
    in_channels: int
    description: str
    builder: Callable[[int, bool], CamModel]


def _tv_builder(arch: str) -> Callable[[int, bool], CamModel]:
    def build(num_classes: int, pretrained: bool) -> CamModel:
        return _wrap_tv(arch, _load_tv(arch, pretrained), num_classes)

    return build


def _pn_builder(width: int) -> Callable[[int, bool], CamModel]:
    def build(num_classes: int, pretrained: bool) -> CamModel:
        if pretrained:
            raise PretrainedWeightsUnavailable(
                "pneumonet is a custom architecture: there are no ImageNet weights for it; "
                "train it from scratch (omit --pretrained)."
            )
        return _build_pneumonet(num_classes, 1, width=width)

    return build


REGISTRY: dict[str, ArchInfo] = {
    "pneumonet": ArchInfo(
        "pneumonet", 1, "compact ResNet-style CNN, 1-channel, GAP+linear", _pn_builder(32)
    ),
    "pneumonet_small": ArchInfo("pneumonet_small", 1, "pneumonet at half width", _pn_builder(16)),
    # Four times the compute of pneumonet: too slow to serve on the CPU bar; for teachers
    # trained on a GPU (--distill-from; docs/ml.md: the one tried told bacterial from viral
    # no better than v1).
    "pneumonet_wide": ArchInfo("pneumonet_wide", 1, "pneumonet at twice the width",
                               _pn_builder(64)),
}
for _arch in _TV_WEIGHTS:
    REGISTRY[_arch] = ArchInfo(_arch, 3, f"torchvision {_arch}", _tv_builder(_arch))

ARCHS = tuple(REGISTRY)


def arch_channels(arch: str) -> int:
    return REGISTRY[arch].in_channels


def build_model(arch: str, num_classes: int, pretrained: bool = False) -> CamModel:
    """Build ``arch`` with a ``num_classes`` head. ``pretrained`` loads ImageNet weights
    (torchvision archs only) or raises PretrainedWeightsUnavailable."""
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    return REGISTRY[arch].builder(int(num_classes), bool(pretrained))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
