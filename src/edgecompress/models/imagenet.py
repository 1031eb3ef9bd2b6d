"""ImageNet-class families in torchvision's layout: ResNet-18, MobileNetV2, MobileNetV3-small, EfficientNet-B0.

Written here (torchvision cannot be imported beside this torch build) with the same modules, the same nesting and so
the same ``state_dict`` key names and shapes as ``torchvision.models`` (``tests/test_models_imagenet.py`` holds the
published keys, shapes and parameter counts). A torchvision-layout checkpoint — e.g. ``torch.save(
torchvision.models.resnet18(weights=...).state_dict(), path)`` made elsewhere — therefore loads through the usual
``teacher.checkpoint`` with ``family: resnet18`` (``in_channels: 3``, ``num_classes`` of the checkpoint's head).

Each family takes ``in_channels`` (the stem's input) and ``num_classes`` (the last Linear) like the small families;
``input_size`` is free (global average pooling), 224x224 is what the published weights expect.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgecompress.errors import ModelError


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` without going below 90 % of it (MobileNet rule)."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) → BatchNorm2d → activation, as torchvision's ``Conv2dNormActivation`` (keys ``0.*``, ``1.*``).

    ``padding`` is ``(kernel - 1) // 2``; ``act=None`` leaves the activation out (the linear projections).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): ``x * gate(fc2(act(fc1(avgpool(x)))))`` with 1x1 convs fc1 / fc2."""

    def __init__(
        self, channels: int, squeeze: int, act: type[nn.Module] = nn.ReLU, gate: type[nn.Module] = nn.Sigmoid
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


def _init_weights(model: nn.Module, linear: str) -> None:
    """torchvision's initialization: Kaiming (fan-out) convs, BN = identity, Linear normal(0, 0.01) or uniform."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                bound = 1.0 / float(m.out_features) ** 0.5
                nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


def _pool_flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


# ---------------------------------------------------------------------------------------------------- ResNet-18


class TorchvisionBasicBlock(nn.Module):
    """ResNet basic block in torchvision's naming: conv1/bn1/relu/conv2/bn2 and an optional ``downsample``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016) as ``torchvision.models.resnet18``: 7x7/2 stem, max-pool, 4 x 2 basic blocks."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(64, 64, 1)
        self.layer2 = self._stage(64, 128, 2)
        self.layer3 = self._stage(128, 256, 2)
        self.layer4 = self._stage(256, 512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(TorchvisionBasicBlock(cin, cout, stride), TorchvisionBasicBlock(cout, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# -------------------------------------------------------------------------------------------------- MobileNetV2

_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidualV2(nn.Module):
    """MobileNetV2 block (``conv``): [1x1 expand] → 3x3 depthwise → 1x1 linear projection, residual if shapes agree."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvNormAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., CVPR 2018) as ``torchvision.models.mobilenet_v2`` (``width_mult`` included)."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvNormAct(in_channels, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in _V2_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvNormAct(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        _init_weights(self, "normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(_pool_flatten(self.features(x)))


# -------------------------------------------------------------------------------------------- MobileNetV3-small

# kernel, expanded, out, squeeze-excitation, hard-swish, stride (Howard et al., ICCV 2019, Table 2)
_V3_SMALL = (
    (3, 16, 16, True, False, 2),
    (3, 72, 24, False, False, 2),
    (3, 88, 24, False, False, 1),
    (5, 96, 40, True, True, 2),
    (5, 240, 40, True, True, 1),
    (5, 240, 40, True, True, 1),
    (5, 120, 48, True, True, 1),
    (5, 144, 48, True, True, 1),
    (5, 288, 96, True, True, 2),
    (5, 576, 96, True, True, 1),
    (5, 576, 96, True, True, 1),
)
_V3_BN: dict[str, Any] = {"bn_eps": 1e-3, "bn_momentum": 0.01}


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block (``block``): [1x1 expand] → depthwise → [SE with hard-sigmoid] → 1x1 linear projection."""

    def __init__(self, cin: int, kernel: int, hidden: int, cout: int, se: bool, hs: bool, stride: int) -> None:
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvNormAct(cin, hidden, 1, act=act, **_V3_BN))
        layers.append(ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act=act, **_V3_BN))
        if se:
            layers.append(SqueezeExcitation(hidden, make_divisible(hidden // 4), gate=nn.Hardsigmoid))
        layers.append(ConvNormAct(hidden, cout, 1, act=None, **_V3_BN))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3Small(nn.Module):
    """MobileNetV3-small (Howard et al., ICCV 2019) as ``torchvision.models.mobilenet_v3_small``."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return make_divisible(c * width_mult)

        cin = ch(16)
        features: list[nn.Module] = [ConvNormAct(in_channels, cin, 3, 2, act=nn.Hardswish, **_V3_BN)]
        for kernel, hidden, cout, se, hs, stride in _V3_SMALL:
            features.append(InvertedResidualV3(cin, kernel, ch(hidden), ch(cout), se, hs, stride))
            cin = ch(cout)
        features.append(ConvNormAct(cin, 6 * cin, 1, act=nn.Hardswish, **_V3_BN))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last = ch(1024)
        self.classifier = nn.Sequential(
            nn.Linear(6 * cin, last), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(last, num_classes)
        )
        _init_weights(self, "normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---------------------------------------------------------------------------------------------- EfficientNet-B0

# expand ratio, kernel, stride, in, out, layers (Tan & Le, ICML 2019, Table 1)
_B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
       (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))  # fmt: skip


class StochasticDepth(nn.Module):
    """Drops the residual branch with probability ``p`` in training (Huang et al., 2016), identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class MBConv(nn.Module):
    """EfficientNet block: [1x1 expand] → depthwise → SE (SiLU, sigmoid; squeeze = in/4) → 1x1 projection."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int, drop: float) -> None:
        super().__init__()
        hidden = make_divisible(cin * expand)
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvNormAct(cin, hidden, 1, act=nn.SiLU))
        layers += [
            ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, max(1, cin // 4), act=nn.SiLU),
            ConvNormAct(hidden, cout, 1, act=None),
        ]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 (Tan & Le, ICML 2019) as ``torchvision.models.efficientnet_b0``."""

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1000, dropout: float = 0.2, stochastic_depth: float = 0.2
    ) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvNormAct(in_channels, 32, 3, 2, act=nn.SiLU)]
        total, done = sum(row[-1] for row in _B0), 0
        for expand, kernel, stride, cin, cout, n in _B0:
            stage = []
            for i in range(n):
                drop = stochastic_depth * done / total
                stage.append(MBConv(expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout, drop))
                done += 1
            features.append(nn.Sequential(*stage))
        features.append(ConvNormAct(320, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        _init_weights(self, "uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ------------------------------------------------------------------------------------------------------ families


def _check_fraction(family: str, name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= float(value) < 1:
        raise ModelError(f"{family}: param {name!r} must be a number in [0, 1), got {value!r}", f"e.g. {name}: 0.2")
    return float(value)


def _check_width(family: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.1 <= float(value) <= 4.0:
        raise ModelError(f"{family}: param 'width_mult' must be a number in [0.1, 4], got {value!r}", "e.g. 1.0")
    return float(value)


def resnet18(*, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """ResNet-18 in torchvision's layout (11.7 M parameters, 1.8 G MACs at 224x224 with 1000 classes)."""
    return ResNet18(in_channels, num_classes)


def mobilenet_v2(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """MobileNetV2 in torchvision's layout (3.5 M parameters, 0.3 G MACs at 224x224, width 1.0)."""
    family = "mobilenet_v2"
    return MobileNetV2(
        in_channels, num_classes, _check_width(family, width_mult), _check_fraction(family, "dropout", dropout)
    )


def mobilenet_v3_small(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """MobileNetV3-small in torchvision's layout (2.5 M parameters, 0.06 G MACs at 224x224): hard-swish and SE."""
    family = "mobilenet_v3_small"
    return MobileNetV3Small(
        in_channels, num_classes, _check_width(family, width_mult), _check_fraction(family, "dropout", dropout)
    )


def efficientnet_b0(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    dropout: float = 0.2,
    stochastic_depth: float = 0.2,
) -> nn.Module:
    """EfficientNet-B0 in torchvision's layout (5.3 M parameters, 0.4 G MACs at 224x224): SiLU, SE, stochastic depth."""
    family = "efficientnet_b0"
    return EfficientNetB0(
        in_channels,
        num_classes,
        _check_fraction(family, "dropout", dropout),
        _check_fraction(family, "stochastic_depth", stochastic_depth),
    )


IMAGENET_FAMILIES = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_small": mobilenet_v3_small,
    "efficientnet_b0": efficientnet_b0,
}
