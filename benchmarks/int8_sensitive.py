"""A network built to be INT8-sensitive: one activation channel 300x larger than the rest (an outlier channel).

``OutlierNet`` is a plain conv-BN-ReLU net; :func:`plant_outlier` scales one output channel of the third block (its
BN weight and bias) by ``scale`` and divides the next conv's weights on that input channel by the same factor. ReLU
and max-pool are positively homogeneous, so the float function is unchanged — but a per-tensor 8-bit grid on that
activation is now 300x coarser, and every other channel falls to one or two levels: plain post-training INT8 loses
many points, as on real networks with outlier channels (hard-swish / SE tails, depthwise outputs). A config names it
as ``factory: benchmarks.int8_sensitive:outlier_net`` with ``trust_factories: [benchmarks.int8_sensitive]``;
``benchmarks.int8_recovery`` and the tests use it directly.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class OutlierNet(nn.Module):
    """conv3x3-BN-ReLU x 4 (widths w, 2w, 2w, 4w; 2x2 max-pool after the 2nd and 3rd), global average pool, Linear.

    Most of the MACs are in the first two blocks (full resolution); the outlier sits before the last one, so keeping
    the two layers around it float costs a minority of the compute.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        w = width
        self.c1, self.b1 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.c2, self.b2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.c3, self.b3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w)
        self.c4, self.b4 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        x = nn.functional.max_pool2d(torch.relu(self.b3(self.c3(x))), 2)
        x = torch.relu(self.b4(self.c4(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def outlier_net(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> OutlierNet:
    return OutlierNet(num_classes, in_channels, width)


def busiest_channel(model: OutlierNet, x: np.ndarray) -> int:
    """The channel of block 3's output with the largest mean activation on ``x`` (a live one: a dead channel scaled
    by any factor stays zero)."""
    seen: list[torch.Tensor] = []
    handle = model.c4.register_forward_pre_hook(lambda _m, a: seen.append(a[0].mean((0, 2, 3))))
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(x[:256]))
    finally:
        handle.remove()
    return int(seen[0].argmax())


def plant_outlier(model: OutlierNet, channel: int, scale: float = 300.0) -> OutlierNet:
    """Scale ``channel`` of block 3's output by ``scale`` and compensate in ``c4`` (the float function is unchanged:
    ReLU and max-pool commute with a positive scale)."""
    with torch.no_grad():
        model.b3.weight[channel] *= scale
        model.b3.bias[channel] *= scale
        model.c4.weight[:, channel] /= scale
    return model


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as 8-bit pixels / 255 (``data.mean: [0]``, ``data.std: [1]`` in a config)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (np.round(d.images * 255 / 16) / 255).astype(np.float32)[:, None]
    return x, d.target.astype(np.int64)


def trained_outlier_net(
    x: np.ndarray, y: np.ndarray, *, epochs: int = 15, width: int = 16, seed: int = 0
) -> OutlierNet:
    """:class:`OutlierNet` trained on ``(x, y)`` with Adam, then :func:`plant_outlier` on its busiest channel."""
    torch.manual_seed(seed)
    model = outlier_net(num_classes=int(y.max()) + 1, in_channels=x.shape[1], width=width)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), 64):
            b = order[i : i + 64]
            loss = nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return plant_outlier(model.eval(), busiest_channel(model, x))
