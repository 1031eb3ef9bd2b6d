"""The training loop: epochs of seeded steps, a val check, and hooks for everything else (``distill.train_hooks``).

Each epoch re-derives its random streams from (seed, epoch, rank) — the global torch seed (dropout) and the
augmentation generator; the shuffling comes from ``steps.epoch_batches`` — so an epoch repeated after a resume or a
recovery draws what it drew the first time. An epoch goes wrong when a step's loss (averaged over the ranks) is
NaN/Inf (the epoch stops there) or when ``recovery.epoch_problem`` finds its val check bad; a hook may then rewind the
state (``train_hooks.Recovery``), else a finished epoch is kept and a stopped one is an error.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from edgecompress.distill.recovery import cpu_clone, epoch_problem
from edgecompress.distill.steps import epoch_batches, key_seed, keyed_generator, lr_at
from edgecompress.distill.train_hooks import TrainHook
from edgecompress.distill.train_state import Best, EpochOutcome, Standing, TrainRun, TrainState
from edgecompress.errors import TrainingError


def fit(run: TrainRun, state: TrainState, hooks: Sequence[TrainHook]) -> None:
    """Train from where ``state`` stands to ``run.cfg.epochs`` epochs, calling ``hooks`` in order.

    Raises:
        TrainingError: an epoch's loss became NaN/Inf and no hook rewound the state (names epoch and step).
    """
    for hook in hooks:
        hook.before_fit(run, state)
    try:
        while state.standing.epoch < run.cfg.epochs:
            out = train_epoch(run, state, hooks)
            if out.problem is not None and any(hook.on_problem(run, state, out) for hook in hooks):
                for hook in hooks:
                    hook.after_rewind(run, state)
                continue
            if out.row is None:
                raise _stopped(run, state, out.problem)
            state.standing = _accepted(run, state.standing, out)
            for hook in hooks:
                hook.after_epoch(run, state, out)
    finally:
        for hook in hooks:
            hook.after_fit(run, state)


def train_epoch(run: TrainRun, state: TrainState, hooks: Sequence[TrainHook]) -> EpochOutcome:
    """One epoch of optimizer steps from ``state``, then its val check (skipped when a step's loss was NaN/Inf)."""
    t0, epoch, cfg = time.perf_counter(), state.standing.epoch, run.cfg
    torch.manual_seed(key_seed(run.seed, "torch", epoch, run.rank))
    aug_gen = keyed_generator(run.seed, "augment", epoch, run.rank)
    run.model.train()
    sums: dict[str, float] = {}
    lr = 0.0
    for s, idx in enumerate(epoch_batches(run.n_train, cfg, run.seed, epoch, run.rank, run.world)):
        lr = lr_at(epoch * run.n_steps + s, cfg, run.n_steps, state.peak_lr) * state.lr_scale
        for g in run.opt.param_groups:
            g["lr"] = lr
        terms = run.loss(run.net, idx, aug_gen)
        values = torch.stack([v.detach().float() for v in terms.values()])
        if run.world > 1:
            torch.distributed.all_reduce(values)
            values /= run.world
        if not torch.isfinite(values).all():
            named = ", ".join(f"{k}={v:.4g}" for k, v in zip(terms, values.tolist(), strict=True))
            return EpochOutcome(epoch, f"loss became non-finite at epoch {epoch + 1} step {s + 1} ({named})")
        run.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.opt.step()
        for k, v in zip(terms, values.tolist(), strict=True):
            sums[k] = sums.get(k, 0.0) + v
        for hook in hooks:
            hook.after_step(run, state, epoch, float(values[-1]))
    row = {"epoch": epoch + 1, **{f"train_{k}": v / max(1, run.n_steps) for k, v in sums.items()}}
    return _validated(run, state, epoch, row, lr, t0)


def _validated(
    run: TrainRun, state: TrainState, epoch: int, row: dict[str, float], lr: float, t0: float
) -> EpochOutcome:
    """The epoch's val accuracy and NLL in its history ``row``, and what its val check found wrong."""
    if run.world > 1:  # BatchNorm statistics of rank 0 everywhere, so every rank evaluates the same model
        for b in run.model.buffers():
            torch.distributed.broadcast(b, 0)
    val = run.val_logits(run.model)
    val_acc = (val.argmax(1) == run.y_val).float().mean().item()
    val_nll = F.cross_entropy(val, run.y_val).item()
    row.update(val_accuracy=val_acc, val_nll=val_nll, lr=lr, seconds=time.perf_counter() - t0)
    start = (state.restore or state).standing.accuracy  # where this stretch of training started
    bad = epoch_problem(val_acc, val_nll, best_nll=state.standing.min_nll, start_accuracy=start,
                        num_classes=val.shape[1], n=len(val), majority=run.majority)  # fmt: skip
    problem = None if bad is None else f"epoch {epoch + 1}: {bad}"
    return EpochOutcome(epoch, problem, row, val_acc, val_nll, classes=val.shape[1], n_val=len(val))


def _accepted(run: TrainRun, st: Standing, out: EpochOutcome) -> Standing:
    """Where the run stands with ``out``'s epoch accepted (the best weights copied when it is the best so far)."""
    assert out.row is not None  # noqa: S101 - fit checks it
    best = st.best
    if (out.val_accuracy, -out.val_nll) > (best.acc, -best.nll):
        best = Best(out.epoch + 1, out.val_accuracy, out.val_nll, cpu_clone(run.model.state_dict()))
    return Standing(epoch=out.epoch + 1, history=[*st.history, out.row], min_nll=min(st.min_nll, out.val_nll),
                    accuracy=out.val_accuracy, best=best)  # fmt: skip


def _stopped(run: TrainRun, state: TrainState, problem: str | None) -> TrainingError:
    n, path = state.recoveries, run.checkpoint
    return TrainingError(
        f"{problem}{f' after {n} recoveries' if n else ''}; last good checkpoint: {path if path.exists() else 'none'}",
        "lower the learning rate (train.lr), check the inputs for NaN/Inf, or add warm-up",
    )


__all__ = ["fit", "train_epoch"]
