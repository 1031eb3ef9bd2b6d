"""Built-in model families for small images; each ends in one ``nn.Linear`` classifier and uses BatchNorm.

BatchNorm is required by data-free distillation (its running statistics are the inversion target), and the single
final ``nn.Linear`` is what temperature folding scales and what pruning leaves alone (pruning finds it by the graph,
:func:`edgecompress.models.find_classifier`, as it does in any user model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgecompress.errors import ModelError
from edgecompress.models.imagenet import IMAGENET_FAMILIES


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _int_list(name: str, value: Any, family: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, int) and v > 0 for v in value):
        raise ModelError(
            f"{family}: param '{name}' must be a non-empty list of positive ints, got {value!r}",
            f"e.g. {name}: [32, 64, 128]",
        )
    return [int(v) for v in value]


def cnn(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    channels: list[int] | tuple[int, ...] = (32, 64, 128),
    pool_every: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """Plain CNN in the spirit of TAKD's plain CNNs (Mirzadeh et al., AAAI 2020): conv3x3-BN-ReLU blocks.

    A 2x2 max-pool follows every ``pool_every``-th conv while the feature map is at least 2x2, then global average
    pooling and one Linear classifier. Depth = ``len(channels)`` conv layers + 1 linear.
    """
    chans = _int_list("channels", channels, "cnn")
    if not isinstance(pool_every, int) or pool_every < 1:
        raise ModelError(f"cnn: param 'pool_every' must be a positive int, got {pool_every!r}", "e.g. pool_every: 2")
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ModelError(f"cnn: param 'dropout' must be in [0, 1), got {dropout!r}", "e.g. dropout: 0.1")
    layers: list[nn.Module] = []
    cin, (h, w) = in_channels, input_size
    for i, cout in enumerate(chans):
        layers += _conv_bn(cin, cout)
        cin = cout
        if (i + 1) % pool_every == 0 and i + 1 < len(chans) and min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        head.append(nn.Dropout(float(dropout)))
    head.append(nn.Linear(cin, num_classes))
    return nn.Sequential(nn.Sequential(*layers), *head)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): two conv3x3-BN, identity or 1x1-conv-BN shortcut, ReLU after add."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # projection (option B): prunable, unlike zero-padding option A
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2): conv3x3 stem, three stages of n BasicBlocks (width w, 2w, 4w), GAP, Linear."""

    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int, stem_stride: int = 1) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn(in_channels, width, stem_stride))
        blocks: list[nn.Module] = []
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(cin, width * mult, stride))
                cin = width * mult
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet(
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    depth: int = 20,
    width: int = 16,
    stem_stride: int = 1,
) -> nn.Module:
    """CIFAR ResNet (He et al., CVPR 2016, Sec. 4.2): depth 6n+2 (8, 14, 20, 32, 56, 110), base width 16.

    ``stem_stride: 2`` halves the resolution in the stem (as ImageNet-style networks do early) for inputs of
    64x64 and more, where a stride-1 stem would spend most of the MACs in the first stage.
    """
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ModelError(
            f"resnet: param 'depth' must be 6n+2 (8, 14, 20, 32, 56, 110), got {depth!r}", "e.g. depth: 20"
        )
    if not isinstance(width, int) or width < 1:
        raise ModelError(f"resnet: param 'width' must be a positive int, got {width!r}", "e.g. width: 16")
    if stem_stride not in (1, 2):
        raise ModelError(f"resnet: param 'stem_stride' must be 1 or 2, got {stem_stride!r}", "e.g. stem_stride: 2")
    return CifarResNet(depth, width, in_channels, num_classes, stem_stride)


def mlp(
    *, in_channels: int, num_classes: int, input_size: tuple[int, int], hidden: list[int] | tuple[int, ...] = (128,)
) -> nn.Module:
    """Multi-layer perceptron on flattened pixels: (Linear-BN-ReLU) per hidden size, then Linear. For tiny tests."""
    sizes = _int_list("hidden", hidden, "mlp")
    layers: list[nn.Module] = [nn.Flatten()]
    cin = in_channels * input_size[0] * input_size[1]
    for h in sizes:
        layers += [nn.Linear(cin, h), nn.BatchNorm1d(h), nn.ReLU()]
        cin = h
    layers.append(nn.Linear(cin, num_classes))
    return nn.Sequential(*layers)


# The 224x224 ImageNet-class families in torchvision's layout come from edgecompress.models.imagenet.
FAMILIES: dict[str, Callable[..., nn.Module]] = {"cnn": cnn, "resnet": resnet, "mlp": mlp, **IMAGENET_FAMILIES}


def build_family(
    name: str, params: dict[str, Any], *, in_channels: int, num_classes: int, input_size: tuple[int, int]
) -> nn.Module:
    """Build ``FAMILIES[name]`` with ``params``; unknown family or param -> :class:`ModelError`."""
    fn = FAMILIES.get(name)
    if fn is None:
        raise ModelError(f"unknown model family {name!r}", f"use one of: {', '.join(sorted(FAMILIES))}, or a factory")
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("in_channels", "num_classes", "input_size")]
    for key in params:
        if key not in allowed:
            raise ModelError(f"{name}: unknown param {key!r}", f"allowed params: {', '.join(allowed)}")
    return fn(in_channels=in_channels, num_classes=num_classes, input_size=tuple(input_size), **params)
