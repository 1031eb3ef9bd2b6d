"""The generator of FastDFKD's authors' code: z → image in [0, 1] (zju-vipa/Fast-Datafree, ``models/generator.py``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Generator(nn.Module):
    """z [N, z_dim] → pixels [N, C, H, W] in [0, 1] (normalization and augmentation follow, as in the official code).

    ``l1``: Linear(z_dim → 2·ngf·⌈H/4⌉·⌈W/4⌉); ``conv_blocks``: BN, ×2 upsample, conv 3×3 (2·ngf → 2·ngf), BN,
    LeakyReLU(0.2), ×2 upsample, conv 3×3 (2·ngf → ngf), BN, LeakyReLU(0.2), conv 3×3 (ngf → C), sigmoid. Sizes that
    are not multiples of 4 are resized to (H, W) before the sigmoid.

    Args:
        z_dim: latent size (official 256).
        input_shape: (C, H, W) of the teacher's input.
        width: ngf (official 64).
    """

    def __init__(self, z_dim: int, input_shape: Sequence[int], *, width: int = 64) -> None:
        super().__init__()
        c, h, w = (int(v) for v in input_shape)
        self.z_dim, self.out_shape = z_dim, (c, h, w)
        self.h0, self.w0 = max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))
        self.l1 = nn.Sequential(nn.Linear(z_dim, 2 * width * self.h0 * self.w0))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, c, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.l1(z).view(z.shape[0], -1, self.h0, self.w0)
        x = self.conv_blocks(x)
        if x.shape[-2:] != self.out_shape[1:]:
            x = F.interpolate(x, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(x)

    @torch.no_grad()
    def reset_first_layer(self) -> None:
        """The official ``reset_l0``: ``l1.0`` (the projection) and ``conv_blocks.0`` (the first BN) get weights drawn
        from N(0, 0.02) and zero biases (draws from the global torch RNG)."""
        for module in (self.l1[0], self.conv_blocks[0]):
            assert isinstance(module, nn.Linear | nn.BatchNorm2d)
            nn.init.normal_(module.weight, 0.0, 0.02)
            nn.init.zeros_(module.bias)
