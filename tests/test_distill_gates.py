"""The quality gate: teacher near chance refused, student too far below its teacher refused, escalation ladder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import bn_net
from edgecompress.distill.chain import distill_chain
from edgecompress.distill.config import DistillConfig, TrainConfig
from edgecompress.distill.gates import (
    QualityGateError,
    chance_threshold,
    check_student,
    check_teacher,
    escalate_ratio,
    near_chance,
)
from edgecompress.distill.trainer import train_model
from edgecompress.errors import ConfigError, TrainingError


def test_chance_threshold_follows_the_number_of_classes() -> None:
    assert chance_threshold(10) == pytest.approx(0.145)
    assert chance_threshold(2) == pytest.approx(0.625)
    assert chance_threshold(1000) == pytest.approx(1.5e-3, rel=1e-3)
    assert near_chance(0.108, 10) and not near_chance(0.2, 10)
    assert near_chance(float("nan"), 10)
    with pytest.raises(ConfigError):
        chance_threshold(1)


def test_teacher_near_chance_is_refused_with_the_likely_causes() -> None:
    with pytest.raises(QualityGateError) as err:
        check_teacher(0.112, 10)
    msg = str(err.value)
    assert "11.2 %" in msg and "10 classes" in msg and "near chance (10.0 %)" in msg
    assert "data.classes" in msg and "data.mean/std" in msg and "checkpoint" in msg
    assert "\n" not in msg and isinstance(err.value, TrainingError)


def test_teacher_below_its_claim_warns() -> None:
    assert check_teacher(0.93, 10) == []
    assert check_teacher(0.93, 10, claimed=0.95) == []
    (warning,) = check_teacher(0.925, 10, claimed=0.993)
    assert "92.5 %" in warning and "99.3 %" in warning and "6.8 points" in warning
    with pytest.raises(ConfigError, match="fraction"):
        check_teacher(0.9, 10, claimed=99.3)  # a percentage instead of a fraction


def test_student_within_the_allowed_drop_passes() -> None:
    check_student(0.986, 0.996, 10, max_drop=0.015)
    check_student(0.95, 1.0, 10, max_drop=0.05)  # exactly at the limit


def test_student_too_far_below_names_both_numbers_and_what_to_try() -> None:
    with pytest.raises(QualityGateError) as err:
        check_student(0.77, 0.96, 10, max_drop=0.05, prune_ratio=0.05)
    msg = str(err.value)
    assert "77.0 %" in msg and "96.0 %" in msg and "19.0 points" in msg and "allowed: 5.0" in msg
    assert "prune_ratio to 0.1" in msg and "distill.train.epochs" in msg and "distill.loss.kind" in msg


def test_student_at_chance_fails_even_with_a_weak_teacher() -> None:
    with pytest.raises(QualityGateError, match=r"10.8 % is at chance \(10.0 % for 10 classes\)"):
        check_student(0.108, 0.12, 10, max_drop=0.5)


def test_escalation_ladder_doubles_macs_up_to_half_the_teacher() -> None:
    ladder, r = [], 0.05
    while (r := escalate_ratio(r)) is not None:
        ladder.append(r)
    assert ladder == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert escalate_ratio(0.5) is None and escalate_ratio(0.9) is None
    with pytest.raises(ConfigError):
        escalate_ratio(0.0)


def test_gate_config_fields() -> None:
    cfg = DistillConfig()
    assert cfg.max_accuracy_drop == 0.05 and cfg.on_gate_failure == "escalate" and cfg.escalation_budget == 3.0
    # a given (unprunable) student escalates too: with more epochs
    assert DistillConfig(student={"model": {"family": "cnn"}}).on_gate_failure == "escalate"
    with pytest.raises(ValidationError):
        DistillConfig(escalation_budget=0.5)
    with pytest.raises(ValidationError):
        DistillConfig(max_accuracy_drop=5)  # points instead of a fraction


class _Constant(torch.nn.Module):
    """Ignores its input: predicts one class for everything, however it is trained (an assistant at chance)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :1] * 0.0 + self.bias


def _split(n: int, seed: int) -> NS:
    g = np.random.default_rng(seed)
    protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    y = np.repeat(np.arange(4), n // 4).astype(np.int64)
    return NS(x=(protos[y] + 0.5 * g.normal(size=(len(y), 1, 8, 8))).astype(np.float32), y=y)


def test_an_assistant_at_chance_does_not_teach(tmp_path: Path) -> None:
    splits = NS(train=_split(192, 1), val=_split(64, 2), test=_split(64, 3))
    torch.manual_seed(0)
    train = TrainConfig(epochs=3, batch_size=32, lr=0.1, augment=False)
    teacher = train_model(bn_net(16), splits, train, workdir=tmp_path / "teacher", seed=0, progress=False).model
    cfg = DistillConfig(
        student={"prune_ratio": 0.1}, train=train.model_copy(update={"epochs": 1}), max_accuracy_drop=1.0
    )
    with pytest.raises(QualityGateError, match=r"ta val accuracy 25.0 % is at chance \(25.0 % for 4 classes\)"):
        distill_chain(
            teacher, [("ta", _Constant()), ("student", bn_net(4))], splits, cfg, workdir=tmp_path / "c", seed=0
        )
    assert (tmp_path / "c" / "01-ta" / "record.json").exists()  # the failed hop is on record
    assert not (tmp_path / "c" / "02-student").exists()  # the student never learned from it


def test_a_teacher_at_chance_does_not_teach(tmp_path: Path) -> None:
    splits = NS(train=_split(64, 1), val=_split(64, 2), test=None)
    cfg = DistillConfig(student={"prune_ratio": 0.1}, train=TrainConfig(epochs=1, batch_size=32, lr=0.1))
    with pytest.raises(QualityGateError, match=r"teacher val accuracy 25.0 % on 4 classes is near chance"):
        distill_chain(_Constant(), [("student", bn_net(4))], splits, cfg, workdir=tmp_path, seed=0, progress=False)
