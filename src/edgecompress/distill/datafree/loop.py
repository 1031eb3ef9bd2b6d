"""One data-free round, the student's KD steps, the pilot, and the construction of a run's state.

A round (the official ``datafree_kd.py`` epoch with ``ep_steps == kd_steps``): synthesize one batch with target labels
ŷ (FastDFKD: uniform random labels, sorted, as the official code; DeepInversion: 0, 1, …, K−1, 0, … as NVlabs'),
append it to the pool, then — once ``warmup_rounds`` are over — take ``student_steps_per_round`` SGD steps of
L_kd = T²·KL(softmax(f_t(x)/T) ‖ softmax(f_s(x)/T)) (Hinton et al., 2015) on pool batches, augmented like the
synthesis (random crop with zero padding, flip). The student's learning rate follows the official cosine schedule,
stepped once per round after warm-up: lr_r = lr_min + (lr − lr_min)·(1 + cos(π·(r − warmup)/(rounds − warmup)))/2.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.distill.datafree import checkpoint as ckpt
from edgecompress.distill.datafree.config import DataFreeConfig
from edgecompress.distill.datafree.deepinversion import DeepInversionSynthesizer
from edgecompress.distill.datafree.fastdfkd import FastDFKDSynthesizer
from edgecompress.distill.datafree.generator import Generator
from edgecompress.distill.datafree.inversion import InversionLoss, Pixels
from edgecompress.distill.datafree.plan import Plan, time_it
from edgecompress.distill.datafree.pool import Pool
from edgecompress.errors import TrainingError

log = logging.getLogger("edgecompress.distill.datafree.runner")  # one logger for the run's lines


def set_requires_grad(model: nn.Module, flag: bool) -> dict[str, bool]:
    """Set every parameter's requires_grad; returns the previous flags by name."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(flag)
    return before


def restore_requires_grad(model: nn.Module, before: dict[str, bool]) -> None:
    """Undo :func:`set_requires_grad`."""
    for n, p in model.named_parameters():
        p.requires_grad_(before.get(n, True))


@torch.no_grad()
def accuracy(model: nn.Module, x: Any, y: Any, batch: int = 512) -> float:
    """Top-1 accuracy on normalized arrays (eval mode; the model's mode is restored)."""
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    was = model.training
    model.eval()
    correct = sum(
        int((model(xt[i : i + batch]).argmax(1) == yt[i : i + batch]).sum()) for i in range(0, len(xt), batch)
    )
    model.train(was)
    return correct / max(1, len(xt))


def student_lr(cfg: DataFreeConfig, r: int) -> float:
    """The official cosine schedule at round ``r`` (>= warm-up)."""
    span = cfg.rounds - cfg.warmup_rounds
    t = min(max(0, r - cfg.warmup_rounds), span)
    return cfg.student_lr_min + (cfg.student_lr - cfg.student_lr_min) * (1 + math.cos(math.pi * t / span)) / 2


def kd_step(
    teacher: nn.Module, student: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, temperature: float
) -> float:
    """One SGD step of T²·KL(p_t^T ‖ p_s^T) on the (augmented, normalized) batch ``x``."""
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    loss = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean",
                    log_target=True) * temperature**2  # fmt: skip
    if not torch.isfinite(loss):
        raise TrainingError(
            "the student's KD loss became NaN/Inf during data-free distillation",
            "lower distill.datafree.student_lr or kd_temperature",
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def build_state(
    student: nn.Module,
    cfg: DataFreeConfig,
    shape: tuple[int, ...],
    seed: int,
    loss_fn: InversionLoss,
    pixels: Pixels,
    pool_dir: Path,
    *,
    fresh_pool: bool,
) -> ckpt.RunState:
    """A fresh run's state; the global RNG must be seeded just before (the generator's init draws from it)."""
    gen = torch.Generator().manual_seed(seed)
    student = copy.deepcopy(student)
    if cfg.reset_student_bn_stats:
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    synth: FastDFKDSynthesizer | DeepInversionSynthesizer
    if cfg.method == "fastdfkd":
        lr_z, lr_g = cfg.lrs()
        synth = FastDFKDSynthesizer(
            Generator(cfg.z_dim, shape, width=cfg.generator_width), loss_fn, pixels,
            k_inner_steps=cfg.k_inner_steps, lr_generator=lr_g, lr_z=lr_z, meta=cfg.meta, gen=gen,
            reset_l0_round=cfg.reset_l0_round,
        )  # fmt: skip
    else:
        synth = DeepInversionSynthesizer(
            loss_fn, pixels, shape, steps=cfg.di_steps, lr=cfg.di_lr, tv=cfg.di_tv, l2=cfg.di_l2,
            jitter=cfg.jitter(shape[1]), flip=cfg.flip, gen=gen,
        )  # fmt: skip
    opt = torch.optim.SGD(
        student.parameters(), lr=cfg.student_lr, momentum=cfg.student_momentum, weight_decay=cfg.student_weight_decay
    )
    return ckpt.RunState(gen=gen, student=student, synth=synth, pool=Pool(pool_dir, shape, fresh=fresh_pool), opt=opt)


def targets_for(cfg: DataFreeConfig, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """The round's target labels (see the module docstring)."""
    if cfg.method == "fastdfkd":
        return torch.randint(0, num_classes, (cfg.batch_size,), generator=gen).sort().values
    return torch.arange(cfg.batch_size) % num_classes


def pilot(
    state: ckpt.RunState, teacher: nn.Module, cfg: DataFreeConfig, num_classes: int, seed: int, shape: Sequence[int]
) -> Plan:
    """Time one synthesis step, one student step (and, for FastDFKD, one DeepInversion step) on throw-away copies.

    Runs in a forked RNG scope with its own generator: the run draws exactly what it would without the pilot.
    """
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(seed + 7919)
        targets = torch.arange(cfg.batch_size) % num_classes
        student = copy.deepcopy(state.student).eval()
        set_requires_grad(student, False)
        adv = student if cfg.weights()[2] > 0 else None
        t_syn = time_it(lambda: state.synth.time_step(targets, student=adv, gen=gen))
        t_di = None
        if cfg.method == "fastdfkd":
            di = DeepInversionSynthesizer(
                state.synth.loss, state.synth.pixels, shape, steps=1, lr=cfg.di_lr, tv=cfg.di_tv, l2=cfg.di_l2,
                jitter=cfg.jitter(shape[1]), flip=cfg.flip, gen=gen,
            )  # fmt: skip
            t_di = time_it(lambda: di.time_step(targets, student=None, gen=gen))
        student = copy.deepcopy(state.student).train()
        opt = torch.optim.SGD(student.parameters(), lr=0.0, momentum=cfg.student_momentum)
        x = torch.rand((cfg.student_batch_size, *shape), generator=gen)
        t_st = time_it(lambda: kd_step(teacher, student, opt, state.synth.pixels(x, gen), cfg.kd_temperature))
    state.synth.loss.hooks.last = [None] * len(state.synth.loss.hooks.last)
    return Plan(
        method=cfg.method, rounds=cfg.rounds, start_round=state.next_round, warmup_rounds=cfg.warmup_rounds,
        synthesis_steps_per_round=cfg.steps_per_round(), student_steps_per_round=cfg.student_steps_per_round,
        batch_size=cfg.batch_size, student_batch_size=cfg.student_batch_size, seconds_per_synthesis_step=t_syn,
        seconds_per_student_step=t_st, seconds_per_deepinversion_step=t_di,
    )  # fmt: skip


def run_round(
    r: int,
    state: ckpt.RunState,
    teacher: nn.Module,
    cfg: DataFreeConfig,
    num_classes: int,
    level: int,
    val: tuple[Any, Any] | None,
) -> None:
    """Round ``r``: synthesize, pool, train the student (after warm-up), evaluate (every ``eval_every``)."""
    student, pool = state.student, state.pool
    targets = targets_for(cfg, num_classes, state.gen)
    use_adv = cfg.weights()[2] > 0 and r >= cfg.warmup_rounds
    grads = set_requires_grad(student, False)
    student.eval()
    t0 = time.perf_counter()
    x, terms = state.synth.synthesize(targets, r, student=student if use_adv else None)
    dt_synth = time.perf_counter() - t0
    state.t_synth += dt_synth
    restore_requires_grad(student, grads)
    student.train()
    pool.add(x, targets)
    losses: list[float] = []
    lr = None
    if r >= cfg.warmup_rounds:
        lr = student_lr(cfg, r)
        for group in state.opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        for idx in pool.batches(cfg.student_steps_per_round, cfg.student_batch_size, state.gen):
            xb = state.synth.pixels(pool.pixels(idx), state.gen)
            losses.append(kd_step(teacher, student, state.opt, xb, cfg.kd_temperature))
        state.t_student += time.perf_counter() - t0
    acc = None
    if val is not None and ((r + 1) % cfg.eval_every == 0 or r + 1 == cfg.rounds) and r >= cfg.warmup_rounds:
        acc = accuracy(student, *val)
        state.curve.append((r + 1, acc))
    entry: dict[str, float | None] = {"round": float(r), **terms, "synthesis_seconds": dt_synth,
                                      "pool": float(len(pool)), "student_lr": lr,
                                      "student_loss": float(np.mean(losses)) if losses else None,
                                      "val_accuracy": acc}  # fmt: skip
    state.history.append(entry)
    log.log(
        level,
        "datafree %s round %d/%d: L_inv %.3f (bn %.3f, oh %.3f, adv %.3f), KD %s, pool %d%s",
        cfg.method, r + 1, cfg.rounds, terms["loss_inv"], terms["loss_bn"], terms["loss_oh"], terms["loss_adv"],
        "-" if not losses else f"{entry['student_loss']:.4f} (lr {lr:.4g})", len(pool),
        "" if acc is None else f", val acc {acc:.4f}",
    )  # fmt: skip
