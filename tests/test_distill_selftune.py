"""Self-tuning training on real data (sklearn digits): lr range test, gradient clipping, automatic recovery.

The user's case from issue 14: a plain CNN (conv-ReLU-pool, two Linear, no BatchNorm) trained in plain PyTorch,
distilled with default settings into a student pruned from it. Before, the defaults diverged or collapsed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.data.config import DataConfig
from edgecompress.data.splits import load_splits
from edgecompress.distill.config import DistillConfig, TrainConfig
from edgecompress.distill.evaluate import predict_logits
from edgecompress.distill.gates import check_student, near_chance
from edgecompress.distill.lr_range import MARGIN, choose_lr, lr_range_test
from edgecompress.distill.recovery import at_chance, epoch_problem, majority_share
from edgecompress.distill.trainer import CHECKPOINT, train_model
from edgecompress.errors import TrainingError

torch.set_num_threads(1)


class PlainCNN(nn.Module):
    """conv-ReLU-pool x2, two Linear, no BatchNorm — written the way a PyTorch tutorial user writes it."""

    def __init__(self, widths: tuple[int, int] = (32, 64), hidden: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(widths[1] * 2 * 2, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _accuracy(model: nn.Module, split) -> float:
    return float((predict_logits(model, split.x).argmax(1).numpy() == split.y).mean())


@pytest.fixture(scope="module")
def digits():
    """Digits splits and a plain CNN teacher trained the user's way (Adam, plain loop), then a pruned student."""
    from edgecompress.models import prune_to_ratio

    splits = load_splits(DataConfig(dataset="digits", calib_size=0), seed=0)
    torch.manual_seed(0)
    teacher = PlainCNN()
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    x, y = torch.from_numpy(np.asarray(splits.train.x)), torch.from_numpy(splits.train.y)
    g = torch.Generator().manual_seed(0)
    for _ in range(15):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(teacher(x[idx]), y[idx]).backward()
            opt.step()
    teacher.eval()
    student = prune_to_ratio(teacher, splits.input_shape, DistillConfig().student.prune_ratio)
    return NS(splits=splits, teacher=teacher, student=student, teacher_val=_accuracy(teacher, splits.val))


def test_default_distillation_of_a_plain_cnn_does_not_diverge(digits, tmp_path: Path) -> None:
    res = train_model(
        copy.deepcopy(digits.student),
        digits.splits,
        TrainConfig(),  # the defaults: lr auto, grad_clip 5, max_recoveries 3
        workdir=tmp_path,
        seed=0,
        teacher=digits.teacher,
        progress=False,
    )
    assert res.lr_range is not None and res.lr == res.lr_range["lr"] and res.lr_range["rule"] != "inconclusive"
    assert not any("non-finite" in e or "exploded" in e for e in res.events), res.events
    assert all(np.isfinite(h["val_nll"]) for h in res.history)
    # within the quality gate's default drop of the teacher on val (raises QualityGateError otherwise)
    check_student(res.best_val_accuracy, digits.teacher_val, 10, max_drop=DistillConfig().max_accuracy_drop)


def test_huge_learning_rate_recovers_and_ends_above_chance(digits, tmp_path: Path) -> None:
    res = train_model(
        copy.deepcopy(digits.student),
        digits.splits,
        TrainConfig(lr=10.0),
        workdir=tmp_path,
        seed=0,
        teacher=digits.teacher,
        progress=False,
    )
    assert res.recoveries >= 1 and len(res.events) >= res.recoveries
    assert "restored the state after epoch" in res.events[0] and "lowered the peak lr 10 -> 3" in res.events[0]
    assert res.lr == 10.0 and res.history[-1]["lr"] < 10.0 * 0.3
    assert not near_chance(res.best_val_accuracy, 10)
    assert res.to_dict()["events"] == res.events  # the pipeline's report reads them from train_result.json


class CrashAt(nn.Module):
    """Wraps a model; raises at the n-th training forward (a stand-in for a killed process)."""

    def __init__(self, inner: nn.Module, n: int | None) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.n is not None and self.calls >= self.n:
                raise KeyboardInterrupt
        return self.inner(x)


def test_resume_after_a_recovery_is_bit_identical(digits, tmp_path: Path) -> None:
    cfg = TrainConfig(lr=10.0, epochs=4)
    steps = len(digits.splits.train.y) // cfg.batch_size  # the tail batch is kept: ceil; one more forward is fine

    def run(workdir: Path, crash: int | None):
        model = CrashAt(copy.deepcopy(digits.student), crash)
        return train_model(model, digits.splits, cfg, workdir=workdir, seed=0, teacher=digits.teacher, progress=False)

    reference = run(tmp_path / "reference", None)
    assert reference.recoveries >= 1 and reference.history[0]["epoch"] == 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", steps + 4)  # a few steps into the epoch retried after the first recovery
    ck = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert ck["recoveries"] == 1 and ck["lr_scale"] == pytest.approx(0.3) and len(ck["events"]) == 1
    resumed = run(tmp_path / "killed", None)
    assert resumed.events == reference.events and resumed.recoveries == reference.recoveries
    ra, rb = resumed.model.state_dict(), reference.model.state_dict()
    assert all(torch.equal(ra[k], rb[k]) for k in rb)
    assert [{**h, "seconds": 0} for h in resumed.history] == [{**h, "seconds": 0} for h in reference.history]


class NaNAlways(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        return z * float("nan") if self.training else z


def test_non_finite_loss_is_retried_then_reported(digits, tmp_path: Path) -> None:
    cfg = TrainConfig(lr=0.01, epochs=2, max_recoveries=2)
    with pytest.raises(TrainingError, match=r"non-finite at epoch 1 step 1 .*after 2 recoveries") as err:
        train_model(
            NaNAlways(copy.deepcopy(digits.student)), digits.splits, cfg, workdir=tmp_path, seed=0, progress=False
        )
    assert "lower the learning rate" in str(err.value)
    ck = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ck["recoveries"] == 2 and ck["lr_scale"] == pytest.approx(0.09)
    assert all("restored the state after epoch 0" in e for e in ck["events"])


def test_lr_range_test_is_deterministic_and_leaves_the_model_alone(digits) -> None:
    x, y = torch.from_numpy(np.asarray(digits.splits.train.x)), torch.from_numpy(digits.splits.train.y)
    model = copy.deepcopy(digits.student)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def probe(seed: int):
        g = torch.Generator().manual_seed(seed)
        batches = [torch.randperm(len(x), generator=g)[:128] for _ in range(40)]
        return lr_range_test(
            model,
            lambda m, idx: nn.functional.cross_entropy(m(x[idx]), y[idx]),
            batches,
            lambda m: torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9),
            lr_min=1e-4,
            lr_max=10.0,
            safe_lr=0.01,
            max_lr=0.1,
            grad_clip=5.0,
            seed=seed,
        )

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = probe(0), probe(0), probe(1)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert a.to_dict() == b.to_dict() and a.losses != c.losses
    assert 1e-4 <= a.lr <= 0.1 and a.lrs == sorted(a.lrs) and len(a.lrs) == len(a.losses)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class LazyNormalized:
    """A stand-in for the data package's lazy split view: uint8 storage, normalized per indexed batch."""

    def __init__(self, raw: np.ndarray, mean: float, std: float) -> None:
        self.raw, self.mean, self.std = raw, np.float32(mean), np.float32(std)
        self.shape = raw.shape

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, idx) -> np.ndarray:
        return (self.raw[idx].astype(np.float32) / np.float32(16.0) - self.mean) / self.std

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole split was materialized")


def test_lazy_split_views_are_read_per_batch_and_train_identically(digits, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = d.images.astype(np.uint8)[:, None]  # values 0..16
    y = d.target.astype(np.int64)
    lazy = NS(
        train=NS(x=LazyNormalized(raw[:300], 0.3, 0.4), y=y[:300]),
        val=NS(x=LazyNormalized(raw[300:400], 0.3, 0.4), y=y[300:400]),
    )
    dense = NS(train=NS(x=lazy.train.x[np.arange(300)], y=y[:300]), val=NS(x=lazy.val.x[np.arange(100)], y=y[300:400]))
    cfg = TrainConfig(epochs=2, batch_size=64)
    torch.manual_seed(0)
    init = PlainCNN((8, 16), 32)
    runs = [
        train_model(copy.deepcopy(init), s, cfg, workdir=tmp_path / name, seed=0, progress=False)
        for name, s in (("lazy", lazy), ("dense", dense))
    ]
    sa, sb = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert runs[0].lr == runs[1].lr


def test_a_plain_cnn_from_scratch_leaves_chance_with_the_defaults(tmp_path: Path) -> None:
    """Issue 14: a BN-free CNN from scratch sits on its plateau during the short range test (inconclusive); the safe
    SGD rate 0.01 kept it at chance and recovery lowered it further. A network at chance gets the plateau rate."""
    from zoo_models import plain_cnn

    splits = load_splits(DataConfig(dataset="digits", val_fraction=0.15, test_fraction=0.2, calib_size=0), seed=0)
    torch.manual_seed(1)
    res = train_model(plain_cnn(), splits, TrainConfig(epochs=6), workdir=tmp_path, seed=1, progress=False)
    assert res.lr_range is not None and res.lr_range["rule"] == "plateau"  # the probe saw no descent
    assert res.recoveries == 0 and res.events == []
    assert res.best_val_accuracy > 0.5  # chance is 0.1
    assert _accuracy(res.model, splits.val) == pytest.approx(res.best_val_accuracy)


def test_inconclusive_probe_rate_depends_on_whether_the_network_starts_at_chance() -> None:
    flat = [2.30 + 0.001 * (i % 3) for i in range(40)]
    lrs = [1e-4 * (1e5) ** (i / 39) for i in range(40)]
    pretrained = choose_lr(lrs, flat, None, safe_lr=0.01, max_lr=0.1)
    scratch = choose_lr(lrs, flat, None, safe_lr=0.01, max_lr=0.1, plateau_lr=0.1)
    assert (pretrained.rule, pretrained.lr) == ("inconclusive", 0.01)
    assert (scratch.rule, scratch.lr) == ("plateau", 0.1)
    rising = [*flat[:30], *(2.30 * 1.2 for _ in range(10))]  # the loss rose from the 31st rate on
    capped = choose_lr(lrs, rising, None, safe_lr=0.01, max_lr=0.1, plateau_lr=1.0)
    assert capped.rule == "plateau" and capped.lr == pytest.approx(lrs[30] / MARGIN)


def test_a_network_on_its_plateau_is_not_recovered() -> None:
    # the repro of issue 14: one digit predicted for everything (14.8 % of 270), then 14.4 %: noise, not a collapse
    majority = 40 / 270
    kw = {"val_nll": 2.2975, "best_nll": 2.2975, "num_classes": 10, "n": 270, "majority": majority}
    assert at_chance(0.148, 10, 270, majority)
    assert epoch_problem(0.144, start_accuracy=0.148, **kw) is None
    assert epoch_problem(0.144, start_accuracy=0.60, **kw) is not None  # a real collapse still is one
    assert majority_share(torch.tensor([0, 1, 1, 2])) == 0.5
