"""A zoo of small user-style architectures, written as a user would in plain PyTorch (not with edgecompress helpers).

Each is a class plus a factory ``fn(num_classes=10, in_channels=1, ...)`` so that a config can name it as
``factory: zoo_models:<fn>`` (with ``trust_factories: [zoo_models]``). All work on 8x8 inputs (scikit-learn digits)
and hold a few thousand to ~50k parameters, so the tests that use them run in seconds.
"""

from __future__ import annotations

from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn


class PlainCNN(nn.Module):
    """No BatchNorm: conv-ReLU-pool three times, then two Linear layers (the classic tutorial CNN)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))  # 8 -> 4
        x = self.pool(F.relu(self.conv2(x)))  # 4 -> 2
        x = self.pool(F.relu(self.conv3(x)))  # 2 -> 1
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def plain_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return PlainCNN(num_classes, in_channels)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class SmallResNet(nn.Module):
    """A ResNet with residual adds (identity and projection shortcuts)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = Block(width, width)
        self.layer2 = Block(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.avgpool(x).flatten(1))


def small_resnet(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    return SmallResNet(num_classes, in_channels, width)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(ch, reduced)
        self.fc2 = nn.Linear(reduced, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish()
        )
        self.se = SqueezeExcite(hidden, max(4, hidden // 4))
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class TinyMobileNet(nn.Module):
    """MobileNetV2/V3-style: inverted residuals with depthwise convs, SE blocks (Linear inside) and Hardswish."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 2, 1), InvertedResidual(16, 24, 2, 2), InvertedResidual(24, 24, 2, 1)
        )
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def tiny_mobilenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return TinyMobileNet(num_classes, in_channels)


class GroupedNet(nn.Module):
    """Grouped 3x3 convs (ResNeXt-style, groups=4) with SiLU activations."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, groups: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, groups=groups),
            nn.BatchNorm2d(64),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1, groups=groups),
            nn.BatchNorm2d(64),
            nn.SiLU(),
            nn.Conv2d(64, 64, 1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def grouped_net(num_classes: int = 10, in_channels: int = 1, groups: int = 4) -> nn.Module:
    return GroupedNet(num_classes, in_channels, groups)


class FlattenHead(nn.Module):
    """Convs, then nn.Flatten over the whole feature map into a Dropout + Linear head (no global pooling)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(32 * 2 * 2, 64),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def flatten_head(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return FlattenHead(num_classes, in_channels)


class HeadFirst(nn.Module):
    """The classifier is registered before the body (and a Linear bottleneck after it): order says nothing."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.classifier = nn.Linear(32, num_classes)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.bottleneck = nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bottleneck(x.mean((2, 3))))
        return self.classifier(x)


def head_first(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return HeadFirst(num_classes, in_channels)


Output = namedtuple("Output", ["logits", "features"])


class TupleOutput(nn.Module):
    """Returns (logits, features), as models trained with a feature loss often do."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, as_namedtuple: bool = False) -> None:
        super().__init__()
        self.as_namedtuple = as_namedtuple
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        logits = self.fc(feats)
        return Output(logits, feats) if self.as_namedtuple else (logits, feats)


def tuple_output(num_classes: int = 10, in_channels: int = 1, as_namedtuple: bool = False) -> nn.Module:
    return TupleOutput(num_classes, in_channels, as_namedtuple)


class DictOutput(TupleOutput):
    """Returns {"logits": ..., "embedding": ...} (a Hugging Face-style output)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        feats = self.features(x)
        return {"logits": self.fc(feats), "embedding": feats}


def dict_output(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return DictOutput(num_classes, in_channels)


class RGBNet(nn.Module):
    """A colour-image CNN (in_channels=3 by default), with a stride-2 stem and BatchNorm."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 24, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(24),
            nn.ReLU(inplace=True),
            nn.Conv2d(24, 48, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(inplace=True),
            nn.Conv2d(48, 48, 3, padding=1, bias=False),
            nn.BatchNorm2d(48),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(48, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def rgb_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return RGBNet(num_classes, in_channels)


class HardCodedView(nn.Module):
    """The old-tutorial flatten, ``x.view(-1, 32 * 2 * 2)``: a size pruning cannot change."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 32 * 2 * 2)
        return self.fc2(F.relu(self.fc1(x)))


def hard_coded_view(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return HardCodedView(num_classes, in_channels)


class ViewCNN(HardCodedView):
    """The tutorial CNN as most people write it: no BatchNorm, and ``x.view(x.size(0), -1)`` over a 2x2 map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 8 -> 4
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4 -> 2
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def view_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ViewCNN(num_classes, in_channels)


class FlattenCNN(ViewCNN):
    """The same BN-free CNN flattening its 2x2 map with ``torch.flatten(x, 1)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def flatten_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return FlattenCNN(num_classes, in_channels)


class StrictSize(nn.Module):
    """A model that refuses any input but the size it was trained for (as many production models check)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, size: int = 8) -> None:
        super().__init__()
        self.size, self.in_channels = size, in_channels
        self.body = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU())  # fmt: skip
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_channels, self.size, self.size):
            raise ValueError(f"expected input [N, {self.in_channels}, {self.size}, {self.size}], got {tuple(x.shape)}")
        return self.fc(self.body(x).mean((2, 3)))


def strict_size(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return StrictSize(num_classes, in_channels)


def resnet_like_torchvision(num_classes: int = 1000) -> nn.Module:
    """A factory with torchvision's signature (no ``in_channels``): 3-channel input, ``num_classes`` only."""
    return SmallResNet(num_classes, 3, width=8)


ZOO = {
    "plain_cnn": (plain_cnn, 1),
    "small_resnet": (small_resnet, 1),
    "tiny_mobilenet": (tiny_mobilenet, 1),
    "grouped_net": (grouped_net, 1),
    "flatten_head": (flatten_head, 1),
    "head_first": (head_first, 1),
    "tuple_output": (tuple_output, 1),
    "rgb_net": (rgb_net, 3),
    "view_cnn": (view_cnn, 1),
    "flatten_cnn": (flatten_cnn, 1),
    "strict_size": (strict_size, 1),
}
