"""The training loop's typed state and what it works with, and their checkpoint form (``distill.trainer``).

:class:`TrainRun` is what one run works with and never changes (model, optimizer, config, seed, the batch loss);
:class:`TrainState` is what the loop and its hooks change: where the run stands (:class:`Standing`), the state to go
back to (:class:`RestorePoint`), the learning rate and its scale, the recoveries and their events, the teacher's
precision. A standing is frozen: each finished epoch makes a new one, so a restore point can share it safely.

The checkpoint is a plain dict of tensors, numbers, strings and lists (``torch.load(weights_only=True)``); its fields
and their order are those the trainer wrote before the state was typed, so run folders written then still resume
(``tests/test_distill_train_golden.py`` holds their layout).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress.distill.config import TrainConfig
from edgecompress.distill.recovery import at_chance, cpu_clone
from edgecompress.distill.teacher_precision import TeacherPrecision
from edgecompress.errors import CheckpointError

LossOfBatch = Callable[[nn.Module, Tensor, torch.Generator], dict[str, Tensor]]  # (model, indices, augment generator)


@dataclass(frozen=True)
class TrainRun:
    """What one training run works with; fixed for the run."""

    model: nn.Module
    net: nn.Module  # ``model``, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    cfg: TrainConfig
    seed: int
    device: torch.device
    rank: int
    world: int
    n_train: int  # training samples
    n_steps: int  # optimizer steps per epoch
    loss: LossOfBatch  # the loss terms of one batch of training indices ("loss" is the one optimized)
    val_logits: Callable[[nn.Module], Tensor]  # the model's logits on the val split
    y_val: Tensor
    majority: float  # the share of the most frequent val class (``recovery.majority_share``)
    checkpoint: Path
    resumed_from: int  # the epoch this call started from (0, or a checkpoint's)


@dataclass(frozen=True)
class Best:
    """The best epoch so far by val accuracy (then NLL), with its weights on the CPU."""

    epoch: int = -1
    acc: float = -1.0
    nll: float = math.inf
    state: dict[str, Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "acc": self.acc, "nll": self.nll, "state": self.state}


@dataclass(frozen=True)
class Standing:
    """Where the run stands after ``epoch`` epochs."""

    epoch: int
    history: list[dict[str, float]]  # one row per accepted epoch; never changed in place
    min_nll: float  # the lowest val NLL of the accepted epochs and of the untrained model
    accuracy: float  # val accuracy of the latest accepted epoch (or of the untrained model)
    best: Best

    def to_dict(self) -> dict[str, Any]:
        d = {"epoch": self.epoch, "history": self.history, "min_nll": self.min_nll, "accuracy": self.accuracy}
        return {**d, "best": self.best.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Standing:
        b = d["best"]
        best = Best(epoch=b["epoch"], acc=b["acc"], nll=b["nll"], state=b["state"])
        return cls(epoch=d["epoch"], history=d["history"], min_nll=d["min_nll"], accuracy=d["accuracy"], best=best)


@dataclass(frozen=True)
class RestorePoint:
    """The last good state: a standing with the model's and the optimizer's state (CPU copies)."""

    standing: Standing
    model: dict[str, Any]
    optimizer: dict[str, Any]

    @classmethod
    def of(cls, standing: Standing, model: nn.Module, opt: torch.optim.Optimizer) -> RestorePoint:
        """The run as it is now."""
        return cls(standing, cpu_clone(model.state_dict()), cpu_clone(opt.state_dict()))

    def to_dict(self) -> dict[str, Any]:
        return {**self.standing.to_dict(), "model": self.model, "optimizer": self.optimizer}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RestorePoint:
        return cls(Standing.from_dict(d), d["model"], d["optimizer"])


@dataclass
class TrainState:
    """What the loop and its hooks change; all of it is in the checkpoint."""

    standing: Standing
    peak_lr: float  # NaN until the range test chose it (train.lr: auto)
    restore: RestorePoint | None = None  # None until the recovery hook takes the first one
    lr_range: dict[str, Any] | None = None  # the range test's record (``LRRangeResult.to_dict``)
    lr_scale: float = 1.0  # lowered by each recovery
    recoveries: int = 0
    events: list[str] = field(default_factory=list)  # one line per recovery or fallback, for the report
    precision: TeacherPrecision | None = None  # what the KD teacher runs in on augmented batches

    def rewind(self) -> RestorePoint:
        """Go back to the restore point (a deep copy of its standing); returns it for the weights."""
        if self.restore is None:
            raise RuntimeError("no restore point to go back to")  # the recovery hook takes one before training
        self.standing = copy.deepcopy(self.restore.standing)
        return self.restore


def fresh_state(
    z0: Tensor, y_val: Tensor, cfg: TrainConfig, majority: float, events: list[str]
) -> tuple[TrainState, bool]:
    """The state before training, from the untrained model's val logits ``z0``; and whether it is at chance."""
    nll0 = F.cross_entropy(z0, y_val).item()
    accuracy = (z0.argmax(1) == y_val).float().mean().item()
    standing = Standing(epoch=0, history=[], min_nll=nll0 if math.isfinite(nll0) else math.inf, accuracy=accuracy,
                        best=Best())  # fmt: skip
    peak_lr = math.nan if cfg.lr == "auto" else float(cfg.lr)  # nan: chosen by the range test
    return TrainState(standing, peak_lr, events=events), at_chance(accuracy, z0.shape[1], len(y_val), majority)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dict (tensors, numbers, strings only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}", f"delete {path} to start this run over") from exc


def resume_state(ck: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer) -> TrainState:
    """Load ``ck``'s weights into ``model`` and ``opt``; the state it holds."""
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    best = Best(epoch=ck["best_epoch"], acc=ck["best_acc"], nll=ck["best_nll"], state=ck["best_state"])
    standing = Standing(epoch=ck["epoch"], history=ck["history"], min_nll=ck["min_nll"], accuracy=ck["accuracy"],
                        best=best)  # fmt: skip
    restore = (
        RestorePoint.from_dict(ck["restore"])
        if ck["restore"]
        else RestorePoint(standing, cpu_clone(ck["model"]), cpu_clone(ck["optimizer"]))
    )
    precision = TeacherPrecision.from_dict(ck["teacher_precision"]) if ck.get("teacher_precision") else None
    return TrainState(standing, float(ck["peak_lr"]), restore, lr_range=ck["lr_range"], lr_scale=float(ck["lr_scale"]),
                      recoveries=int(ck["recoveries"]), events=list(ck["events"]), precision=precision)  # fmt: skip


def checkpoint_dict(state: TrainState, run: TrainRun, fingerprint: str) -> dict[str, Any]:
    """The checkpoint of ``state`` (its fields in the order the trainer has always written them)."""
    st, best, restore = state.standing, state.standing.best, state.restore
    return {
        "fingerprint": fingerprint,
        "epoch": st.epoch,
        "step": st.epoch * run.n_steps,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.opt.state_dict(),
        "history": st.history,
        "best_epoch": best.epoch,
        "best_acc": best.acc,
        "best_nll": best.nll,
        "best_state": best.state,
        "min_nll": st.min_nll,
        "accuracy": st.accuracy,
        "restore": None if restore is None or restore.standing.epoch == st.epoch else restore.to_dict(),
        "peak_lr": state.peak_lr,
        "lr_range": state.lr_range,
        "lr_scale": state.lr_scale,
        "recoveries": state.recoveries,
        "events": state.events,
        "teacher_precision": None if state.precision is None else state.precision.to_dict(),
    }


@dataclass(frozen=True)
class EpochOutcome:
    """One epoch's training and validation: its history row, or the problem that stopped it."""

    epoch: int  # 0-based
    problem: str | None  # a non-finite loss (no row then), or a val check that failed
    row: dict[str, float] | None = None
    val_accuracy: float = math.nan
    val_nll: float = math.nan
    classes: int = 0
    n_val: int = 0


__all__ = [
    "Best",
    "EpochOutcome",
    "LossOfBatch",
    "RestorePoint",
    "Standing",
    "TrainRun",
    "TrainState",
    "checkpoint_dict",
    "fresh_state",
    "load_checkpoint",
    "resume_state",
]
