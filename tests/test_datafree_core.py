"""Unit tests of data-free distillation pieces: inversion loss, BN hooks, Reptile, bank, config, generator, grid."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from conftest import bn_teacher
from edgecompress.distill.datafree import (
    DataFreeConfig,
    Generator,
    InversionLoss,
    MemoryBank,
    reptile_update,
    sample_grid,
)
from edgecompress.distill.datafree.inversion import adversarial_divergence, augment_batch
from edgecompress.errors import ModelError

torch.set_num_threads(1)


def test_inversion_loss_decreases_on_pixels() -> None:
    teacher = bn_teacher()
    before = copy.deepcopy(teacher.state_dict())
    targets = torch.arange(16) % 4
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = torch.optim.Adam([x], lr=0.1)
    losses = []
    with InversionLoss(teacher, lambda_bn=1.0, lambda_oh=1.0, lambda_adv=0.0) as loss_fn:
        for _ in range(30):
            loss, terms = loss_fn(x, targets)
            losses.append(terms["loss_inv"])
            assert terms["loss_bn"] > 0
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert losses[-1] < 0.75 * losses[0], losses
    # the teacher's BN statistics were never touched
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bn_term_matches_formula() -> None:
    teacher = bn_teacher()
    x = torch.randn(8, 1, 8, 8)
    bn = teacher[1]
    with torch.no_grad():
        feat = teacher[0](x)
    expected = (feat.mean((0, 2, 3)) - bn.running_mean).norm() + (
        feat.var((0, 2, 3), unbiased=False) - bn.running_var
    ).norm()
    one = nn.Sequential(teacher[0], teacher[1]).eval()
    with InversionLoss(one, lambda_bn=1.0, lambda_oh=0.0, lambda_adv=0.0) as loss_fn:
        loss_fn.teacher = nn.Sequential(one, nn.Flatten(), nn.LazyLinear(4))  # logits for the CE term only
        _, terms = loss_fn(x, torch.zeros(8, dtype=torch.long))
    assert terms["loss_bn"] == pytest.approx(float(expected), rel=1e-5)


def test_teacher_without_bn_raises_model_error() -> None:
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    teacher(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ModelError, match="BatchNorm2d") as err:
        InversionLoss(teacher, lambda_bn=1.0, lambda_oh=1.0, lambda_adv=0.0)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)
    loss_fn = InversionLoss(teacher, lambda_bn=1.0, lambda_oh=1.0, lambda_adv=0.0, allow_no_bn=True)
    with loss_fn:
        _, terms = loss_fn(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))
    assert terms["loss_bn"] == 0.0 and terms["loss_oh"] > 0


def test_adversarial_term_only_counts_agreeing_samples() -> None:
    t = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    s = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # sample 0 agrees, sample 1 disagrees
    div = adversarial_divergence(t, s, kind="kl")
    pt, ps = t[0].softmax(0), s[0].softmax(0)
    assert float(div) == pytest.approx(float((pt * (pt.log() - ps.log())).sum()) / 2, rel=1e-5)
    assert float(adversarial_divergence(t, t, kind="js")) == pytest.approx(0.0, abs=1e-7)


def test_reptile_update_moves_by_beta_times_difference() -> None:
    torch.manual_seed(0)
    meta = Generator(8, (1, 8, 8), width=4)
    adapted = copy.deepcopy(meta)
    with torch.no_grad():
        for p in adapted.parameters():
            p.add_(torch.randn_like(p))
    theta = [p.detach().clone() for p in meta.parameters()]
    theta_prime = [p.detach().clone() for p in adapted.parameters()]
    reptile_update(meta, adapted, 0.3)
    for p, a, b in zip(meta.parameters(), theta, theta_prime, strict=True):
        torch.testing.assert_close(p.detach(), a + 0.3 * (b - a))
    assert not torch.equal(theta[0], list(meta.parameters())[0])


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 10, 14)])
def test_generator_shape_and_range(shape: tuple[int, int, int]) -> None:
    mean, std = [0.3] * shape[0], [0.2] * shape[0]
    g = Generator(16, shape, width=4, mean=mean, std=std)
    x = g(torch.randn(3, 16)).detach()
    assert x.shape == (3, *shape)
    assert float(x.min()) >= (0 - 0.3) / 0.2 - 1e-5 and float(x.max()) <= (1 - 0.3) / 0.2 + 1e-5


@pytest.mark.parametrize("policy", ["fifo", "reservoir"])
def test_bank_is_bounded(policy: str) -> None:
    bank = MemoryBank(50, policy=policy, gen=torch.Generator().manual_seed(0))
    for i in range(7):
        bank.add(torch.full((16, 1, 2, 2), float(i)), torch.full((16,), i))
        assert len(bank) == min(50, 16 * (i + 1))
    assert bank.seen == 7 * 16
    x, y = bank.sample(10)
    assert x.shape == (10, 1, 2, 2) and y.shape == (10,)
    assert torch.equal(x[:, 0, 0, 0].long(), y)  # images and labels stay paired
    if policy == "fifo":  # the oldest batches are gone
        assert int(bank.y.min()) >= 3
    assert sum(len(b) for b in bank.epoch(16)) == 50


def test_augment_is_deterministic_and_differentiable() -> None:
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    a = augment_batch(x, gen=torch.Generator().manual_seed(1), flip=True)
    b = augment_batch(x, gen=torch.Generator().manual_seed(1), flip=True)
    assert torch.equal(a, b) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None


def test_config_validators() -> None:
    cfg = DataFreeConfig()
    assert cfg.method == "fastdfkd" and cfg.k_inner_steps == 5
    with pytest.raises(ValidationError, match="bank_size"):
        DataFreeConfig(bank_size=16, batch_size=32)
    with pytest.raises(ValidationError, match="never train"):
        DataFreeConfig(student_steps_per_batch=0, student_epochs=0)
    with pytest.raises(ValidationError):
        DataFreeConfig(method="cmi")
    with pytest.raises(ValidationError):
        DataFreeConfig(beta_meta=1.5)
    with pytest.raises(ValidationError):
        DataFreeConfig(unknown_field=1)


def test_sample_grid_writes_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 1, 8, 8)).astype(np.float32)
    y = np.arange(30) % 3
    out = sample_grid(x, y, 3, tmp_path / "grid.png", per_class=4, mean=[0.5], std=[0.25], class_names=["a", "b", "c"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    rgb = sample_grid(torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 1, 0, 1, 0]), 2, tmp_path / "rgb.png")
    assert rgb.stat().st_size > 0
    with pytest.raises(ValueError):
        sample_grid(x[:, 0], y, 3, tmp_path / "bad.png")
