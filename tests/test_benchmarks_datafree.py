"""benchmarks/datafree.py fixes a protocol over the package's runner: the runs differ only in their synthesizer, the
metrics come from the package, the table's deltas and goal lines follow from the rows; the real-data reference
takes exactly the student steps of a data-free run and learns the teacher, not the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import datafree
from edgecompress.data import load_splits
from edgecompress.data.config import DataConfig
from edgecompress.distill.datafree import DataFreeConfig, real_data_kd

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201
    return load_splits(DataConfig(dataset="digits", calib_size=0), seed=0)


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_runs_share_the_budget_and_differ_only_in_the_synthesizer() -> None:
    runs, ref = datafree.runs_for(datafree.parse(["--rounds", "30", "--warmup", "3", "--di-steps", "20", "80"]))
    assert [r.name for r in runs] == ["FastDFKD k=2", "FastDFKD k=5", "FastDFKD k=10", "DeepInversion 20 steps",
                                      "DeepInversion 80 steps"]  # fmt: skip
    keep = {"method", "k_inner_steps", "di_steps"}
    for r in runs:
        assert r.cfg.model_dump(exclude=keep) == ref.model_dump(exclude=keep)
    assert [r.cfg.lrs() for r in runs[:3]] == [(0.015, 5e-3), (0.01, 3e-3), (0.01, 2e-3)]  # official, per k
    assert runs[3].cfg.weights() == (10.0, 1.0, 0.0) and runs[0].cfg.weights() == (10.0, 0.5, 1.33)
    assert ref.rounds == 30 and ref.student_steps_per_round == 40 and ref.crop_pad == 2


def test_table_deltas_and_goal_lines() -> None:
    def row(name: str, method: str, acc: float, synth: float | None) -> dict:
        return {"name": name, "method": method, "accuracy": acc, "synthesis_seconds": synth, "student_seconds": 10.0,
                "ece": 0.05, "ece_ts": 0.02, "agreement": 0.9}  # fmt: skip

    rows = [
        row("FastDFKD k=5", "fastdfkd", 0.86, 100.0),
        row("DeepInversion 200 steps", "deepinversion", 0.87, 2000.0),
        row("DeepInversion 50 steps", "deepinversion", 0.80, 500.0),
        row("KD on real", "real", 0.90, None),
    ]
    text = datafree.table(rows, 0.93, "header")
    assert "| FastDFKD k=5 | 100 | 10 | 86.00 % | -7.00 | -1.00 | 20.0× | 5.00 → 2.00 % | 90.00 % |" in text
    assert "| KD on real | – | 10 | 90.00 % | -3.00 | +3.00 | – |" in text
    assert "- FastDFKD k=5: teacher gap 7.00 pt (goal <= 8); +1.00 pt behind DeepInversion 200 steps at 20.0× less " \
           "synthesis (goal <= 2 pt at >= 10×); 4.00 pt behind real-data KD (goal <= 5)." in text  # fmt: skip


def test_evaluate_uses_the_package_metrics(digits) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = _net()
    x, y = torch.from_numpy(np.asarray(digits.train.x)), torch.from_numpy(digits.train.y)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        loss = nn.functional.cross_entropy(model(x) * 3, y)  # over-confident on purpose: TS must bring the ECE down
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_logits = datafree.predict_logits(model, digits.test.x)
    m = datafree.evaluate(model.eval(), t_logits, digits, calib_n=100)
    assert 0.8 < m["accuracy"] <= 1 and m["agreement"] == 1.0
    assert m["ece_ts"] <= m["ece"] and m["temperature"] > 0


def test_real_data_reference_takes_the_same_student_steps_and_learns_the_teacher(digits) -> None:  # noqa: ANN001
    """A teacher that always answers class 3 makes the student answer 3 too: KD alone, the labels are not used."""
    torch.manual_seed(0)
    teacher = _net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.zero_()
        teacher[1].bias[3] = 10.0
    cfg = DataFreeConfig(rounds=6, warmup_rounds=2, student_steps_per_round=5, student_batch_size=32, flip=False,
                         eval_every=2)  # fmt: skip
    val = (np.asarray(digits.test.x), digits.test.y)
    res = real_data_kd(teacher.eval(), _net(), digits.train.raw, digits.train.y, cfg, seed=0,
                       mean=digits.preprocess.mean, std=digits.preprocess.std, val=val)  # fmt: skip
    assert res.steps == (6 - 2) * 5 and [r for r, _ in res.curve] == [4, 6]
    pred = datafree.predict_logits(res.student, digits.test.x).argmax(1)
    assert float((pred == 3).float().mean()) > 0.9
    assert res.val_accuracy is not None and res.val_accuracy < 0.2  # the labels did not train it
