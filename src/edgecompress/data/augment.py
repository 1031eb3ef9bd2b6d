"""Tensor-level training augmentation without torchvision, reproducible from an explicit ``torch.Generator``.

Random crop with zero padding (pad by ``p`` on every side, then crop the original size at a random offset per sample;
Krizhevsky et al. 2012 / He et al. 2016 CIFAR recipe) and optional horizontal flip with p = 0.5. The inputs are
already normalized, so the zero padding is the dataset mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from edgecompress.data.config import AugmentConfig


def crop_pad_for(crop_pad: int | str, height: int, width: int) -> int:
    """The crop padding in pixels: ``auto`` is one eighth of the smaller side, at least 1 (4 on 32x32, 1 on 8x8)."""
    if crop_pad == "auto":
        return max(1, round(min(height, width) / 8))
    return int(crop_pad)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch ``[N, C, H, W]``; the same generator state gives the same output.

    Args:
        x: normalized images.
        cfg: ``crop_pad`` (pixels, 0 = no crop, ``auto`` = a size-relative pad) and ``hflip``.
        generator: a CPU ``torch.Generator``, e.g. seeded with ``seed * 100003 + epoch``.

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    if x.ndim != 4:
        raise ValueError(f"augment_batch expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    out = x
    pad = crop_pad_for(cfg.crop_pad, h, w)
    if pad > 0 and n > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        di = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        dj = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
        rows = (di[:, None] + torch.arange(h, device=x.device))[:, :, None]  # [N, H, 1]
        cols = (dj[:, None] + torch.arange(w, device=x.device))[:, None, :]  # [N, 1, W]
        batch = torch.arange(n, device=x.device)[:, None, None]
        # clone, not .contiguous(): with one channel the permuted strides (HW, 1, W, 1) count as contiguous, and
        # convolutions would read them as channels-last (then a user's x.view(x.size(0), -1) fails)
        out = (
            padded.permute(0, 2, 3, 1)[batch, rows, cols]
            .permute(0, 3, 1, 2)
            .clone(memory_format=torch.contiguous_format)
        )  # [N, C, H, W]
    if cfg.hflip and n > 0:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out if out is not x else x.clone()
