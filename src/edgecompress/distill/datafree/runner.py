"""The data-free distillation loop shared by FastDFKD and DeepInversion: synthesize, bank, distill — interleaved.

For b = 1..B: synthesize a batch with target labels ŷ against L_inv (the adversarial term uses the current student
after ``adv_warmup_batches``), add it to the bounded memory bank, then take ``student_steps_per_batch`` KD steps on
bank samples: L_kd = T²·KL(softmax(f_t(x)/T) ‖ softmax(f_s(x)/T)) (Hinton et al., 2015), x drawn uniformly from the
bank and augmented like the synthesis batches. Optionally ``student_epochs`` more passes over the final bank.

Synthesis and student training are timed separately (``synthesis_seconds`` / ``student_seconds``). A run is
deterministic on CPU given the seed (and the student's initial weights).

Resumable: with a ``workdir``, ``workdir/checkpoint.pt`` is written atomically every ``checkpoint_every`` synthesized
batches, at the end of synthesis and after each student epoch. It holds the loop position, the student and its
optimizer, the synthesizer (FastDFKD's meta-generator; DeepInversion keeps nothing between batches), the memory bank,
both random streams (the run's ``torch.Generator`` and the global torch RNG of the forked RNG scope), the history and
the timings, under a fingerprint of the config, seed, input shape, classes, normalization and the teacher's and
student's weights. A later call with the same arguments continues from it, and the student comes out bit-identical to
an uninterrupted run's; a checkpoint of another run, or one that cannot be read, is ignored with a warning (the run
starts over). The checkpoint is deleted once the result is saved (``DataFreeResult.save``).
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress._io import atomic_path, atomic_write_json
from edgecompress.distill.datafree import checkpoint as ckpt
from edgecompress.distill.datafree.bank import MemoryBank
from edgecompress.distill.datafree.checkpoint import CHECKPOINT
from edgecompress.distill.datafree.config import DataFreeConfig
from edgecompress.distill.datafree.deepinversion import DeepInversionSynthesizer
from edgecompress.distill.datafree.fastdfkd import FastDFKDSynthesizer
from edgecompress.distill.datafree.generator import Generator
from edgecompress.distill.datafree.inversion import InversionLoss, augment_batch
from edgecompress.errors import ConfigError, ModelError, TrainingError

log = logging.getLogger(__name__)


@dataclass
class DataFreeResult:
    """What a data-free run produced.

    Attributes:
        student: the trained student (a copy; the student passed in is not modified).
        method: 'fastdfkd' or 'deepinversion'.
        synthesis_seconds: wall time spent synthesizing (inner loops, meta updates).
        student_seconds: wall time spent training the student.
        bank_x, bank_y: a sample of the final bank (at most 512 images in the teacher's input space, target labels).
        history: one dict per synthesized batch (inversion terms, student loss, bank size, seconds).
        val_accuracy: the student's accuracy on ``val`` when given, else None.
        config: the config used, as a dict.
        resumed_from_batch: the synthesized batches a checkpoint of an interrupted run had done (0: a fresh start).
    """

    student: nn.Module
    method: str
    synthesis_seconds: float
    student_seconds: float
    bank_x: torch.Tensor
    bank_y: torch.Tensor
    history: list[dict[str, float | None]] = field(default_factory=list)
    val_accuracy: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    resumed_from_batch: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (no tensors)."""
        return {
            "method": self.method,
            "synthesis_seconds": self.synthesis_seconds,
            "student_seconds": self.student_seconds,
            "val_accuracy": self.val_accuracy,
            "bank_sample": int(self.bank_x.shape[0]),
            "config": self.config,
            "resumed_from_batch": self.resumed_from_batch,
            "history": self.history,
        }

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write student.pt (state_dict), bank_sample.pt ({'x','y'}) and datafree.json atomically into ``directory``."""
        d = Path(directory)
        out = {"student": d / "student.pt", "bank_sample": d / "bank_sample.pt", "summary": d / "datafree.json"}
        with atomic_path(out["student"]) as tmp:
            torch.save(self.student.state_dict(), tmp)
        with atomic_path(out["bank_sample"]) as tmp:
            torch.save({"x": self.bank_x, "y": self.bank_y}, tmp)
        atomic_write_json(out["summary"], self.summary())
        return out


def _kd_step(
    teacher: nn.Module,
    student: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    *,
    temperature: float,
    augment: bool,
    flip: bool,
    gen: torch.Generator,
) -> float:
    if augment:
        x = augment_batch(x, gen=gen, flip=flip)
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    loss = F.kl_div(
        F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean", log_target=True
    )
    loss = loss * temperature**2
    if not torch.isfinite(loss):
        raise TrainingError(
            "the student's KD loss became NaN/Inf during data-free distillation",
            "lower distill.datafree.student_lr or kd_temperature",
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


@torch.no_grad()
def _accuracy(model: nn.Module, x: Any, y: Any, batch: int = 512) -> float:
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    was = model.training
    model.eval()
    correct = sum(
        int((model(xt[i : i + batch]).argmax(1) == yt[i : i + batch]).sum()) for i in range(0, len(xt), batch)
    )
    model.train(was)
    return correct / max(1, len(xt))


def _check_model(model: nn.Module, name: str, input_shape: tuple[int, int, int], num_classes: int) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as exc:  # a shape mismatch inside the user's model
        raise ModelError(
            f"the {name} fails on an input of shape (N, {', '.join(map(str, input_shape))}): {exc}",
            "pass the input_shape (C, H, W) the model was built for",
        ) from exc
    finally:
        model.train(was)
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise ModelError(
            f"the {name} returns shape {tuple(out.shape)}, expected logits (N, {num_classes})",
            "pass the model's num_classes, or a model that returns [N, num_classes] logits",
        )


def _set_requires_grad(model: nn.Module, flag: bool) -> dict[str, bool]:
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(flag)
    return before


def _restore_requires_grad(model: nn.Module, before: dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(before.get(n, True))


def datafree_distill(
    teacher: nn.Module,
    student: nn.Module,
    cfg: DataFreeConfig,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int,
    workdir: str | Path | None = None,
    progress: bool = True,
    val: tuple[Any, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataFreeResult:
    """Distill ``teacher`` into a copy of ``student`` without data, by FastDFKD or DeepInversion synthesis.

    Args:
        teacher: classifier with BatchNorm2d layers, returning logits [N, num_classes]; kept in eval mode, never
            updated (its BN statistics included); its train mode and requires_grad flags are restored on return.
        student: the student to train (copied; the argument is left untouched).
        cfg: the data-free config.
        input_shape: (C, H, W) of the teacher's input.
        num_classes: number of classes K.
        seed: seeds the generator's init, latents, labels, augmentation and bank sampling.
        workdir: if given, the run keeps a checkpoint there (``checkpoint.pt``, every ``cfg.checkpoint_every``
            batches) and a later call with the same arguments resumes from it; the result is saved there (see
            :meth:`DataFreeResult.save`) and the checkpoint then deleted.
        progress: log a line per synthesized batch at INFO (else DEBUG).
        val: optional (x, y) arrays (normalized NCHW float32, int64 labels) to report the student's accuracy on.
        mean, std: the dataset normalization of the teacher's input (``Splits.preprocess``); the generator emits
            pixels in [0, 1] normalized with them. Default 0 and 1 (teacher takes [0, 1] pixels).

    Returns:
        The :class:`DataFreeResult`.

    Raises:
        ModelError: the teacher has no BatchNorm2d (and ``cfg.allow_no_bn`` is false), or a model's shapes are wrong.
        ConfigError: ``mean``/``std`` do not fit the input channels.
        TrainingError: the student's loss became NaN/Inf.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(
            f"input_shape must be (C, H, W) with positive sizes, got {tuple(input_shape)}", "pass (C, H, W)"
        )
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}", "pass the number of classes of the teacher")
    for name, vals in (("mean", mean), ("std", std)):
        if vals is not None and len(vals) not in (1, shape[0]):
            raise ConfigError(
                f"{name} has {len(vals)} values for {shape[0]} input channel(s)",
                f"pass one {name} value per channel (the dataset's normalization)",
            )
    if std is not None and min(std) <= 0:
        raise ConfigError(f"std must be > 0, got {list(std)}", "pass the dataset's per-channel standard deviation")
    _check_model(teacher, "teacher", shape, num_classes)  # type: ignore[arg-type]
    _check_model(student, "student", shape, num_classes)  # type: ignore[arg-type]
    ckpts = None
    if workdir is not None:
        fingerprint = ckpt.fingerprint(teacher, student, cfg, shape, num_classes, seed, mean, std)
        ckpts = ckpt.Checkpoints(Path(workdir) / CHECKPOINT, fingerprint, cfg.checkpoint_every)
    # the global RNG (generator init, dropout in a student) is seeded inside a fork and restored on return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = _run(teacher, student, cfg, shape, num_classes, seed, progress, val, mean, std, ckpts)
    if ckpts is not None:
        result.save(ckpts.path.parent)
        ckpts.path.unlink(missing_ok=True)  # finished: a later run in this folder starts fresh
    return result


def _build_state(
    student: nn.Module,
    cfg: DataFreeConfig,
    shape: tuple[int, ...],
    seed: int,
    loss_fn: InversionLoss,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> ckpt.RunState:
    """A fresh run's state; the global RNG must be seeded just before (the generator's init draws from it)."""
    gen = torch.Generator().manual_seed(seed)
    student = copy.deepcopy(student)
    if cfg.reset_student_bn_stats:
        for m in student.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    if cfg.method == "fastdfkd":
        synth: FastDFKDSynthesizer | DeepInversionSynthesizer = FastDFKDSynthesizer(
            Generator(cfg.z_dim, shape, width=cfg.generator_width, mean=mean, std=std),
            loss_fn,
            k_inner_steps=cfg.k_inner_steps,
            beta_meta=cfg.beta_meta,
            lr_generator=cfg.lr_generator,
            lr_z=cfg.lr_z,
            augment=cfg.augment,
            flip=cfg.flip,
            gen=gen,
            reset_l0_at_batch=cfg.reset_l0_at_batch,
        )
    else:
        synth = DeepInversionSynthesizer(
            loss_fn,
            shape,
            steps=cfg.deepinversion_steps,
            lr=cfg.lr_pixels,
            mean=mean,
            std=std,
            augment=cfg.augment,
            flip=cfg.flip,
            gen=gen,
        )
    bank = MemoryBank(cfg.bank_size, policy=cfg.bank_policy, gen=gen)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.student_lr)
    return ckpt.RunState(gen=gen, student=student, synth=synth, bank=bank, opt=opt)


def _start(
    fresh: Callable[[], ckpt.RunState], cfg: DataFreeConfig, seed: int, ckpts: ckpt.Checkpoints | None
) -> ckpt.RunState:
    """A fresh state (``fresh()``), or the state of this run's checkpoint when there is one that loads."""
    state = fresh()
    ck = ckpt.read(ckpts) if ckpts is not None else None
    if ckpts is None or ck is None:
        return state
    try:
        ckpt.restore(state, ck, cfg)
    except Exception as exc:  # matching fingerprint but unusable contents: start over from a clean state
        log.warning(
            "ignoring the data-free checkpoint %s: its contents do not fit this run (%s: %s); starting over",
            ckpts.path,
            type(exc).__name__,
            str(exc)[:160],
        )
        torch.manual_seed(seed)  # the fresh state's generator init draws from the global RNG, as on a first start
        return fresh()
    log.info(
        "resuming data-free %s from %s at batch %d/%d, student epoch %d/%d",
        cfg.method,
        ckpts.path,
        state.next_batch,
        cfg.synthesis_batches,
        state.epochs_done,
        cfg.student_epochs,
    )
    return state


def _synthesis_step(
    b: int, state: ckpt.RunState, teacher: nn.Module, cfg: DataFreeConfig, num_classes: int, level: int
) -> None:
    """Synthesize batch ``b``, bank it and take the interleaved student steps; appends to the history."""
    student, bank = state.student, state.bank
    offset = int(torch.randint(0, num_classes, (1,), generator=state.gen))
    targets = (torch.arange(cfg.batch_size) + offset) % num_classes  # balanced classes
    use_adv = cfg.lambda_adv > 0 and b >= cfg.adv_warmup_batches
    student_grad = _set_requires_grad(student, False)
    student.eval()
    t0 = time.perf_counter()
    x, terms = state.synth.synthesize(targets, student=student if use_adv else None)
    dt_synth = time.perf_counter() - t0
    state.t_synth += dt_synth
    _restore_requires_grad(student, student_grad)
    bank.add(x, targets)
    student.train()
    t0 = time.perf_counter()
    kd = _kd_args(cfg, state.gen)
    s_losses = [
        _kd_step(teacher, student, state.opt, bank.sample(cfg.student_batch_size)[0], **kd)
        for _ in range(cfg.student_steps_per_batch)
    ]
    state.t_student += time.perf_counter() - t0
    entry: dict[str, float | None] = {
        "batch": float(b),
        **terms,
        "synthesis_seconds": dt_synth,
        "bank": float(len(bank)),
    }
    entry["student_loss"] = float(np.mean(s_losses)) if s_losses else None
    state.history.append(entry)
    log.log(
        level,
        "datafree %s batch %d/%d: L_inv %.3f (bn %.3f, oh %.3f, adv %.3f), KD %s, bank %d",
        cfg.method,
        b + 1,
        cfg.synthesis_batches,
        terms["loss_inv"],
        terms["loss_bn"],
        terms["loss_oh"],
        terms["loss_adv"],
        "-" if not s_losses else f"{entry['student_loss']:.4f}",
        len(bank),
    )


def _student_epoch(ep: int, state: ckpt.RunState, teacher: nn.Module, cfg: DataFreeConfig, level: int) -> None:
    """One KD pass over the final bank, in a random order."""
    bank = state.bank
    assert bank.x is not None
    state.student.train()
    t0 = time.perf_counter()
    kd = _kd_args(cfg, state.gen)
    losses = [
        _kd_step(teacher, state.student, state.opt, bank.x[idx], **kd) for idx in bank.epoch(cfg.student_batch_size)
    ]
    state.t_student += time.perf_counter() - t0
    log.log(
        level, "datafree student epoch %d/%d on the bank: KD %.4f", ep + 1, cfg.student_epochs, float(np.mean(losses))
    )


def _kd_args(cfg: DataFreeConfig, gen: torch.Generator) -> dict[str, Any]:
    return {"temperature": cfg.kd_temperature, "augment": cfg.augment, "flip": cfg.flip, "gen": gen}


def _run(
    teacher: nn.Module,
    student: nn.Module,
    cfg: DataFreeConfig,
    shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    progress: bool,
    val: tuple[Any, Any] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    ckpts: ckpt.Checkpoints | None = None,
) -> DataFreeResult:
    loss_fn = InversionLoss(
        teacher,
        lambda_bn=cfg.lambda_bn,
        lambda_oh=cfg.lambda_oh,
        lambda_adv=cfg.lambda_adv,
        lambda_tv=cfg.lambda_tv,
        adv_divergence=cfg.adv_divergence,
        allow_no_bn=cfg.allow_no_bn,
    )
    if not loss_fn.hooks.layers:
        log.warning("teacher has no BatchNorm2d: running the reduced inversion loss without L_bn (allow_no_bn)")
    fresh = functools.partial(_build_state, student, cfg, shape, seed, loss_fn, mean, std)
    state = _start(fresh, cfg, seed, ckpts)
    resumed_from = state.next_batch
    teacher_mode = teacher.training
    teacher_grad = _set_requires_grad(teacher, False)
    teacher.eval()
    level = logging.INFO if progress else logging.DEBUG
    try:
        with loss_fn:
            for b in range(state.next_batch, cfg.synthesis_batches):
                _synthesis_step(b, state, teacher, cfg, num_classes, level)
                state.next_batch = b + 1
                if ckpts is not None and (state.next_batch % ckpts.every == 0 or b + 1 == cfg.synthesis_batches):
                    ckpt.save(state, ckpts)
            for ep in range(state.epochs_done, cfg.student_epochs):
                _student_epoch(ep, state, teacher, cfg, level)
                state.epochs_done = ep + 1
                if ckpts is not None:
                    ckpt.save(state, ckpts)
    finally:
        teacher.train(teacher_mode)
        _restore_requires_grad(teacher, teacher_grad)
    student, bank = state.student, state.bank
    student.eval()
    assert bank.x is not None and bank.y is not None
    keep = torch.randperm(len(bank), generator=state.gen)[:512]
    return DataFreeResult(
        student=student,
        method=cfg.method,
        synthesis_seconds=state.t_synth,
        student_seconds=state.t_student,
        bank_x=bank.x[keep].clone(),
        bank_y=bank.y[keep].clone(),
        history=state.history,
        val_accuracy=_accuracy(student, *val) if val is not None else None,
        config=cfg.model_dump(mode="json"),
        resumed_from_batch=resumed_from,
    )
