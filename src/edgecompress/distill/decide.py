"""Decide the student's loss and chain by measurement: short, seeded trials on val (``assistants: auto`` and
``loss.kind: auto``).

Step 1 (the loss, when ``loss.kind`` is auto or scratch is a candidate): on the direct hop teacher → student, train
a fresh copy of the student with each candidate loss — scratch (CE on labels, no teacher), Hinton KD over a small
(T, alpha) grid, DIST — and keep the best val accuracy (ties: lower val NLL, then lower val ECE). Step 2 (the chain,
when ``assistants`` is auto and a teacher loss won): with that loss, direct vs one assistant at the geometric mean
MAC ratio of teacher and student vs the planned path (``plan_assistant_ratios``, only when it differs).

Every trial uses the same seed and the same training subset, without augmentation, so each teacher's logits on the
subset are computed once (one batched pass) and reused by every trial it teaches (``train_model(teacher_logits=)``).
With ``train.lr: auto`` the first trial's range test picks the learning rate of every trial.
Trials are cheap by construction: see ``TrialsConfig`` for the budget.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from edgecompress.distill.chain import plan_assistant_ratios
from edgecompress.distill.config import DIST_TEMPERATURE, DistillConfig, LossConfig, TrainConfig
from edgecompress.distill.evaluate import TemperatureScaled, compute_metrics, fit_temperature, predict_logits
from edgecompress.distill.inputs import split_arrays
from edgecompress.distill.trainer import epoch_batches, key_seed, keyed_generator, train_model
from edgecompress.errors import ConfigError

log = logging.getLogger(__name__)

MakeMember = Callable[[float | None], nn.Module]  # None: a fresh student; a ratio: an assistant at that MAC ratio


@dataclass
class Trial:
    """One candidate's short training and its val metrics (fractions; NLL in nats)."""

    name: str
    step: str  # "loss" or "chain"
    loss: dict[str, Any]
    ratios: list[float]  # the assistants' MAC ratios (empty: direct)
    val_accuracy: float
    val_ece: float
    val_nll: float
    seconds: float
    steps: int  # optimizer steps of every model trained for this candidate
    chosen: bool = False


@dataclass
class Decision:
    """The outcome of :func:`decide`: the chosen loss and chain, every trial, and why."""

    loss: dict[str, Any]  # the chosen LossConfig as a dict (kind ce: scratch won)
    ratios: list[float] | None  # the chosen assistants' MAC ratios; None: keep the configured chain
    scratch: bool
    reason: str
    trials: list[Trial] = field(default_factory=list)
    trial_steps: int = 0
    subset: int = 0
    teacher_temperature: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rank_key(t: Trial) -> tuple[float, float, float]:
    """Higher val accuracy first; ties go to the lower val NLL, then the lower val ECE."""
    return (-round(t.val_accuracy, 9), t.val_nll, t.val_ece)


def _best(trials: list[Trial]) -> Trial:
    return min(trials, key=_rank_key)  # min is stable: on a full tie the earlier (simpler) candidate wins


def loss_candidates(cfg: DistillConfig) -> list[tuple[str, LossConfig]]:
    """Step 1's candidates, in order (scratch first: it wins a full tie): scratch, KD grid, DIST — or, with a fixed
    loss, scratch and that loss. With a label-smoothed teacher KD runs at T = 1 (as the chain does), so the grid
    collapses to its alphas."""
    base, tc = cfg.loss, cfg.trials
    out: list[tuple[str, LossConfig]] = []
    if tc.scratch:
        out.append(("scratch (ce)", base.model_copy(update={"kind": "ce"})))
    if base.kind != "auto":
        if base.kind != "ce":
            fixed = base.model_copy(update={"temperature": 1.0}) if cfg.teacher_label_smoothing else base
            out.append((_loss_name(fixed), fixed))
        return out
    temps = sorted({1.0 if cfg.teacher_label_smoothing else float(t) for t in tc.kd_temperatures})
    for t in temps:
        for a in tc.kd_alphas:
            kd = base.model_copy(update={"kind": "kd", "temperature": t, "alpha": float(a)})
            out.append((_loss_name(kd), kd))
    if tc.dist:
        t_dist = 1.0 if cfg.teacher_label_smoothing else DIST_TEMPERATURE
        dist = base.model_copy(update={"kind": "dist", "temperature": t_dist})
        out.append((_loss_name(dist), dist))
    if not out:
        raise ConfigError("loss.kind auto has no candidate", "give distill.trials.kd_temperatures/kd_alphas or dist")
    return out


def _loss_name(loss: LossConfig) -> str:
    if loss.kind == "ce":
        return "scratch (ce)"
    if loss.kind == "kd":
        return f"kd T={loss.temperature:g} α={loss.alpha:g}"
    return f"{loss.kind} T={loss.temperature:g}"


def final_steps(cfg: DistillConfig, n_train: int) -> int:
    """Optimizer steps of the final student's training (``cfg.train`` over ``n_train`` samples)."""
    tr = cfg.train
    per_epoch = max(1, n_train // tr.batch_size)
    if tr.max_steps_per_epoch is not None:
        per_epoch = min(per_epoch, tr.max_steps_per_epoch)
    return tr.epochs * per_epoch


def trial_budget(cfg: DistillConfig, n_train: int) -> tuple[TrainConfig, int]:
    """The TrainConfig of every trial and the training subset size: ``budget`` x the final steps (at least
    ``min_steps``), one epoch over a subset when that suffices, else several epochs over the whole split."""
    tr, tc = cfg.train, cfg.trials
    steps = max(tc.min_steps, math.ceil(tc.budget * final_steps(cfg, n_train)))
    epochs = max(1, math.ceil(steps / max(1, n_train // tr.batch_size)))
    steps_per_epoch = math.ceil(steps / epochs)
    subset = min(n_train, steps_per_epoch * tr.batch_size) if epochs == 1 else n_train
    warmup = min(float(epochs), tr.warmup_epochs * epochs / tr.epochs)
    train = tr.model_copy(
        update={"epochs": epochs, "warmup_epochs": warmup, "augment": False, "max_steps_per_epoch": steps_per_epoch}
    )
    return train, subset


def _subset(splits: Any, n: int, seed: int) -> Any:
    """``splits`` with its train split cut to ``n`` seeded rows (materialized: trials read them many times)."""
    x, y = split_arrays(splits, "train")
    if n >= len(x):
        return SimpleNamespace(train=splits.train, val=splits.val, num_classes=getattr(splits, "num_classes", None))
    idx = torch.randperm(len(x), generator=keyed_generator(seed, "trials", "subset"))[:n].sort().values
    train = SimpleNamespace(x=x.take(idx).numpy(), y=y[idx].numpy())
    return SimpleNamespace(train=train, val=splits.val, num_classes=getattr(splits, "num_classes", None))


@dataclass
class _Teacher:
    module: nn.Module  # as it teaches (z / T when calibrating)
    train_logits: Tensor  # of ``module`` on the trial subset, computed once
    temperature: float


def _teaching(model: nn.Module, data: Any, y_val: Tensor, calibrate: bool) -> _Teacher:
    """``model`` as a teacher: temperature-scaled on val when ``calibrate``, with its train logits computed once."""
    t = fit_temperature(predict_logits(model, data.val.x), y_val) if calibrate else 1.0
    module = TemperatureScaled(model, t) if calibrate else model
    return _Teacher(module=module, train_logits=predict_logits(module, data.train.x), temperature=t)


def decide(
    teacher: nn.Module,
    make_member: MakeMember,
    splits: Any,
    cfg: DistillConfig,
    *,
    student_ratio: float,
    workdir: Path,
    seed: int,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> Decision:
    """Run the trials of ``cfg`` (``loss.kind``/``assistants`` auto) and return the decision with every trial.

    Args:
        teacher: the trained teacher (the chain temperature-scales it on val when ``cfg.calibrate_teachers``).
        make_member: ``make_member(None)`` builds a fresh untrained student, ``make_member(r)`` an assistant at MAC
            ratio ``r`` (e.g. pruned from the teacher); called once per trial, so it must be deterministic.
        splits: ``train`` and ``val`` with ``x``/``y``.
        cfg: the distill config; ``cfg.trials`` sets the candidates and the budget.
        student_ratio: the student's MACs relative to the teacher (for the assistants' ratios).
        workdir: one subfolder per trial (a finished trial is reused by ``train_model``).
        seed: the same for every candidate.
        progress: progress bars.
        device: passed to ``train_model``.
    """
    workdir = Path(workdir)
    if getattr(splits, "val", None) is None:
        raise ConfigError("the trials need a val split", "give data with a val split, or fixed loss and assistants")
    x_tr, _ = split_arrays(splits, "train")
    train, n_sub = trial_budget(cfg, len(x_tr))
    data = _subset(splits, n_sub, seed)
    _, y_val = split_arrays(splits, "val")
    steps = len(epoch_batches(n_sub, train, seed, 0)) * train.epochs
    t_teach = _teaching(teacher, data, y_val, cfg.calibrate_teachers)
    hop_seed = key_seed(seed, "trial")

    def fit(name: str, model: nn.Module, loss: LossConfig, by: _Teacher | None) -> tuple[nn.Module, float, dict]:
        nonlocal train
        started = time.perf_counter()
        res = train_model(
            model,
            data,
            train,
            workdir=workdir / _folder(name),
            seed=hop_seed,
            teacher=None if by is None or loss.kind == "ce" else by.module,
            teacher_logits=None if by is None or loss.kind == "ce" else by.train_logits,
            loss=loss,
            progress=progress,
            device=device,
        )
        if train.lr == "auto" and res.lr is not None:  # one range test (the first trial's) serves every trial
            train = train.model_copy(update={"lr": float(res.lr)})
        m = compute_metrics(predict_logits(res.model, data.val.x), y_val)
        return res.model, time.perf_counter() - started, m

    def trial(name: str, step: str, loss: LossConfig, ratios: list[float]) -> Trial:
        by, seconds, n_steps = t_teach, 0.0, 0
        path = f"{name}/" if ratios else ""
        for r in ratios:  # the assistants, largest first, each taught by the one before
            ta, s, _ = fit(f"{path}ta-{r:.3f}", make_member(r), loss, by)
            by, seconds, n_steps = _teaching(ta, data, y_val, cfg.calibrate_teachers), seconds + s, n_steps + steps
        _, s, m = fit(f"{path}student-{name}", make_member(None), loss, by)
        row = Trial(name=name, step=step, loss=loss.model_dump(mode="json"), ratios=list(ratios),
                    val_accuracy=m["accuracy"], val_ece=m["ece"], val_nll=m["nll"],
                    seconds=round(seconds + s, 3), steps=n_steps + steps)  # fmt: skip
        log.info("trial %s: val acc %.4f, ECE %.4f, NLL %.4f (%d steps, %.1f s)", name, row.val_accuracy,
                 row.val_ece, row.val_nll, row.steps, row.seconds)  # fmt: skip
        return row

    trials = [trial(n, "loss", loss, []) for n, loss in loss_candidates(cfg)]
    if not trials:  # fixed teacher loss, scratch off: the loss step has nothing to compare; trial it for step 2
        trials = [trial(_loss_name(cfg.loss), "loss", cfg.loss, [])]
    won = _best(trials)
    won_loss = LossConfig.model_validate(won.loss)
    if won_loss.kind == "ce":
        won.chosen = True
        others = [t for t in trials if t is not won]
        runner = f"; best with a teacher: {_best(others).name} at {_pct(_best(others).val_accuracy)}" if others else ""
        reason = f"scratch won the trials (val acc {_pct(won.val_accuracy)}{runner}): the student trains on labels"
        return Decision(loss=won.loss, ratios=[], scratch=True, reason=reason, trials=trials,
                        trial_steps=steps, subset=n_sub, teacher_temperature=t_teach.temperature)  # fmt: skip
    if cfg.assistants != "auto":
        won.chosen = True
        reason = f"{won.name} has the best val accuracy of the loss trials ({_pct(won.val_accuracy)})"
        return Decision(loss=won.loss, ratios=None, scratch=False, reason=reason, trials=trials,
                        trial_steps=steps, subset=n_sub, teacher_temperature=t_teach.temperature)  # fmt: skip
    one = [math.sqrt(student_ratio)] if student_ratio < 1 else []
    planned = plan_assistant_ratios(student_ratio, cfg.n_assistants)
    chains = [won]
    if one:
        chains.append(trial(f"1 TA ({one[0]:.2f}) + {won.name}", "chain", won_loss, one))
    if planned and [round(r, 6) for r in planned] != [round(r, 6) for r in one]:
        label = ", ".join(f"{r:.2f}" for r in planned)
        chains.append(trial(f"planned path ({label}) + {won.name}", "chain", won_loss, planned))
    best = _best(chains)
    best.chosen = True
    how = (
        "direct"
        if not best.ratios
        else f"{len(best.ratios)} assistant(s) at MAC ratio(s) " + ", ".join(f"{r:.2f}" for r in best.ratios)
    )
    reason = (
        f"{won.name} won the loss trials ({_pct(won.val_accuracy)} val acc); {how} has the best val accuracy of "
        f"the chain trials ({_pct(best.val_accuracy)})"
    )
    return Decision(loss=won.loss, ratios=list(best.ratios), scratch=False, reason=reason, trials=trials + chains[1:],
                    trial_steps=steps, subset=n_sub, teacher_temperature=t_teach.temperature)  # fmt: skip


def _pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _folder(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_./" else "_" for c in name.replace(" ", "_").replace("α", "a"))
    return keep.strip("_") or "trial"


def fresh_copy(model: nn.Module) -> MakeMember:
    """A ``make_member`` for a fixed student only: a deep copy of ``model`` per call (assistants refused)."""

    def make(ratio: float | None) -> nn.Module:
        if ratio is not None:
            raise ConfigError("this student cannot have assistants cut for it", "give a make_member that prunes")
        return copy.deepcopy(model)

    return make


__all__ = ["Decision", "Trial", "decide", "final_steps", "fresh_copy", "loss_candidates", "trial_budget"]
