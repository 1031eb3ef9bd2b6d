"""A small DCGAN-like generator z → image for data-free synthesis (after the generator of Fang et al.'s code)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Generator(nn.Module):
    """z [N, z_dim] → image [N, C, H, W] in the teacher's (normalized) input space.

    Linear projection to ``2·width × ⌈H/4⌉ × ⌈W/4⌉``, BN, two (upsample ×2, 3×3 conv, BN, LeakyReLU) blocks (2·width →
    width → width channels; the paper's code keeps 2·width in the first, which costs more than a small teacher), a 3×3
    conv to C channels and a sigmoid that gives pixels in [0, 1]; those are then normalized with the dataset's
    ``mean``/``std`` (fixed buffers), so the output matches what the teacher was trained on. Sizes that are not
    multiples of 4 are resized to (H, W) at the end.

    Args:
        z_dim: latent size.
        input_shape: (C, H, W) of the teacher's input.
        width: base channel width.
        mean, std: per-channel normalization of the teacher's inputs (default 0 and 1: the teacher takes [0, 1]).
    """

    mean: torch.Tensor  # buffers registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        z_dim: int,
        input_shape: Sequence[int],
        *,
        width: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        self.z_dim, self.out_shape = z_dim, (c, h, w)
        self.h0, self.w0 = max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))
        self.project = nn.Linear(z_dim, 2 * width * self.h0 * self.w0)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1),
        )
        mean_t = torch.as_tensor([0.0] * c if mean is None else list(mean), dtype=torch.float32)
        std_t = torch.as_tensor([1.0] * c if std is None else list(std), dtype=torch.float32)
        if mean_t.numel() not in (1, c) or std_t.numel() not in (1, c):
            raise ValueError(f"mean/std need 1 or {c} values, got {mean_t.numel()} and {std_t.numel()}")
        if bool((std_t <= 0).any()):
            raise ValueError("std values must be > 0")
        self.register_buffer("mean", mean_t.expand(c).clone().view(1, c, 1, 1))
        self.register_buffer("std", std_t.expand(c).clone().view(1, c, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], -1, self.h0, self.w0)
        x = self.blocks(x)
        if x.shape[-2:] != self.out_shape[1:]:
            x = F.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        return (torch.sigmoid(x) - self.mean) / self.std

    def reset_first_layer(self) -> None:
        """Re-initialize the projection (the paper code's 'reset_l0'): N(0, 0.02) weights, zero bias."""
        nn.init.normal_(self.project.weight, 0.0, 0.02)
        nn.init.zeros_(self.project.bias)
