"""The trainer's seeded schedule: keyed random streams, epoch batches, learning rate per step, optimizer, augmentation.

Every source of randomness is keyed by (seed, *keys) through SHA-256, so a stream re-derived at the start of an epoch
is the same in a fresh run and in a resumed one (see ``distill.trainer``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from edgecompress.distill.config import TrainConfig

Augment = Callable[[Tensor, torch.Generator], Tensor]


def key_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def keyed_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``key_seed(seed, *keys)``."""
    return torch.Generator().manual_seed(key_seed(seed, *keys))


def make_augment(augment_cfg: Any) -> Augment | None:
    if augment_cfg is None:
        return None
    if callable(augment_cfg):
        return augment_cfg
    if not getattr(augment_cfg, "crop_pad", 0) and not getattr(augment_cfg, "hflip", False):
        return None
    from edgecompress.data.augment import augment_batch  # one definition of the augmentation for the package

    return lambda x, g: augment_batch(x, augment_cfg, g)


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int, peak: float | None = None) -> float:
    """Learning rate at optimizer step ``step``: linear warm-up to ``peak`` (default ``cfg.lr``), then cosine to 0
    (or constant)."""
    if peak is None:
        if not isinstance(cfg.lr, int | float):
            raise TypeError(f"lr_at needs a numeric peak learning rate, got {cfg.lr!r} (resolve lr: auto first)")
        peak = float(cfg.lr)
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return peak * (step + 1) / warm
    if cfg.schedule == "constant" or total <= warm:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


def epoch_batches(n: int, cfg: TrainConfig, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[Tensor]:
    """This rank's index batches for ``epoch``: a global permutation keyed by (seed, epoch), cut into global batches
    of ``batch_size``, each strided over the ranks (a tail batch too small for BatchNorm on every rank is dropped)."""
    perm = torch.randperm(n, generator=keyed_generator(seed, "shuffle", epoch))
    batches = list(perm.split(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2 * world:
        batches.pop()
    if cfg.max_steps_per_epoch is not None:
        batches = batches[: cfg.max_steps_per_epoch]
    return [b[rank::world] for b in batches]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer (its learning rate is set per step); no weight decay on biases and norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=0.0)


def probe_batches(n: int, batch_size: int, steps: int, seed: int) -> list[Tensor]:
    """``steps`` full index batches for the learning-rate range test, from permutations keyed by ``seed``."""
    size, k = min(batch_size, n), 0
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=keyed_generator(seed, "lr_range", k))
        out += [b for b in perm.split(size) if len(b) == size]
        k += 1
    return out[:steps]


__all__ = [
    "Augment",
    "epoch_batches",
    "key_seed",
    "keyed_generator",
    "lr_at",
    "make_augment",
    "make_optimizer",
    "probe_batches",
]
