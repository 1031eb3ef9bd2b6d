"""The training loop's hooks: each concern of a run beside the plain epoch loop is one small object.

The loop (``distill.train_loop.fit``) calls every hook, in list order, at fixed points: ``before_fit`` once,
``after_step`` after each optimizer step, ``on_problem`` when an epoch went wrong (a hook that returns True has
rewound the state and the loop trains on from there), ``after_rewind`` then, ``after_epoch`` when an epoch is
accepted, and ``after_fit`` at the end, also when training stopped with an error (torchdistill's training "box" pre-
and post-processes, as callbacks). The trainer composes them in this order:

* :class:`RangeTest` — ``train.lr: auto`` on a fresh run: the peak learning rate from a seeded range test;
* :class:`Recovery` — takes restore points, rewinds an epoch that went wrong and lowers the rate
  (``distill.recovery``), or keeps it with a warning when no recovery is left;
* :class:`EpochProgress` — the progress bar and the epoch log line;
* :class:`Checkpoint` — writes the checkpoint after every accepted or rewound epoch (rank 0; the others wait);
* :class:`UsualLayout` — gives the model back in NCHW however it trained.
"""

from __future__ import annotations

import logging
import math

import torch

from edgecompress._io import atomic_path
from edgecompress.distill.fast_eval import set_layout
from edgecompress.distill.lr_range import LR_BOUNDS, MAX_LR, SAFE_LR, lr_range_test
from edgecompress.distill.progress import Progress
from edgecompress.distill.recovery import LR_FACTOR, cpu_clone, left_chance
from edgecompress.distill.steps import key_seed, keyed_generator, make_optimizer, probe_batches
from edgecompress.distill.train_state import EpochOutcome, RestorePoint, TrainRun, TrainState, checkpoint_dict

# the trainer's log lines keep its logger's name: the CLI routes them to stdout and the benchmarks quiet them by it
log = logging.getLogger("edgecompress.distill.trainer")


class TrainHook:
    """One concern of the training loop; every method does nothing unless a hook overrides it."""

    def before_fit(self, run: TrainRun, state: TrainState) -> None:
        """Once, before the first epoch of this call (also on a resumed run)."""

    def after_step(self, run: TrainRun, state: TrainState, epoch: int, loss: float) -> None:
        """After each optimizer step of ``epoch`` (0-based); ``loss`` is the step's last loss term."""

    def on_problem(self, run: TrainRun, state: TrainState, out: EpochOutcome) -> bool:
        """An epoch went wrong (``out.problem``); True when this hook rewound ``state`` to train on from there."""
        return False

    def after_rewind(self, run: TrainRun, state: TrainState) -> None:
        """After a hook rewound the state."""

    def after_epoch(self, run: TrainRun, state: TrainState, out: EpochOutcome) -> None:
        """After epoch ``out.epoch`` was accepted (in ``state.standing`` now; ``out.problem``: one kept anyway)."""

    def after_fit(self, run: TrainRun, state: TrainState) -> None:
        """At the end of training, also when it stopped with an error."""


class RangeTest(TrainHook):
    """``train.lr: auto``: the peak learning rate from a short seeded range test on a copy of the model
    (``distill.lr_range``); composed only for a fresh run (a resumed one keeps the rate in its checkpoint)."""

    def __init__(self, from_scratch: bool) -> None:
        self.from_scratch = from_scratch  # at chance before training: an inconclusive probe is a plateau

    def before_fit(self, run: TrainRun, state: TrainState) -> None:
        cfg, gen = run.cfg, keyed_generator(run.seed, "lr_range", "augment")
        probe = lr_range_test(
            run.model,
            lambda m, idx: run.loss(m, idx, gen)["loss"],
            probe_batches(run.n_train, cfg.batch_size, cfg.lr_range_steps, run.seed),
            lambda m: make_optimizer(m, cfg),
            lr_min=LR_BOUNDS[cfg.optimizer][0],
            lr_max=LR_BOUNDS[cfg.optimizer][1],
            safe_lr=SAFE_LR[cfg.optimizer],
            max_lr=MAX_LR[cfg.optimizer],
            grad_clip=cfg.grad_clip,
            seed=key_seed(run.seed, "lr_range", "torch"),
            # from scratch (at chance before training): an inconclusive probe is a plateau, left with a large rate
            plateau_lr=MAX_LR[cfg.optimizer] if self.from_scratch else None,
        )
        state.peak_lr, state.lr_range = probe.lr, probe.to_dict()
        if run.world > 1:  # every rank probed the same data; rank 0's choice holds
            t = torch.tensor([state.peak_lr], dtype=torch.float64, device=run.device)
            torch.distributed.broadcast(t, 0)
            state.peak_lr = t.item()
        log.info("lr auto: %.4g (%s; loss diverged at %s)", state.peak_lr, probe.rule, probe.diverged_at)


class Recovery(TrainHook):
    """Divergence recovery (``train.max_recoveries``, ``distill.recovery``): an epoch whose loss turned non-finite,
    whose val NLL exploded or whose val accuracy fell to chance is undone — the last good state is restored and the
    peak learning rate lowered by ``LR_FACTOR`` — while recoveries are left; after that a finished epoch is kept with
    a warning. Restore points are the untrained state and each good epoch clearly above chance."""

    def before_fit(self, run: TrainRun, state: TrainState) -> None:
        if state.restore is None:
            state.restore = RestorePoint.of(state.standing, run.model, run.opt)

    def on_problem(self, run: TrainRun, state: TrainState, out: EpochOutcome) -> bool:
        limit = run.cfg.max_recoveries
        if state.recoveries >= limit:
            return False
        state.recoveries += 1
        peak = state.peak_lr * state.lr_scale
        restore = state.rewind()
        state.events.append(
            f"{out.problem}: restored the state after epoch {restore.standing.epoch} and lowered the peak lr "
            f"{peak:.3g} -> {peak * LR_FACTOR:.3g} (recovery {state.recoveries}/{limit})"
        )
        state.lr_scale *= LR_FACTOR
        log.warning("%s", state.events[-1])
        run.model.load_state_dict(restore.model)
        run.opt.load_state_dict(cpu_clone(restore.optimizer))  # the optimizer keeps (and mutates) what it gets
        return True

    def after_epoch(self, run: TrainRun, state: TrainState, out: EpochOutcome) -> None:
        if out.problem is not None:
            state.events.append(
                f"{out.problem}; no recovery left (train.max_recoveries={run.cfg.max_recoveries}): kept"
            )
            log.warning("%s", state.events[-1])
        elif left_chance(out.val_accuracy, out.classes, out.n_val, run.majority):  # worth going back to
            state.restore = RestorePoint.of(state.standing, run.model, run.opt)


class EpochProgress(TrainHook):
    """A progress bar in a terminal (rank 0, ``progress=True``) and one log line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None

    def before_fit(self, run: TrainRun, state: TrainState) -> None:
        total, done = run.cfg.epochs * run.n_steps, state.standing.epoch * run.n_steps
        self.bar = Progress(self.enabled and run.rank == 0, total, done)

    def after_step(self, run: TrainRun, state: TrainState, epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.advance(f"epoch {epoch + 1}/{run.cfg.epochs} loss {loss:.3f}")

    def after_epoch(self, run: TrainRun, state: TrainState, out: EpochOutcome) -> None:
        row = out.row or {}
        log.info("epoch %d/%d loss %.4f val_acc %.4f val_nll %.4f lr %.3g", out.epoch + 1, run.cfg.epochs,
                 row.get("train_loss", math.nan), out.val_accuracy, out.val_nll, row.get("lr", 0.0))  # fmt: skip

    def after_fit(self, run: TrainRun, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()


class Checkpoint(TrainHook):
    """Checkpoint/resume: the state is written atomically after every accepted or rewound epoch (rank 0; under DDP
    the other ranks wait for it), so a run killed at any point resumes from its last finished epoch bit-identically.
    ``fingerprint`` identifies the run (``trainer`` refuses a checkpoint of another)."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint

    def save(self, run: TrainRun, state: TrainState) -> None:
        if run.rank == 0:
            ck = checkpoint_dict(state, run, self.fingerprint)
            with atomic_path(run.checkpoint) as tmp:
                torch.save(ck, tmp)
        if run.world > 1:
            torch.distributed.barrier()

    def after_rewind(self, run: TrainRun, state: TrainState) -> None:
        self.save(run, state)

    def after_epoch(self, run: TrainRun, state: TrainState, out: EpochOutcome) -> None:
        self.save(run, state)


class UsualLayout(TrainHook):
    """The model may train channels-last (``trainer._training_layout``); callers (pruning, export) get NCHW."""

    def after_fit(self, run: TrainRun, state: TrainState) -> None:
        set_layout(run.model, torch.contiguous_format)


__all__ = ["Checkpoint", "EpochProgress", "RangeTest", "Recovery", "TrainHook", "UsualLayout"]
