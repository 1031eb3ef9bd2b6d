"""The data-free distillation run shared by FastDFKD and DeepInversion: pilot, plan, then rounds of synthesize → pool
→ distill (``loop.py``), as the official ``datafree_kd.py`` runs them.

Synthesis and student training are timed separately (``synthesis_seconds`` / ``student_seconds``). A run is
deterministic on CPU given the seed (and the student's initial weights).

Resumable: with a ``workdir`` the pool lives in ``workdir/pool`` and ``workdir/checkpoint.pt`` is written atomically
every ``checkpoint_every`` rounds and after the last. It holds the round, the student and its SGD state, the
synthesizer (FastDFKD's meta-generator and its Adam; DeepInversion keeps nothing between rounds), the BN moving
averages, the pool's length, both random streams (the run's ``torch.Generator`` and the global torch RNG of the
forked RNG scope), the history and the timings, under a fingerprint of the config, seed, input shape, classes,
normalization and both models' weights. A later call with the same arguments — after an exception or a kill -9 —
truncates the pool to the checkpoint's length and continues; the student comes out bit-identical to an uninterrupted
run's. A checkpoint of another run, or one that cannot be read, is ignored with a warning (the run starts over). The
checkpoint is deleted once the result is saved (:meth:`DataFreeResult.save`); the pool stays (the transfer set).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress._io import atomic_path, atomic_write_json
from edgecompress.distill.datafree import checkpoint as ckpt
from edgecompress.distill.datafree import loop
from edgecompress.distill.datafree.checkpoint import CHECKPOINT
from edgecompress.distill.datafree.config import DataFreeConfig
from edgecompress.distill.datafree.inversion import InversionLoss, Pixels
from edgecompress.distill.datafree.plan import Plan
from edgecompress.errors import ConfigError, ModelError

log = loop.log
plan_log = logging.getLogger(f"{log.name}.plan")  # shown by the CLI even on a terminal (see cli.py)


@dataclass
class DataFreeResult:
    """What a data-free run produced.

    Attributes:
        student: the trained student (a copy; the student passed in is not modified).
        method: 'fastdfkd' or 'deepinversion'.
        synthesis_seconds: wall time spent synthesizing (inner loops, meta updates).
        student_seconds: wall time spent training the student.
        bank_x, bank_y: a sample of the final pool (at most 512 images in the teacher's normalized input space) and
            the teacher's predicted class of each (not the synthesis targets, which the teacher may not agree with):
            the INT8 calibration set and the per-class sample grid of a data-free pipeline run.
        plan: the plan logged before the run (pilot timings and estimates).
        history: one dict per round (inversion terms, student loss and lr, pool size, seconds, val accuracy).
        curve: (rounds done, val accuracy) every ``eval_every`` rounds after warm-up (empty without ``val``).
        val_accuracy: the student's accuracy on ``val`` when given, else None.
        teacher_val_accuracy: the teacher's accuracy on ``val`` when given, else None.
        pool_images: images in the pool (every round's batch).
        config: the config used, as a dict.
        resumed_from_round: the rounds a checkpoint of an interrupted run had done (0: a fresh start).
        figures: PNGs written by :meth:`save` (name → path).
    """

    student: nn.Module
    method: str
    synthesis_seconds: float
    student_seconds: float
    bank_x: torch.Tensor
    bank_y: torch.Tensor
    plan: Plan
    history: list[dict[str, float | None]] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    val_accuracy: float | None = None
    teacher_val_accuracy: float | None = None
    pool_images: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    resumed_from_round: int = 0
    figures: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary (no tensors, no per-round history): what the report shows."""
        di = self.plan.deepinversion_seconds()
        return {
            "method": self.method,
            "plan": self.plan.text(),
            "rounds": self.plan.rounds,
            "synthesis_seconds": self.synthesis_seconds,
            "student_seconds": self.student_seconds,
            "pool_images": self.pool_images,
            "synthesis_images_per_second": self.pool_images / self.synthesis_seconds
            if self.synthesis_seconds
            else None,
            "deepinversion_estimate_seconds": di,
            "deepinversion_estimate_speedup": di / self.synthesis_seconds if di and self.synthesis_seconds else None,
            "val_accuracy": self.val_accuracy,
            "teacher_val_accuracy": self.teacher_val_accuracy,
            "curve": [list(c) for c in self.curve],
            "resumed_from_round": self.resumed_from_round,
            "config": self.config,
        }

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write student.pt, bank_sample.pt ({'x','y'}), datafree.json (summary, plan, history) and, with a curve,
        curve.png (accuracy against rounds) atomically into ``directory``."""
        d = Path(directory)
        out = {"student": d / "student.pt", "bank_sample": d / "bank_sample.pt", "summary": d / "datafree.json"}
        with atomic_path(out["student"]) as tmp:
            torch.save(self.student.state_dict(), tmp)
        with atomic_path(out["bank_sample"]) as tmp:
            torch.save({"x": self.bank_x, "y": self.bank_y}, tmp)
        if self.curve:
            from edgecompress.distill.datafree.grid import accuracy_curve

            label = f"{self.method}: {self.plan.rounds} rounds"
            out["curve"] = accuracy_curve({label: self.curve}, d / "curve.png", teacher=self.teacher_val_accuracy)
            self.figures["accuracy_vs_rounds"] = out["curve"]
        atomic_write_json(out["summary"], {**self.summary(), "plan_detail": self.plan.to_dict(),
                                           "history": self.history})  # fmt: skip
        return out


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


def _check_args(shape: tuple[int, ...], num_classes: int, mean: Any, std: Any) -> None:
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"input_shape must be (C, H, W) with positive sizes, got {shape}", "pass (C, H, W)")
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
        seed: seeds the generator's init, latents, labels, augmentation and pool sampling.
        workdir: if given, the pool (``pool/``) and a checkpoint (``checkpoint.pt``) live there, a later call with the
            same arguments resumes, and the result is saved there (see :meth:`DataFreeResult.save`); without it the
            pool is a temporary folder removed on return.
        progress: log the plan and a line per round at INFO (else DEBUG; the plan is INFO either way).
        val: optional (x, y) arrays (normalized NCHW float32, int64 labels): the student's accuracy every
            ``cfg.eval_every`` rounds (the curve) and at the end.
        mean, std: the dataset normalization of the teacher's input (``Splits.preprocess``); synthesized pixels in
            [0, 1] are normalized with them. Default 0 and 1 (teacher takes [0, 1] pixels).

    Returns:
        The :class:`DataFreeResult`.

    Raises:
        ModelError: the teacher has no BatchNorm2d (and ``cfg.allow_no_bn`` is false), or a model's shapes are wrong.
        ConfigError: ``mean``/``std`` do not fit the input channels.
        TrainingError: the student's loss became NaN/Inf.
    """
    shape = tuple(int(v) for v in input_shape)
    _check_args(shape, num_classes, mean, std)
    _check_model(teacher, "teacher", shape, num_classes)  # type: ignore[arg-type]
    _check_model(student, "student", shape, num_classes)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="datafree-pool-") as tmp:
        ckpts = None
        root = Path(tmp)
        if workdir is not None:
            root = Path(workdir)
            fp = ckpt.fingerprint(teacher, student, cfg, shape, num_classes, seed, mean, std)
            ckpts = ckpt.Checkpoints(root / CHECKPOINT, fp, cfg.checkpoint_every)
        # the global RNG (generator init, reset_l0, dropout in a student) is seeded inside a fork and restored on return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result = _run(teacher, student, cfg, shape, num_classes, seed, progress, val, mean, std, ckpts, root)
    if ckpts is not None:
        result.save(ckpts.path.parent)
        ckpts.path.unlink(missing_ok=True)  # finished: a later run in this folder starts fresh
    return result


def plan_datafree(
    teacher: nn.Module,
    student: nn.Module,
    cfg: DataFreeConfig,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Plan:
    """The plan of a run without running it: the pilot alone (one synthesis step, one student step; seconds).

    What :func:`datafree_distill` logs before its first round; use it to choose a budget that fits the machine.
    """
    shape = tuple(int(v) for v in input_shape)
    _check_args(shape, num_classes, mean, std)
    lambda_bn, lambda_oh, lambda_adv = cfg.weights()
    loss_fn = InversionLoss(teacher, lambda_bn=lambda_bn, lambda_oh=lambda_oh, lambda_adv=lambda_adv,
                            allow_no_bn=cfg.allow_no_bn)  # fmt: skip
    pixels = Pixels(shape[0], mean=mean, std=std, pad=cfg.pad(shape[1]), flip=cfg.flip)
    teacher_mode = teacher.training
    teacher_grad = loop.set_requires_grad(teacher, False)
    teacher.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="datafree-plan-") as tmp, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            state = loop.build_state(student, cfg, shape, seed, loss_fn, pixels, Path(tmp), fresh_pool=True)
            with loss_fn:
                return loop.pilot(state, teacher, cfg, num_classes, seed, shape)
    finally:
        teacher.train(teacher_mode)
        loop.restore_requires_grad(teacher, teacher_grad)


def _start(cfg: DataFreeConfig, seed: int, ckpts: ckpt.Checkpoints | None, fresh: functools.partial) -> ckpt.RunState:
    """A fresh state, or the state of this run's checkpoint when there is one that loads."""
    ck = ckpt.read(ckpts) if ckpts is not None else None
    if ckpts is None or ck is None:
        return fresh(fresh_pool=True)
    state = fresh(fresh_pool=False)
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
        return fresh(fresh_pool=True)
    log.info("resuming data-free %s from %s at round %d/%d", cfg.method, ckpts.path, state.next_round, cfg.rounds)
    return state


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
    ckpts: ckpt.Checkpoints | None,
    root: Path,
) -> DataFreeResult:
    lambda_bn, lambda_oh, lambda_adv = cfg.weights()
    bn_mmt = cfg.bn_momentum if cfg.method == "fastdfkd" else 0.0
    loss_fn = InversionLoss(teacher, lambda_bn=lambda_bn, lambda_oh=lambda_oh, lambda_adv=lambda_adv,
                            bn_momentum=bn_mmt, allow_no_bn=cfg.allow_no_bn)  # fmt: skip
    if not loss_fn.hooks.layers:
        log.warning("teacher has no BatchNorm2d: running the reduced inversion loss without L_bn (allow_no_bn)")
    pixels = Pixels(shape[0], mean=mean, std=std, pad=cfg.pad(shape[1]), flip=cfg.flip)
    fresh = functools.partial(loop.build_state, student, cfg, shape, seed, loss_fn, pixels, root / "pool")
    teacher_mode = teacher.training
    teacher_grad = loop.set_requires_grad(teacher, False)
    teacher.eval()
    level = logging.INFO if progress else logging.DEBUG
    try:
        state = _start(cfg, seed, ckpts, fresh)
        resumed_from = state.next_round
        with loss_fn:
            plan = loop.pilot(state, teacher, cfg, num_classes, seed, shape)
            plan_log.info("datafree plan: %s", plan.text())
            for r in range(state.next_round, cfg.rounds):
                loop.run_round(r, state, teacher, cfg, num_classes, level, val)
                state.next_round = r + 1
                if ckpts is not None and (state.next_round % ckpts.every == 0 or r + 1 == cfg.rounds):
                    ckpt.save(state, ckpts)
        t_acc = loop.accuracy(teacher, *val) if val is not None else None
        pool, student_out = state.pool, state.student
        keep = torch.randperm(len(pool), generator=state.gen)[:512]
        bank_x = pixels.normalize(pool.pixels(keep))
        with torch.no_grad():
            bank_y = teacher(bank_x).argmax(1)  # what the student learns from them (synthesis targets can disagree)
    finally:
        teacher.train(teacher_mode)
        loop.restore_requires_grad(teacher, teacher_grad)
    student_out.eval()
    return DataFreeResult(
        student=student_out,
        method=cfg.method,
        synthesis_seconds=state.t_synth,
        student_seconds=state.t_student,
        bank_x=bank_x,
        bank_y=bank_y,
        plan=plan,
        history=state.history,
        curve=list(state.curve),
        val_accuracy=loop.accuracy(student_out, *val) if val is not None else None,
        teacher_val_accuracy=t_acc,
        pool_images=len(pool),
        config=cfg.model_dump(mode="json"),
        resumed_from_round=resumed_from,
    )
