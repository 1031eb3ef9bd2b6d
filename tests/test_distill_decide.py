"""The trials that decide the student's loss and chain (``distill.decide``): every candidate is in the table, the
choice is the best on val, scratch can win, the teacher runs once for all trials; and calibration method auto."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from conftest import bn_net
from edgecompress.calibration.choose import choose_calibration
from edgecompress.calibration.config import CalibrationConfig
from edgecompress.distill.config import DistillConfig, LossConfig, MemberSpec, TrainConfig
from edgecompress.distill.decide import decide, loss_candidates
from edgecompress.distill.trainer import train_model

torch.set_num_threads(1)


def _split(n: int, seed: int) -> NS:
    g = np.random.default_rng(seed)
    protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    y = g.integers(0, 4, n).astype(np.int64)
    return NS(x=(protos[y] + 0.9 * g.normal(size=(n, 1, 8, 8))).astype(np.float32), y=y)


@pytest.fixture(scope="module")
def splits() -> NS:
    return NS(train=_split(640, 1), val=_split(96, 2), test=_split(96, 3))


def _teacher(splits: NS, workdir: Path, *, shift: int = 0) -> torch.nn.Module:
    """A trained teacher; with ``shift`` it learns labels (y + shift) mod 4: confidently wrong, a bad teacher."""
    data = NS(
        train=NS(x=splits.train.x, y=(splits.train.y + shift) % 4), val=NS(x=splits.val.x, y=(splits.val.y + shift) % 4)
    )
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.1, augment=False)
    return train_model(bn_net(16), data, cfg, workdir=workdir, seed=0, progress=False).model


@pytest.fixture(scope="module")
def teacher(splits: NS, tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    return _teacher(splits, tmp_path_factory.mktemp("teacher"))


def _make(ratio: float | None) -> torch.nn.Module:
    """A fresh student (width 4) or an assistant whose width follows its MAC ratio; seeded: same call, same model."""
    torch.manual_seed(7 if ratio is None else 8)
    return bn_net(4 if ratio is None else max(6, round(16 * ratio**0.5)))


def _cfg(**kw) -> DistillConfig:
    train = TrainConfig(epochs=4, batch_size=32, lr=0.1, augment=False)
    base = {"student": MemberSpec(prune_ratio=0.1), "train": train, "loss": LossConfig(kind="auto")}
    return DistillConfig(**(base | kw))


def test_successive_halving_promotes_the_best_third_and_chooses_a_teacher_loss(splits, teacher, tmp_path: Path) -> None:
    cfg = _cfg(assistants="auto", trials={"budget": 0.6, "min_steps": 6})
    d = decide(teacher, _make, splits, cfg, student_ratio=0.05, workdir=tmp_path, seed=0)
    loss_rows = [t for t in d.trials if t.step == "loss"]
    rung0 = [t for t in loss_rows if t.rung == 0]
    rung1 = [t for t in loss_rows if t.rung == 1]
    # every registered loss's trial settings: scratch, KD over T x alpha (3 x 2), DIST at T 1 and 4
    assert [t.name for t in rung0] == [n for n, _ in loss_candidates(cfg)]
    assert len(rung0) == 1 + 3 * 2 + 2 and rung0[0].name == "scratch (ce)"
    assert [t.name for t in rung0[-2:]] == ["dist T=1", "dist T=4"]
    # the best third of rung 0 (by val accuracy, ties by NLL) is promoted with eta x the steps
    ranked0 = sorted(rung0, key=lambda t: (-round(t.val_accuracy, 9), t.val_nll, t.val_ece))
    assert sorted(t.name for t in rung1) == sorted(t.name for t in ranked0[:3])
    assert d.rungs == [rung0[0].steps, rung1[0].steps] and rung1[0].steps == 3 * rung0[0].steps
    assert len(d.ranking) == len(rung0) and set(d.ranking[:3]) == {t.name for t in rung1}
    for t in d.trials:
        assert 0 <= t.val_accuracy <= 1 and t.val_nll > 0 and 0 <= t.val_ece <= 1 and t.steps > 0 and t.seconds > 0
    # the loss chosen is the best teacher loss of the deepest rung (scratch is ranked, never chosen here)
    taught = [t for t in rung1 if t.loss["kind"] != "ce"]
    best = min(taught, key=lambda t: (-round(t.val_accuracy, 9), t.val_nll, t.val_ece))
    assert not d.scratch and d.loss == best.loss
    # the chain step compared direct with one TA at sqrt(0.05) at the last rung's steps (the planned path is the
    # same single TA for 0.05, so it is not tried twice)
    chain_rows = [t for t in d.trials if t.step == "chain"]
    assert [t.ratios for t in chain_rows] == [[pytest.approx(0.05**0.5)]]
    assert chain_rows[0].steps == 2 * d.rungs[-1]  # the TA and its student
    chosen = [t for t in d.trials if t.chosen]
    assert len(chosen) == 1 and chosen[0] in [best, *chain_rows]
    assert chosen[0].val_accuracy == max(t.val_accuracy for t in [best, *chain_rows])
    assert d.ratios == chosen[0].ratios


def test_teacher_runs_once_for_all_trials(splits, teacher, tmp_path: Path) -> None:
    """With teacher_targets clean the teacher's logits on the train split are computed in one pass and reused by
    every KD/DIST trial: its forward count does not grow with the number of candidates."""
    calls: list[int] = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        small = _cfg(trials={"kd_temperatures": [2.0], "kd_alphas": [0.9], "dist": False, "min_steps": 6})
        d1 = decide(teacher, _make, splits, small, student_ratio=0.05, workdir=tmp_path / "a", seed=0)
        n_small = len(calls)
        calls.clear()
        big = _cfg(trials={"min_steps": 6})
        d2 = decide(teacher, _make, splits, big, student_ratio=0.05, workdir=tmp_path / "b", seed=0)
    finally:
        handle.remove()
    assert len([t for t in d1.trials if t.rung == 0]) == 2 and len([t for t in d2.trials if t.rung == 0]) == 9
    # one batched pass over val (temperature), one over the train split, whatever the number of candidates
    assert len(calls) == n_small and sum(calls) == len(splits.val.y) + d2.subset


def test_scratch_leads_against_a_wrong_teacher_and_the_reason_says_so(splits, tmp_path: Path) -> None:
    """A teacher that learned shifted labels teaches the wrong classes (uncalibrated: temperature scaling on val
    would flatten it to uniform): training on labels alone leads the trials, and the reason says so; whether the
    distilled student ships is decided at full budget against the scratch baseline, not here."""
    wrong = _teacher(splits, tmp_path / "teacher", shift=1)
    trials = {"min_steps": 20, "kd_temperatures": [1.0, 4.0], "kd_alphas": [0.9], "dist": False}
    cfg = _cfg(calibrate_teachers=False, trials=trials)
    d = decide(wrong, _make, splits, cfg, student_ratio=0.05, workdir=tmp_path / "trials", seed=0)
    assert d.ranking[0] == "scratch (ce)" and "scratch led the trials" in d.reason
    assert d.loss["kind"] == "kd" and not d.scratch


def test_plan_fits_the_budget_and_rungs_grow_by_eta() -> None:
    from edgecompress.distill.decide import final_steps, plan_rungs

    cfg = _cfg(train=TrainConfig(epochs=8, batch_size=128, lr=0.05), trials={"budget": 0.3})
    final = final_steps(cfg, 53488)  # the demo's shapes: 417 steps x 8 epochs
    plan = plan_rungs(9, cfg, 53488)
    assert plan.sizes == [9, 3] and plan.steps[1] == 3 * plan.steps[0]
    assert plan.total <= 0.3 * final and plan.total >= 0.25 * final
    with_chain = plan_rungs(9, cfg, 53488, chain_models=2, range_steps=40)
    assert with_chain.total <= 0.3 * final and with_chain.steps[0] < plan.steps[0]
    small = cfg.model_copy(update={"train": TrainConfig(epochs=4, batch_size=16, lr=0.05)})
    tiny = plan_rungs(9, small, 300)  # 18 steps x 4 epochs: the min_steps floor is kept, over the budget
    assert tiny.steps == [cfg.trials.min_steps, 3 * cfg.trials.min_steps] and tiny.total > 0.3 * final_steps(small, 300)


# ------------------------------------------------------------------------------------------ calibration: auto


def test_calibration_auto_picks_by_ece_among_accurate_candidates(splits, teacher) -> None:
    cfg = CalibrationConfig(method="auto", auto_margins=[2.0, 10.0], mbls={"finetune_epochs": 2, "lr": 1e-3})
    choice = choose_calibration(teacher, splits.train.x, splits.train.y, splits.val.x, splits.val.y, cfg, seed=0)
    rows = choice.rows()
    assert [r["name"] for r in rows] == ["ts", "mbls m=2 + ts", "mbls m=10 + ts"]
    eligible = [r for r in rows if r["eligible"]]
    assert all(r["val_accuracy"] >= rows[0]["val_accuracy"] - 0.005 for r in eligible)
    best = min(eligible, key=lambda r: (round(r["val_ece"], 4), r["val_nll"]))
    assert [r["name"] for r in rows if r["chosen"]] == [best["name"]]
    assert choice.method == ("ts" if best["name"] == "ts" else "mbls") and choice.temperature > 0


def test_calibration_auto_refuses_an_mbls_fine_tune_that_costs_accuracy(tmp_path: Path) -> None:
    """An overconfident model (logits x30) on hard data, fine-tuned on labels where class 0 reads as class 1: the
    fine-tune lowers the raw NLL (so mbls_finetune keeps it) but costs val accuracy: not eligible, not chosen."""
    import copy

    def hard(n: int, seed: int) -> NS:
        g = np.random.default_rng(seed)
        protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
        y = g.integers(0, 4, n).astype(np.int64)
        return NS(x=(protos[y] + 2.0 * g.normal(size=(n, 1, 8, 8))).astype(np.float32), y=y)

    data = NS(train=hard(640, 1), val=hard(200, 2))
    model = copy.deepcopy(_teacher(data, tmp_path))
    with torch.no_grad():
        model[5].weight.mul_(30)
        model[5].bias.mul_(30)
    wrong = np.where(data.train.y == 0, 1, data.train.y)
    cfg = CalibrationConfig(method="auto", auto_margins=[1.0], mbls={"finetune_epochs": 2, "lr": 0.01, "weight": 1.0})
    choice = choose_calibration(model, data.train.x, wrong, data.val.x, data.val.y, cfg, seed=0)
    ts, mbls = choice.rows()
    assert mbls["val_accuracy"] < ts["val_accuracy"] - cfg.auto_max_accuracy_drop
    assert not mbls["eligible"] and "below ts" in mbls["note"]
    assert ts["chosen"] and choice.method == "ts" and choice.model is model and "not eligible" in choice.reason
