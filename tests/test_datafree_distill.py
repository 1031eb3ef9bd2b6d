"""End-to-end data-free distillation on a tiny BN teacher trained for a second on sklearn's 8×8 digits."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.distill.datafree import DataFreeConfig, datafree_distill, sample_grid
from edgecompress.errors import ConfigError, ModelError

torch.set_num_threads(1)


def _net(w1: int, w2: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, w1, 3, padding=1),
        nn.BatchNorm2d(w1),
        nn.ReLU(),
        nn.Conv2d(w1, w2, 3, padding=1),
        nn.BatchNorm2d(w2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w2, w2, 3, padding=1),
        nn.BatchNorm2d(w2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(w2, 10),
    )


@pytest.fixture(scope="module")
def digits() -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    mean, std = float(x.mean()), float(x.std())
    x = (x - mean) / std
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    teacher = _net(16, 32)
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    for _ in range(300):
        i = torch.randint(0, len(tr), (64,))
        loss = nn.functional.cross_entropy(teacher(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    with torch.no_grad():
        teacher_acc = float((teacher(torch.from_numpy(x[te])).argmax(1).numpy() == y[te]).mean())
    return {"teacher": teacher, "x": x[te], "y": y[te], "mean": [mean], "std": [std], "teacher_acc": teacher_acc}


def _student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return _net(8, 16)


def _run(digits: dict, cfg: DataFreeConfig, seed: int = 0, **kw):
    return datafree_distill(
        digits["teacher"],
        _student(),
        cfg,
        input_shape=(1, 8, 8),
        num_classes=10,
        seed=seed,
        val=(digits["x"], digits["y"]),
        mean=digits["mean"],
        std=digits["std"],
        progress=False,
        **kw,
    )


def test_fastdfkd_student_beats_chance_on_real_digits(digits: dict, tmp_path) -> None:
    assert digits["teacher_acc"] > 0.9  # the setup itself is sound
    teacher_state = copy.deepcopy(digits["teacher"].state_dict())
    cfg = DataFreeConfig(synthesis_batches=40, batch_size=32, student_steps_per_batch=10, lr_z=0.1, lambda_oh=2.0)
    res = _run(digits, cfg, workdir=tmp_path)
    # chance is 0.10; a student that learned nothing from the synthetic set stays near it
    assert res.val_accuracy is not None and res.val_accuracy > 0.35, res.val_accuracy
    assert res.synthesis_seconds > 0 and res.student_seconds > 0
    assert len(res.history) == 40 and res.history[-1]["loss_inv"] < res.history[0]["loss_inv"]
    assert res.history[-1]["student_loss"] < res.history[0]["student_loss"]
    assert res.bank_x.shape[1:] == (1, 8, 8) and len(res.bank_x) == len(res.bank_y) <= 512
    for k, v in digits["teacher"].state_dict().items():  # BN running stats untouched
        assert torch.equal(v, teacher_state[k]), k
    assert not digits["teacher"].training
    assert all(p.requires_grad for p in digits["teacher"].parameters())
    assert {p.name for p in tmp_path.iterdir()} >= {"student.pt", "bank_sample.pt", "datafree.json"}
    state = torch.load(tmp_path / "student.pt", weights_only=True)
    reloaded = _net(8, 16)
    reloaded.load_state_dict(state)
    png = sample_grid(res.bank_x, res.bank_y, 10, tmp_path / "samples.png", mean=digits["mean"], std=digits["std"])
    assert png.stat().st_size > 1000


def test_deepinversion_student_beats_chance(digits: dict) -> None:
    cfg = DataFreeConfig(
        method="deepinversion", deepinversion_steps=30, synthesis_batches=15, batch_size=32, student_steps_per_batch=10
    )
    res = _run(digits, cfg)
    assert res.method == "deepinversion"
    assert res.val_accuracy is not None and res.val_accuracy > 0.2, res.val_accuracy


def test_same_seed_same_result(digits: dict) -> None:
    cfg = DataFreeConfig(synthesis_batches=4, batch_size=16, student_steps_per_batch=3, k_inner_steps=2)
    rng_before = torch.get_rng_state()
    a, b, c = _run(digits, cfg), _run(digits, cfg), _run(digits, cfg, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is left alone
    assert torch.equal(a.bank_x, b.bank_x) and torch.equal(a.bank_y, b.bank_y)
    for (k, v), w in zip(a.student.state_dict().items(), b.student.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    assert [h["loss_inv"] for h in a.history] == [h["loss_inv"] for h in b.history]
    assert not torch.equal(a.bank_x, c.bank_x)


def test_no_bn_teacher_and_bad_shapes_raise_model_error(digits: dict) -> None:
    no_bn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10))
    cfg = DataFreeConfig(synthesis_batches=2, batch_size=8, student_steps_per_batch=1)
    no_bn.train()
    with pytest.raises(ModelError, match="BatchNorm2d"):
        datafree_distill(no_bn, _student(), cfg, input_shape=(1, 8, 8), num_classes=10, seed=0, progress=False)
    assert no_bn.training and all(p.requires_grad for p in no_bn.parameters())  # left as it was
    with pytest.raises(ConfigError, match="std"):
        datafree_distill(digits["teacher"], _student(), cfg, input_shape=(1, 8, 8), num_classes=10, seed=0, std=[0.0])
    with pytest.raises(ModelError, match="logits"):
        datafree_distill(digits["teacher"], _student(), cfg, input_shape=(1, 8, 8), num_classes=7, seed=0)
    with pytest.raises(ModelError, match="input_shape"):
        datafree_distill(digits["teacher"], _student(), cfg, input_shape=(8, 8), num_classes=10, seed=0)
