"""benchmarks/datafree.py trains through the package: ``load_splits``' arrays, ``train_model`` and its KD loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import datafree
from edgecompress.data import load_splits
from edgecompress.data.config import DataConfig


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(dataset="digits", calib_size=0), seed=0)


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_train_steps_runs_the_package_trainer_for_the_given_steps(digits, tmp_path: Path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = _net()
    before = [p.detach().clone() for p in model.parameters()]
    datafree.train_steps(model, digits, 7, workdir=tmp_path / "ce", seed=0, batch=32)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    result = (tmp_path / "ce" / "train_result.json").read_text()  # written by edgecompress.distill.train_model
    assert '"best_epoch"' in result


def test_reference_student_learns_the_teacher_not_the_labels(digits, tmp_path: Path) -> None:  # noqa: ANN001
    """alpha = 1: the KD term alone. A teacher that always answers class 3 makes the student answer 3 too."""
    torch.manual_seed(0)
    teacher = _net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
        teacher[1].bias[3] = 10.0
    student = _net()
    datafree.train_steps(student, digits, 30, workdir=tmp_path / "kd", seed=0, batch=64, teacher=teacher.eval())
    pred = datafree.predict_logits(student, digits.test.x).argmax(1)
    assert float((pred == 3).float().mean()) > 0.9
    assert datafree.accuracy(student, digits.test.x, digits.test.y) < 0.2  # the labels did not train it
