"""Channels-last training is a speed-up with a fallback: a user's ``x.view(x.size(0), -1)`` never crashes (issue 25)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.data.augment import augment_batch
from edgecompress.data.config import AugmentConfig
from edgecompress.distill.fast_eval import channels_last_problem, in_layout


class ViewNet(nn.Module):
    """The tutorial CNN: BN-free, flattens with ``x.view(x.size(0), -1)`` after its convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.size(0), -1))


def test_the_crop_augmentation_returns_canonical_strides() -> None:
    """A one-channel batch made by a permute counts as contiguous with strides (HW, 1, W, 1); convolutions read
    those as channels-last, and the user's .view then fails although the model is in NCHW (the bug of issue 25)."""
    x = torch.randn(16, 1, 8, 8)
    out = augment_batch(x, AugmentConfig(crop_pad=1, hflip=True), torch.Generator().manual_seed(0))
    assert out.stride() == (64, 64, 8, 1)
    ViewNet().train()(out).sum().backward()  # would raise "view size is not compatible" before


def test_in_layout_fixes_ambiguous_strides() -> None:
    odd = torch.randn(4, 8, 8, 1).permute(0, 3, 1, 2)
    assert odd.is_contiguous() and odd.stride() == (64, 1, 8, 1)
    fixed = in_layout(odd, torch.contiguous_format)
    assert fixed.stride() == (64, 64, 8, 1) and torch.equal(fixed, odd)
    plain = torch.randn(4, 1, 8, 8)
    assert in_layout(plain, torch.contiguous_format) is plain  # no copy when the strides are canonical


def test_channels_last_probe_names_the_models_problem() -> None:
    problem = channels_last_problem(ViewNet(), torch.randn(4, 1, 8, 8))
    assert problem is not None and "RuntimeError" in problem and "view" in problem
    ok = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert channels_last_problem(ok, torch.randn(4, 1, 8, 8)) is None


def test_train_model_falls_back_to_nchw_and_says_so(tmp_path) -> None:
    from types import SimpleNamespace as NS

    import numpy as np

    from edgecompress.distill.config import TrainConfig
    from edgecompress.distill.trainer import train_model

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 256).astype(np.int64)
    x = (rng.normal(size=(256, 1, 8, 8)) + y[:, None, None, None]).astype(np.float32)
    data = NS(train=NS(x=x, y=y), val=NS(x=x[:64], y=y[:64]))
    torch.manual_seed(0)
    res = train_model(ViewNet(), data, TrainConfig(epochs=1, batch_size=32, lr=0.05), workdir=tmp_path, seed=0,
                      augment_cfg=AugmentConfig(crop_pad=1), progress=False)  # fmt: skip
    assert any(e.startswith("channels-last training refused by the model") for e in res.events), res.events
