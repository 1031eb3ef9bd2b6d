"""Train one network (from labels or by distillation): seeded, resumable, selected on val, DDP-aware.

Determinism: every source of randomness is keyed by (seed, epoch[, rank]) — the shuffling permutation, the
augmentation generator and the global torch seed (dropout) are re-derived at the start of each epoch. A checkpoint
written at the end of each epoch therefore holds all the state needed to continue (model, optimizer, step, best
weights, history); a run killed mid-epoch and called again repeats that epoch and ends bit-identical on CPU.

Self-tuning (see ``distill.lr_range`` and ``distill.recovery``): with ``train.lr: auto`` the peak learning rate comes
from a short seeded range test on a copy of the model; every step's gradient norm is clipped to ``train.grad_clip``;
an epoch whose loss turns NaN/Inf, whose val NLL explodes or whose val accuracy is at chance is undone — the last
good state is restored and the learning rate lowered — at most ``train.max_recoveries`` times, each recovery an
event in the result. The chosen rate, the recovery count, the learning-rate scale, the events and the state to go
back to are all in the checkpoint, so a resumed run stays bit-identical to an uninterrupted one.

Teacher-logit caches (the teacher's forward dominates KD cost):
* Without augmentation the teacher sees each training sample unchanged every epoch, and in eval mode it is a pure
  function of its input, so its logits are computed once per sample (one batched ``inference_mode`` pass) and
  indexed per step. Valid for any number of epochs and across a resume.
* With augmentation the views differ each epoch, so each step runs the teacher on its batch — on CPU through a
  frozen ONNX Runtime graph of it (BN folded, fused kernels; checked against eager, ``distill.fast_eval``), or in
  bf16 where the CPU has AMX, the teacher is big enough and bf16 is faithful (``distill.teacher_precision``;
  the choice is in the checkpoint, so a resume keeps it).
* Evaluation logits (val each epoch, the untrained reference, the cache) go through the same frozen graph when the
  split has >= ``fast_eval.MIN_ROWS`` rows, else eager ``inference_mode``. On CPU the trained model runs channels-last.
  All of these are pure functions of their inputs, so seeding and resumes stay bit-identical; ``fast=False`` is eager.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgecompress._io import atomic_write_json, sha256_json
from edgecompress.distill.config import LossConfig, TrainConfig
from edgecompress.distill.evaluate import model_device, predict_logits
from edgecompress.distill.fast_eval import Runner, channels_last_problem, fast_logits, frozen_runner, set_layout
from edgecompress.distill.inputs import Inputs, data_hash, split_arrays
from edgecompress.distill.losses import build_loss
from edgecompress.distill.recovery import majority_share
from edgecompress.distill.steps import (
    epoch_batches,
    key_seed,
    keyed_generator,
    lr_at,
    make_augment,
    make_optimizer,
    probe_batches,
)
from edgecompress.distill.targets import BatchLoss, TeacherTargets
from edgecompress.distill.teacher_precision import FIDELITY_ROWS, choose_teacher_runner, resume_runner
from edgecompress.distill.train_hooks import Checkpoint, EpochProgress, RangeTest, Recovery, TrainHook, UsualLayout
from edgecompress.distill.train_loop import fit
from edgecompress.distill.train_state import TrainRun, TrainState, fresh_state, load_checkpoint, resume_state
from edgecompress.errors import CheckpointError, DataError, TrainingError
from edgecompress.models.checkpoint import state_hash

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RESULT = "train_result.json"
_make_augment, _make_optimizer = make_augment, make_optimizer  # the old private names (now in distill.steps)


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`; ``model`` holds the best-val weights."""

    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    lr: float | None = None  # the peak learning rate before any recovery lowered it (chosen when train.lr is auto)
    lr_range: dict[str, Any] | None = None  # the range test's record (``LRRangeResult.to_dict``) when lr is auto
    teacher_precision: dict[str, Any] | None = None  # what the KD teacher ran in (``TeacherPrecision.to_dict``)
    events: list[str] = field(default_factory=list)  # one line per recovery, with the numbers, for the report
    recoveries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the model)."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "resumed_from_epoch": self.resumed_from_epoch,
            "seconds": self.seconds,
            "lr": self.lr,
            "lr_range": self.lr_range,
            "teacher_precision": self.teacher_precision,
            "recoveries": self.recoveries,
            "events": self.events,
            "history": self.history,
        }


def _dist_context(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initializes the process group from env (torchrun) when WORLD_SIZE > 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _training_layout(model: nn.Module, sample: Tensor, fast: bool) -> tuple[torch.memory_format, str | None]:
    """Channels-last when ``fast`` on CPU and the model trains in it (a probe step on a copy), else NCHW; the second
    value is the one-line event when the model refused it (a user's ``x.view`` after a conv, say)."""
    if not fast or model_device(model).type != "cpu" or sample.ndim != 4 or len(sample) < 2:
        return torch.contiguous_format, None
    problem = channels_last_problem(model, sample)
    if problem is None:
        return torch.channels_last, None
    return torch.contiguous_format, f"channels-last training refused by the model ({problem}): trained in NCHW"


def train_model(
    model: nn.Module,
    splits: Any,
    cfg: TrainConfig,
    *,
    workdir: Path,
    seed: int,
    teacher: nn.Module | None = None,
    loss: LossConfig | None = None,
    augment_cfg: Any = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    teacher_logits: Tensor | None = None,
    fast: bool = True,
    teacher_precision: str = "auto",
    teacher_targets: str = "online",
) -> TrainResult:
    """Train ``model`` on ``splits.train``, select the epoch with the best ``splits.val`` accuracy, return it loaded.

    Args:
        model: the network to train (modified in place; ends with the best-val weights).
        splits: anything with ``train`` and ``val`` holding ``x`` (float32 NCHW, an array or a lazily-normalized
            view indexed per batch) and ``y`` (int64); test is not read.
        cfg: optimizer, schedule, budget and self-tuning (``lr: auto``, ``grad_clip``, ``max_recoveries``).
        workdir: folder of ``checkpoint.pt`` (written atomically every epoch) and ``train_result.json``; a call
            with an existing checkpoint of the same run resumes from it, a finished one returns at once.
        seed: keys every random stream (the range test's too).
        teacher: the distillation teacher (eval mode, frozen); its logits are the targets of ``loss``.
        loss: the loss; None means cross-entropy without a teacher and Hinton KD (defaults) with one.
        augment_cfg: an object with ``crop_pad``/``hflip`` (``data.AugmentConfig``) or a callable ``(x, generator)``;
            used when ``cfg.augment`` is true.
        progress: show a progress bar (rich, only when stderr is a terminal; otherwise epochs are logged).
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.
        teacher_logits: ``teacher``'s logits on the train split, row i for sample i, as the teacher module passed
            here computes them; used instead of running the teacher when there is no augmentation (callers that
            train several students from one teacher compute them once).
        fast: on CPU, run inference (teacher, val, logit cache) through a frozen ONNX Runtime graph checked against
            eager, and train in channels-last layout (``distill.fast_eval``; each falls back to eager NCHW when
            unsafe). False: eager NCHW throughout (the reference for comparisons).
        teacher_precision: with augmentation on CPU, what the teacher runs in: ``auto`` (bf16 with AMX, when the teacher
            has >= 10 M MACs and bf16 is faithful), ``fp32`` or ``bf16`` (``distill.teacher_precision``); ignored
            with ``fast=False``.
        teacher_targets: with augmentation, ``online`` runs the teacher on every augmented batch (its targets match
            what the student sees); ``clean`` computes its logits once on the un-augmented images (or takes
            ``teacher_logits``) and the student learns them on its augmented views — one teacher pass for the whole
            run (``distill.teacher_targets``).

    Raises:
        TrainingError: the loss became NaN/Inf and no recovery is left (names epoch and step; the last good
            checkpoint is kept); or ``teacher_precision`` is bf16 and the bf16 teacher is not faithful.
        CheckpointError: ``workdir`` holds a checkpoint of a different run.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    dev = torch.device(device) if device is not None else _default_device()
    rank, world = _dist_context(dev)
    loss, loss_fn, teacher = _loss(loss, teacher, cfg)
    x_tr, y_tr, x_val, y_val = _arrays(splits, world)
    augment = make_augment(augment_cfg) if cfg.augment else None
    sample, layout, layout_event = _place(model, teacher, x_tr, dev, fast)
    if teacher_targets not in ("online", "clean"):
        raise ValueError(f"teacher_targets must be 'online' or 'clean', got {teacher_targets!r}")
    clean = teacher is not None and teacher_targets == "clean"
    logits = partial(_logits, fast)
    fingerprint = _fingerprint(cfg, loss, seed=seed, world=world, model=model, teacher=teacher, splits=splits,
                               arrays=[x_tr, y_tr, x_val, y_val], augment=None if augment is None else augment_cfg,
                               teacher_precision=teacher_precision, clean_targets=clean)  # fmt: skip
    opt = make_optimizer(model, cfg)
    majority = majority_share(y_val)  # the accuracy of a constant guess: the floor of "above chance"
    state, first = _start(workdir, fingerprint, model, opt, cfg, partial(logits, model, x_val), y_val, majority,
                          layout_event)  # fmt: skip
    targets = _teacher_targets(teacher, state, x_tr, sample, cfg, online=augment is not None and not clean, fast=fast,
                               requested=teacher_precision, given=teacher_logits, logits=logits)  # fmt: skip
    run = TrainRun(model=model, net=_distributed(model, dev, world), opt=opt, cfg=cfg, seed=seed, device=dev, rank=rank,
                   world=world, n_train=len(x_tr), n_steps=len(epoch_batches(len(x_tr), cfg, seed, 0, 0, world)),
                   loss=BatchLoss(x_tr, y_tr, augment, targets, loss_fn, layout, dev), y_val=y_val,
                   val_logits=lambda m: logits(m, x_val), majority=majority, checkpoint=workdir / CHECKPOINT,
                   resumed_from=state.standing.epoch)  # fmt: skip
    fit(run, state, [*first, Recovery(), EpochProgress(progress), Checkpoint(fingerprint), UsualLayout()])
    return _result(run, state, workdir, started)


def _logits(fast: bool, model: nn.Module, x: Any, runner: Runner | None = None) -> Tensor:
    """Eval-mode logits: through a frozen graph where it pays (``fast_eval``), else eager ``inference_mode``."""
    return fast_logits(model, x, runner=runner) if fast else predict_logits(model, x)


def _place(
    model: nn.Module, teacher: nn.Module | None, x_tr: Inputs, dev: torch.device, fast: bool
) -> tuple[Tensor, torch.memory_format, str | None]:
    """Both models on ``dev`` (the teacher in eval mode), the student in its training layout; returns the first
    training rows (the probe batch), the layout and the event when the model refused channels-last."""
    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    sample = x_tr.rows(0, min(8, len(x_tr))).to(dev)
    layout, event = _training_layout(model, sample, fast)
    set_layout(model, layout)
    return sample, layout, event


def _loss(
    loss: LossConfig | None, teacher: nn.Module | None, cfg: TrainConfig
) -> tuple[LossConfig, nn.Module, nn.Module | None]:
    """The loss (None: cross-entropy without a teacher, Hinton KD with one), its module, and the teacher (None for
    cross-entropy, which has no use for one)."""
    if loss is None:
        loss = LossConfig() if teacher is not None else LossConfig(kind="ce")
    loss_fn = build_loss(loss, label_smoothing=cfg.label_smoothing, has_teacher=teacher is not None)
    return loss, loss_fn, None if loss.kind == "ce" else teacher


def _arrays(splits: Any, world: int) -> tuple[Inputs, Tensor, Inputs, Tensor]:
    """Train and val inputs and labels, checked (at least two training samples per process)."""
    x_tr, y_tr = split_arrays(splits, "train")
    x_val, y_val = split_arrays(splits, "val")
    if len(x_tr) < 2 * world:
        raise DataError(f"train split has {len(x_tr)} samples for {world} process(es)", "give at least 2 per process")
    return x_tr, y_tr, x_val, y_val


def _fingerprint(
    cfg: TrainConfig,
    loss: LossConfig,
    *,
    seed: int,
    world: int,
    model: nn.Module,
    teacher: nn.Module | None,
    splits: Any,
    arrays: list[Inputs | Tensor],
    augment: Any,
    teacher_precision: str,
    clean_targets: bool,
) -> str:
    """What identifies the run, hashed: a checkpoint with another fingerprint belongs to another run. The dict must
    stay byte-for-byte what it was for the same inputs, or existing run folders stop resuming
    (``tests/test_distill_train_golden.py``). ``augment``: the augmentation config when augmentation is on."""
    return sha256_json(
        {
            "train": cfg.model_dump(mode="json"),
            "loss": loss.model_dump(mode="json"),
            "seed": seed,
            "world": world,
            "shapes": [(k, list(v.shape)) for k, v in model.state_dict().items()],
            "teacher": state_hash(teacher) if teacher is not None else None,
            "data": data_hash(splits, arrays),
            "augment": None if augment is None else repr(augment),
            # only when pinned, so that the fingerprints of default runs are those of earlier versions
            **({} if teacher_precision == "auto" else {"teacher_precision": teacher_precision}),
            **({"teacher_targets": "clean"} if clean_targets and augment is not None else {}),
        }
    )


def _start(
    workdir: Path,
    fingerprint: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    untrained_val_logits: Callable[[], Tensor],
    y_val: Tensor,
    majority: float,
    layout_event: str | None,
) -> tuple[TrainState, list[TrainHook]]:
    """The state to train from — the checkpoint's (weights loaded into ``model`` and ``opt``) or a fresh one — and,
    the hooks that come first: for a fresh run with ``lr: auto``, the range test that chooses its rate."""
    path = workdir / CHECKPOINT
    if path.exists():
        ck = load_checkpoint(path)
        if ck.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"{path} belongs to a different run (config, seed, data, model shape or teacher changed)",
                "use a fresh workdir, or delete the checkpoint to start over",
            )
        state = resume_state(ck, model, opt)
        log.info("resuming %s at epoch %d/%d", workdir, state.standing.epoch, cfg.epochs)
        return state, []
    # the untrained state: the first reference for NLL and chance
    events = [layout_event] if layout_event else []
    state, from_scratch = fresh_state(untrained_val_logits(), y_val, cfg, majority, events)
    return state, [RangeTest(from_scratch)] if cfg.lr == "auto" else []


def _teacher_targets(
    teacher: nn.Module | None,
    state: TrainState,
    x_tr: Inputs,
    sample: Tensor,
    cfg: TrainConfig,
    *,
    online: bool,
    fast: bool,
    requested: str,
    given: Tensor | None,
    logits: Callable[[nn.Module, Any], Tensor],
) -> TeacherTargets:
    """Where the KD targets come from (``distill.targets``). ``online`` (augmentation, online targets): the teacher
    on every augmented batch, with ``fast`` through its frozen graph or bf16 copy (the precision chosen once, then
    kept in the checkpoint); else its logits once per sample (``given``, or computed here)."""
    if teacher is None:
        return TeacherTargets(None)
    runner = None
    if fast and online:  # the teacher runs on every augmented batch
        runner = frozen_runner(teacher, sample)
        if state.precision is not None:  # the precision this run started with, not timed again
            runner = resume_runner(teacher, runner, state.precision)
        else:
            runner, state.precision = choose_teacher_runner(
                teacher, x_tr.rows(0, FIDELITY_ROWS).to(sample.device), runner, requested, batch_size=cfg.batch_size
            )
    if online or state.standing.epoch >= cfg.epochs:
        return TeacherTargets(teacher, runner=runner)
    if given is not None and tuple(given.shape[:1]) != (len(x_tr),):
        raise DataError(
            f"teacher_logits has {given.shape[0]} rows for {len(x_tr)} training samples",
            "pass the teacher's logits on exactly the train split, in its order",
        )
    # once per sample: the inputs never change (without augmentation), or the targets are the clean images'
    cache = (given if given is not None else logits(teacher, x_tr)).to(sample.device)
    return TeacherTargets(teacher, runner=runner, cache=cache)


def _distributed(model: nn.Module, dev: torch.device, world: int) -> nn.Module:
    """``model`` wrapped for DistributedDataParallel under torchrun, else itself."""
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def _result(run: TrainRun, state: TrainState, workdir: Path, started: float) -> TrainResult:
    """The best-val weights loaded into the model, and the run's summary (written to ``train_result.json``)."""
    best = state.standing.best
    if best.state is None:
        raise TrainingError(f"no epoch finished in {workdir}", "raise epochs")
    run.model.load_state_dict(best.state)
    result = TrainResult(
        model=run.model,
        best_epoch=int(best.epoch),
        best_val_accuracy=float(best.acc),
        history=list(state.standing.history),
        resumed_from_epoch=run.resumed_from,
        seconds=time.perf_counter() - started,
        lr=float(state.peak_lr),
        lr_range=state.lr_range,
        teacher_precision=None if state.precision is None else state.precision.to_dict(),
        events=list(state.events),
        recoveries=state.recoveries,
    )
    if run.rank == 0:
        atomic_write_json(workdir / RESULT, result.to_dict())
    return result


__all__ = [
    "TrainResult",
    "epoch_batches",
    "key_seed",
    "keyed_generator",
    "lr_at",
    "model_device",
    "probe_batches",
    "train_model",
]
