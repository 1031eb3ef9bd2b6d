"""Decide the student's loss and chain by measurement: seeded trials on val with successive halving
(``assistants: auto`` and ``loss.kind: auto``).

Step 1 (the loss): every candidate — scratch (CE on labels, no teacher) and each setting a registered loss offers for
trials (``DistillLoss.trial_grid``: Hinton KD over T x alpha, DIST at T 1 and 4) — trains a fresh copy of the
student on the direct hop teacher → student for ``b`` optimizer steps; the best third (``trials.eta`` = 3) is
promoted to ``3b`` steps, and so on while more than one is left (successive halving, Jamieson & Talwalkar, AISTATS
2016; Li et al., "Hyperband", JMLR 2018). Each rung trains from scratch with its own complete learning-rate schedule,
with the augmentation and teacher targets of the final run, and — with ``train.lr: auto`` — the learning rate each
candidate's own range test finds. ``b`` is set so that all rungs together (chain trials and range tests included)
cost ``trials.budget`` of the final student's optimizer steps. Rows are ranked by the deepest rung reached, then by
val accuracy there (ties: lower val NLL, then ECE); the chosen loss is the best teacher loss of the deepest rung.
Scratch is a candidate so that the table shows where label training stands; whether distillation paid is decided
afterwards at full budget (the distill stage's scratch baseline and verdict), never by a short trial.

Step 2 (the chain, when ``assistants`` is auto): with that loss, direct vs one assistant at the geometric mean MAC
ratio of teacher and student vs the planned path (``plan_assistant_ratios``, only when it differs), at the deepest
rung's steps.

The teacher is temperature-scaled on val once and, with ``teacher_targets: clean``, its logits on the train split are
computed once and shared by every trial.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgecompress._registry import LOSSES
from edgecompress.distill.chain import plan_assistant_ratios
from edgecompress.distill.config import DistillConfig, LossConfig, TrainConfig
from edgecompress.distill.evaluate import (
    SplitLogits,
    TemperatureScaled,
    compute_metrics,
    fit_temperature,
    predict_logits,
)
from edgecompress.distill.inputs import split_arrays
from edgecompress.distill.losses import resolve_loss
from edgecompress.distill.trainer import epoch_batches, key_seed, train_model
from edgecompress.errors import ConfigError

log = logging.getLogger(__name__)

MakeMember = Callable[[float | None], nn.Module]  # None: a fresh student; a ratio: an assistant at that MAC ratio


@dataclass
class Trial:
    """One candidate's training at one rung and its val metrics (fractions; NLL in nats)."""

    name: str
    step: str  # "loss" or "chain"
    loss: dict[str, Any]
    ratios: list[float]  # the assistants' MAC ratios (empty: direct)
    val_accuracy: float
    val_ece: float
    val_nll: float
    seconds: float
    steps: int  # optimizer steps of every model trained for this candidate at this rung
    rung: int = 0
    lr: float | None = None  # the peak learning rate it trained with (its own range test with lr: auto)
    chosen: bool = False


@dataclass
class Decision:
    """The outcome of :func:`decide`: the chosen loss and chain, every trial, the trials' ranking and why."""

    loss: dict[str, Any]  # the chosen LossConfig as a dict (kind ce only when no teacher loss is a candidate)
    ratios: list[float] | None  # the chosen assistants' MAC ratios; None: keep the configured chain
    scratch: bool
    reason: str
    trials: list[Trial] = field(default_factory=list)
    trial_steps: int = 0  # the first rung's steps per model
    subset: int = 0  # training samples the trials draw from (the whole train split)
    teacher_temperature: float = 1.0
    ranking: list[str] = field(default_factory=list)  # every loss candidate, best first
    rungs: list[int] = field(default_factory=list)  # steps per model at each rung
    budget_steps: int = 0  # the trials' total optimizer steps (range tests and chain trials included)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rank_key(t: Trial) -> tuple[float, float, float, float]:
    """Deepest rung first; then higher val accuracy; ties go to the lower val NLL, then the lower val ECE."""
    return (-t.rung, -round(t.val_accuracy, 9), t.val_nll, t.val_ece)


def _best(trials: list[Trial]) -> Trial:
    return min(trials, key=_rank_key)  # min is stable: on a full tie the earlier (simpler) candidate wins


def loss_candidates(cfg: DistillConfig) -> list[tuple[str, LossConfig]]:
    """Step 1's candidates, in order (scratch first: it wins a full tie): scratch, then each registered loss's
    trial settings — or, with a fixed loss, scratch and that loss. With a label-smoothed teacher every distillation
    loss runs at T = 1 (as the chain does), so duplicate settings collapse."""
    base, tc = cfg.loss, cfg.trials
    out: list[tuple[str, LossConfig]] = []
    if tc.scratch:
        out.append(("scratch (ce)", base.model_copy(update={"kind": "ce", "temperature": None, "alpha": None})))
    if base.kind != "auto":
        if base.kind != "ce":
            fixed = resolve_loss(base)
            if cfg.teacher_label_smoothing:
                fixed = fixed.model_copy(update={"temperature": 1.0})
            out.append((loss_name(fixed), fixed))
        return out
    seen: set[str] = set()
    for entry in LOSSES:
        if entry.name == "ce" or not entry.obj.needs_teacher:
            continue
        for setting in _grid(entry.name, entry.obj.trial_grid, tc):
            loss = resolve_loss(base.model_copy(update={"kind": entry.name, "temperature": None, "alpha": None,
                                                        **setting}))  # fmt: skip
            if cfg.teacher_label_smoothing and loss.temperature is not None:
                loss = loss.model_copy(update={"temperature": 1.0})
            name = loss_name(loss)
            if name not in seen:
                seen.add(name)
                out.append((name, loss))
    if len(out) <= int(tc.scratch):
        raise ConfigError("loss.kind auto has no teacher-loss candidate", "give distill.trials.kd_temperatures/dist")
    return out


def _grid(name: str, grid: list[dict[str, float]], tc: Any) -> list[dict[str, float]]:
    """A loss's trial settings: the registered grid, or the config's override for kd / dist."""
    if name == "kd" and (tc.kd_temperatures is not None or tc.kd_alphas is not None):
        temps = tc.kd_temperatures if tc.kd_temperatures is not None else sorted({g["temperature"] for g in grid})
        alphas = tc.kd_alphas if tc.kd_alphas is not None else sorted({g["alpha"] for g in grid})
        return [{"temperature": float(t), "alpha": float(a)} for t in temps for a in alphas]
    if name == "dist" and not tc.dist:
        return []
    return list(grid)


def loss_name(loss: LossConfig) -> str:
    """``kd T=2 α=0.9``, ``dist T=1``, ``scratch (ce)``."""
    if loss.kind == "ce":
        return "scratch (ce)"
    parts = [loss.kind]
    if loss.temperature is not None:
        parts.append(f"T={loss.temperature:g}")
    if loss.alpha is not None:
        parts.append(f"α={loss.alpha:g}")
    return " ".join(parts)


def final_steps(cfg: DistillConfig, n_train: int) -> int:
    """Optimizer steps of the final student's training (``cfg.train`` over ``n_train`` samples)."""
    tr = cfg.train
    per_epoch = max(1, n_train // tr.batch_size)
    if tr.max_steps_per_epoch is not None:
        per_epoch = min(per_epoch, tr.max_steps_per_epoch)
    return tr.epochs * per_epoch


@dataclass(frozen=True)
class Plan:
    """The successive-halving plan: candidates alive and steps per model at each rung, and the total cost."""

    sizes: list[int]  # candidates at each rung
    steps: list[int]  # optimizer steps per model at each rung
    total: int  # every optimizer step of the trials (rungs, chain trials, range tests)


def plan_rungs(n: int, cfg: DistillConfig, n_train: int, *, chain_models: int = 0, range_steps: int = 0) -> Plan:
    """Rung sizes and steps so that the trials cost ``trials.budget`` x the final steps (at least ``min_steps``).

    Args:
        n: loss candidates.
        cfg: the distill config (``trials.budget``, ``trials.eta``, ``trials.min_steps``, ``train``).
        n_train: training samples.
        chain_models: models trained at the last rung's steps for the chain trials (assistants and students).
        range_steps: optimizer steps of one learning-rate range test (0 without lr: auto): one per candidate, whose
            rate its later rungs and the chain trials keep.
    """
    tc = cfg.trials
    sizes = [n]
    while sizes[-1] > 1 and math.ceil(sizes[-1] / tc.eta) > 1:
        sizes.append(math.ceil(sizes[-1] / tc.eta))
    units = sum(size * tc.eta**r for r, size in enumerate(sizes)) + chain_models * tc.eta ** (len(sizes) - 1)
    final = final_steps(cfg, n_train)
    room = tc.budget * final - n * range_steps  # one range test per candidate, its rate kept at every rung
    base = max(tc.min_steps, math.floor(room / units)) if room > 0 else tc.min_steps
    steps = [min(final, base * tc.eta**r) for r in range(len(sizes))]
    total = sum(s * k for s, k in zip(steps, sizes, strict=True)) + chain_models * steps[-1] + n * range_steps
    return Plan(sizes=sizes, steps=steps, total=total)


def _train_for(cfg: DistillConfig, steps: int, n_train: int) -> TrainConfig:
    """The final run's TrainConfig cut to ``steps`` optimizer steps (whole epochs when that is more than one)."""
    tr = cfg.train
    per_epoch = max(1, len(epoch_batches(n_train, tr, 0, 0)))
    epochs = max(1, math.ceil(steps / per_epoch))
    cap = math.ceil(steps / epochs)
    warmup = min(float(epochs), tr.warmup_epochs * epochs / tr.epochs)
    return tr.model_copy(update={"epochs": epochs, "warmup_epochs": warmup, "max_steps_per_epoch": cap})


@dataclass
class _Teacher:
    module: nn.Module  # as it teaches (z / T when calibrating)
    train_logits: Tensor | None  # of ``module`` on the train split, computed once (teacher_targets: clean)
    temperature: float


def _teaching(
    model: nn.Module, splits: Any, y_val: Tensor, calibrate: bool, clean: bool, known: SplitLogits | None = None
) -> _Teacher:
    """``model`` as a teacher: temperature-scaled on val when ``calibrate``, with its train logits when ``clean``
    (``known``: its raw logits, already computed)."""
    val = known.val if known is not None and known.val is not None else predict_logits(model, splits.val.x)
    t = fit_temperature(val, y_val) if calibrate else 1.0
    module = TemperatureScaled(model, t) if calibrate else model
    logits = None
    if clean and known is not None and known.train is not None:
        logits = known.train / t
    elif clean:
        logits = predict_logits(module, splits.train.x)
    return _Teacher(module=module, train_logits=logits, temperature=t)


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
    augment_cfg: Any = None,
    teacher_logits: SplitLogits | None = None,
) -> Decision:
    """Run the trials of ``cfg`` (``loss.kind``/``assistants`` auto) and return the decision with every trial.

    Args:
        teacher: the trained teacher (temperature-scaled on val when ``cfg.calibrate_teachers``).
        make_member: ``make_member(None)`` builds a fresh untrained student, ``make_member(r)`` an assistant at MAC
            ratio ``r`` (e.g. pruned from the teacher); called once per trial, so it must be deterministic.
        splits: ``train`` and ``val`` with ``x``/``y``.
        cfg: the distill config; ``cfg.trials`` sets the candidates and the budget, ``cfg.teacher_targets`` how
            the teacher's targets are computed.
        student_ratio: the student's MACs relative to the teacher (for the assistants' ratios).
        workdir: one subfolder per trial (a finished trial is reused by ``train_model``).
        seed: the same for every candidate.
        progress: progress bars.
        device: passed to ``train_model``.
        augment_cfg: the data's augmentation, as the final run uses it (None: none).
        teacher_logits: the teacher's raw logits on the splits, when the caller has them (else computed here).
    """
    workdir = Path(workdir)
    if getattr(splits, "val", None) is None:
        raise ConfigError("the trials need a val split", "give data with a val split, or fixed loss and assistants")
    x_tr, _ = split_arrays(splits, "train")
    _, y_val = split_arrays(splits, "val")
    n_train = len(x_tr)
    clean = cfg.teacher_targets == "clean"
    t_teach = _teaching(teacher, splits, y_val, cfg.calibrate_teachers, clean, teacher_logits)
    hop_seed = key_seed(seed, "trial")
    candidates = loss_candidates(cfg)
    chain_models = _chain_models(cfg, student_ratio) if cfg.assistants == "auto" else 0
    range_steps = cfg.train.lr_range_steps if cfg.train.lr == "auto" else 0
    plan = plan_rungs(len(candidates), cfg, n_train, chain_models=chain_models, range_steps=range_steps)

    lrs: dict[str, float] = {}  # each candidate's range-tested rate (lr: auto), found at rung 0 and kept

    def fit(
        name: str, model: nn.Module, loss: LossConfig, by: _Teacher, steps: int, key: str
    ) -> tuple[Any, float, dict]:
        started = time.perf_counter()
        kd = loss.kind != "ce"
        train = _train_for(cfg, steps, n_train)
        if key in lrs:
            train = train.model_copy(update={"lr": lrs[key]})
        res = train_model(
            model,
            splits,
            train,
            workdir=workdir / _folder(name),
            seed=hop_seed,
            teacher=by.module if kd else None,
            teacher_logits=by.train_logits if kd else None,
            loss=loss,
            augment_cfg=augment_cfg,
            progress=progress,
            device=device,
            teacher_precision=cfg.teacher_precision,
            teacher_targets=cfg.teacher_targets,
        )
        if res.lr is not None and cfg.train.lr == "auto":
            lrs.setdefault(key, float(res.lr))
        m = compute_metrics(predict_logits(res.model, splits.val.x), y_val)
        return res, time.perf_counter() - started, m

    def trial(name: str, step: str, loss: LossConfig, ratios: list[float], steps: int, rung: int) -> Trial:
        by, seconds, n_steps = t_teach, 0.0, 0
        path = f"r{rung}/{name}/" if ratios else f"r{rung}/"
        key = loss_name(loss)
        for r in ratios:  # the assistants, largest first, each taught by the one before
            res, s, _ = fit(f"{path}ta-{r:.3f}", make_member(r), loss, by, steps, key)
            by = _teaching(res.model, splits, y_val, cfg.calibrate_teachers, clean)
            seconds, n_steps = seconds + s, n_steps + steps
        res, s, m = fit(f"{path}student-{name}", make_member(None), loss, by, steps, key)
        row = Trial(name=name, step=step, loss=loss.model_dump(mode="json"), ratios=list(ratios),
                    val_accuracy=m["accuracy"], val_ece=m["ece"], val_nll=m["nll"], seconds=round(seconds + s, 3),
                    steps=n_steps + steps, rung=rung, lr=res.lr)  # fmt: skip
        log.info("trial %s (rung %d, %d steps): val acc %.4f, NLL %.4f, %.1f s", name, rung, row.steps,
                 row.val_accuracy, row.val_nll, row.seconds)  # fmt: skip
        return row

    alive = list(candidates)
    rows: list[Trial] = []
    for rung, (size, steps) in enumerate(zip(plan.sizes, plan.steps, strict=True)):
        assert len(alive) == size
        results = [trial(n, "loss", loss, [], steps, rung) for n, loss in alive]
        rows += results
        if rung + 1 < len(plan.sizes):
            keep = {t.name for t in sorted(results, key=_rank_key)[: plan.sizes[rung + 1]]}
            alive = [(n, loss) for n, loss in alive if n in keep]
    ranking = _ranking(rows)
    deepest = [t for t in rows if t.rung == len(plan.sizes) - 1]
    taught = [t for t in deepest if t.loss["kind"] != "ce"] or [t for t in rows if t.loss["kind"] != "ce"]
    base = Decision(loss={}, ratios=None, scratch=False, reason="", trials=rows, trial_steps=plan.steps[0],
                    subset=n_train, teacher_temperature=t_teach.temperature, ranking=ranking, rungs=plan.steps,
                    budget_steps=plan.total)  # fmt: skip
    if not taught:  # a fixed loss ce, or scratch alone: nothing to distill with
        won = _best(rows)
        won.chosen = True
        return replace(base, loss=won.loss, ratios=[], scratch=True, reason="scratch is the only candidate")
    won = _best(taught)
    won_loss = LossConfig.model_validate(won.loss)
    lead = _best(deepest)
    ahead = f" (scratch led the trials at {_pct(lead.val_accuracy)})" if lead.loss["kind"] == "ce" else ""
    head = f"{won.name} has the best val accuracy of the teacher losses ({_pct(won.val_accuracy)}, rung {won.rung})"
    if cfg.assistants != "auto":
        won.chosen = True
        return replace(base, loss=won.loss, reason=head + ahead)
    one = [math.sqrt(student_ratio)] if student_ratio < 1 else []
    planned = plan_assistant_ratios(student_ratio, cfg.n_assistants)
    chains = [won]
    top = len(plan.sizes) - 1
    if one:
        chains.append(trial(f"1 TA ({one[0]:.2f}) + {won.name}", "chain", won_loss, one, plan.steps[-1], top))
    if planned and [round(r, 6) for r in planned] != [round(r, 6) for r in one]:
        label = ", ".join(f"{r:.2f}" for r in planned)
        chains.append(trial(f"planned path ({label}) + {won.name}", "chain", won_loss, planned, plan.steps[-1], top))
    best = _best(chains)
    best.chosen = True
    how = (
        "direct"
        if not best.ratios
        else f"{len(best.ratios)} assistant(s) at MAC ratio(s) " + ", ".join(f"{r:.2f}" for r in best.ratios)
    )
    reason = f"{head}{ahead}; {how} has the best val accuracy of the chain trials ({_pct(best.val_accuracy)})"
    return replace(base, loss=won.loss, ratios=list(best.ratios), reason=reason, trials=rows + chains[1:])


def _chain_models(cfg: DistillConfig, student_ratio: float) -> int:
    """Models the chain trials train (each assistant and its student) for ``assistants: auto``."""
    one = 2 if student_ratio < 1 else 0
    planned = plan_assistant_ratios(student_ratio, cfg.n_assistants) if student_ratio < 1 else []
    return one + (len(planned) + 1 if planned and len(planned) != 1 else 0)


def _ranking(rows: list[Trial]) -> list[str]:
    """Every candidate once, best first: by the deepest rung it reached, then by val accuracy there."""
    last: dict[str, Trial] = {}
    for t in rows:
        if t.step == "loss" and (t.name not in last or t.rung > last[t.name].rung):
            last[t.name] = t
    return [t.name for t in sorted(last.values(), key=_rank_key)]


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


__all__ = ["Decision", "Plan", "Trial", "decide", "final_steps", "fresh_copy", "loss_candidates", "plan_rungs"]
