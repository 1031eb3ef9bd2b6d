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
from edgecompress.distill.decide import decide, loss_candidates, trial_budget
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


def test_every_candidate_is_tried_and_the_best_on_val_is_chosen(splits, teacher, tmp_path: Path) -> None:
    cfg = _cfg(assistants="auto", trials={"budget": 0.5, "min_steps": 10})
    d = decide(teacher, _make, splits, cfg, student_ratio=0.05, workdir=tmp_path, seed=0)
    names = [t.name for t in d.trials]
    loss_rows = [t for t in d.trials if t.step == "loss"]
    assert [t.name for t in loss_rows] == [n for n, _ in loss_candidates(cfg)]
    assert len(loss_rows) == 1 + 3 * 2 + 1 and names[0] == "scratch (ce)" and names[7].startswith("dist")
    chosen = [t for t in d.trials if t.chosen]
    assert len(chosen) == 1
    for t in d.trials:
        assert 0 <= t.val_accuracy <= 1 and t.val_nll > 0 and 0 <= t.val_ece <= 1 and t.steps > 0 and t.seconds > 0
    best_loss = max(loss_rows, key=lambda t: (t.val_accuracy, -t.val_nll))
    if d.scratch:
        assert chosen[0] is loss_rows[0] and d.ratios == [] and best_loss.name.startswith("scratch")
        return
    # a teacher loss won: the chain step compared direct (the loss winner) with one TA at sqrt(0.05) and the
    # planned path (for 0.05 it is the same single TA, so it is not tried twice)
    chain_rows = [t for t in d.trials if t.step == "chain"]
    assert [t.ratios for t in chain_rows] == [[pytest.approx(0.05**0.5)]]
    assert chain_rows[0].steps == 2 * d.trial_steps  # the TA and its student
    contenders = [best_loss, *chain_rows]
    top = max(t.val_accuracy for t in contenders)
    assert chosen[0].val_accuracy == top and chosen[0] in contenders
    assert d.loss == best_loss.loss and d.ratios == chosen[0].ratios


def test_teacher_runs_once_for_all_trials(splits, teacher, tmp_path: Path) -> None:
    """The teacher's logits on the trial subset are computed in one pass and reused by every KD/DIST trial: its
    forward count does not grow with the number of candidates."""
    calls: list[int] = []
    handle = teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        small = _cfg(trials={"kd_temperatures": [2.0], "kd_alphas": [0.9], "dist": False, "min_steps": 10})
        d1 = decide(teacher, _make, splits, small, student_ratio=0.05, workdir=tmp_path / "a", seed=0)
        n_small = len(calls)
        calls.clear()
        big = _cfg(trials={"min_steps": 10})
        d2 = decide(teacher, _make, splits, big, student_ratio=0.05, workdir=tmp_path / "b", seed=0)
    finally:
        handle.remove()
    assert len(d1.trials) == 2 and len(d2.trials) == 8
    assert len(calls) == n_small == 2  # one batched pass over val (temperature), one over the train subset
    assert sorted(calls) == sorted([len(splits.val.y), d2.subset])


def test_scratch_wins_against_a_wrong_teacher(splits, tmp_path: Path) -> None:
    """A teacher that learned shifted labels teaches the wrong classes (uncalibrated: temperature scaling on val
    would flatten it to uniform): training on labels alone must win."""
    wrong = _teacher(splits, tmp_path / "teacher", shift=1)
    trials = {"min_steps": 30, "kd_temperatures": [1.0, 4.0], "kd_alphas": [0.9]}
    cfg = _cfg(assistants="auto", calibrate_teachers=False, trials=trials)
    d = decide(wrong, _make, splits, cfg, student_ratio=0.05, workdir=tmp_path / "trials", seed=0)
    assert d.scratch and d.loss["kind"] == "ce" and d.ratios == []
    assert d.trials[0].chosen and not any(t.step == "chain" for t in d.trials)  # no chain trial after scratch won
    assert all(d.trials[0].val_accuracy > t.val_accuracy for t in d.trials[1:])
    assert "scratch won" in d.reason


def test_trial_budget_is_a_fraction_of_the_final_steps() -> None:
    cfg = _cfg(train=TrainConfig(epochs=4, batch_size=128, lr=0.05), trials={"budget": 0.03})
    train, subset = trial_budget(cfg, 27000)  # the Fashion-MNIST preset's shapes: 210 steps x 4 epochs
    assert train.epochs == 1 and train.max_steps_per_epoch == 26 and subset == 26 * 128 and not train.augment
    small, n = trial_budget(cfg.model_copy(update={"train": TrainConfig(epochs=8, batch_size=64, lr=0.05)}), 800)
    assert small.epochs * small.max_steps_per_epoch >= cfg.trials.min_steps and n == 800  # several epochs: all


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
