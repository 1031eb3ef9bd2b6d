"""The ceiling of a data-free run: the same student recipe on real training images instead of the synthetic pool.

The real images go into a :class:`Pool` like synthesized ones, and the student takes exactly the steps a data-free
run with ``cfg`` takes after its warm-up — (rounds − warmup_rounds) × student_steps_per_round SGD steps of the same
T²-scaled KL to the teacher, the same cosine schedule stepped per round, the same crop/flip augmentation, the same
batch size — so the gap between the two students is what the synthetic transfer set costs.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.distill.datafree import loop
from edgecompress.distill.datafree.config import DataFreeConfig
from edgecompress.distill.datafree.inversion import Pixels
from edgecompress.distill.datafree.pool import Pool


@dataclass
class ReferenceResult:
    """The real-data KD student and what it cost."""

    student: nn.Module
    student_seconds: float
    steps: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    val_accuracy: float | None = None


def real_data_kd(
    teacher: nn.Module,
    student: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: DataFreeConfig,
    *,
    seed: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    val: tuple[Any, Any] | None = None,
) -> ReferenceResult:
    """KD of a copy of ``student`` from ``teacher`` on real images with the student recipe of ``cfg``.

    Args:
        teacher: the teacher (eval mode during the run; its mode is restored).
        student: the student (copied).
        images: uint8 pixels [N, C, H, W] (0..255), the real training images.
        labels: their labels (kept beside them; KD does not use them).
        cfg: the data-free config whose student recipe and budget to reproduce.
        seed: seeds the sampling and augmentation (and the global RNG, in a forked scope).
        mean, std: the teacher's input normalization.
        val: optional (x, y) normalized arrays for the curve (every ``eval_every`` rounds) and the final accuracy.
    """
    shape = tuple(int(v) for v in images.shape[1:])
    pixels = Pixels(shape[0], mean=mean, std=std, pad=cfg.pad(shape[1]), flip=cfg.flip)
    teacher_mode = teacher.training
    teacher.eval()
    curve: list[tuple[int, float]] = []
    seconds, steps = 0.0, 0
    try:
        with tempfile.TemporaryDirectory(prefix="datafree-real-") as tmp, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator().manual_seed(seed)
            pool = Pool(tmp, shape)
            for i in range(0, len(images), 4096):
                pool.add(torch.from_numpy(images[i : i + 4096]).float() / 255.0, torch.from_numpy(labels[i : i + 4096]))
            model = copy.deepcopy(student).train()
            opt = torch.optim.SGD(model.parameters(), lr=cfg.student_lr, momentum=cfg.student_momentum,
                                  weight_decay=cfg.student_weight_decay)  # fmt: skip
            for r in range(cfg.warmup_rounds, cfg.rounds):
                for group in opt.param_groups:
                    group["lr"] = loop.student_lr(cfg, r)
                t0 = time.perf_counter()
                for idx in pool.batches(cfg.student_steps_per_round, cfg.student_batch_size, gen):
                    loop.kd_step(teacher, model, opt, pixels(pool.pixels(idx), gen), cfg.kd_temperature)
                    steps += 1
                seconds += time.perf_counter() - t0
                if val is not None and ((r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds):
                    curve.append((r + 1, loop.accuracy(model, *val)))
    finally:
        teacher.train(teacher_mode)
    model.eval()
    return ReferenceResult(
        student=model,
        student_seconds=seconds,
        steps=steps,
        curve=curve,
        val_accuracy=loop.accuracy(model, *val) if val is not None else None,
    )
