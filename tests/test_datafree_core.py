"""Unit tests of data-free distillation pieces: the FOMAML meta step (against a hand-computed example), BN-statistics
momentum, the inversion loss, augmentation, the on-disk pool, config, generator, plan and figures."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from conftest import bn_teacher
from edgecompress.distill.datafree import (
    BNStatsHooks,
    DataFreeConfig,
    Generator,
    InversionLoss,
    Pixels,
    Plan,
    Pool,
    accuracy_curve,
    meta_optimizer,
    meta_round,
    sample_grid,
)
from edgecompress.distill.datafree.deepinversion import total_variation_l2
from edgecompress.distill.datafree.inversion import adversarial_divergence
from edgecompress.errors import ModelError

torch.set_num_threads(1)


class _Scalar(nn.Module):
    """G(z; θ) = θ·z with one scalar parameter θ: small enough to follow Adam by hand."""

    def __init__(self, theta: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.tensor([theta], dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.theta * z


def _loss(out: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    loss = ((out - 3.0) ** 2).sum()  # dL/d(out) = 2(out − 3)
    return loss, {"loss_inv": float(loss.detach())}


def test_fomaml_meta_step_matches_the_hand_computed_two_step_example() -> None:
    """θ0 = 1, z = 1, L = (θz − 3)², k = 2, lr_g = 0.1, lr_z = 0.05; meta Adam lr = lr_g·k = 0.2, betas (0.5, 0.999).

    Inner step 1: out 1, dL/dout = −4 → g_θ = −4, g_z = −4. Adam's first step moves each by lr·g/|g|:
    θ′ = 1.1, z = 1.05. Inner step 2: out 1.155, dL/dout = −3.69 → g_θ = −3.69·1.05 = −3.8745.
    FOMAML: G = −4 + (−3.8745) = −7.8745 (the sum of both inner gradients, not the last alone).
    Meta Adam step 1: m = 0.5·G, v = 0.001·G², θ = 1 − 0.2·m̂/√v̂ = 1 − 0.2·G/|G| = 1.2.
    Round 2 from θ = 1.2, z = 1: g_θ = −3.6, θ′ = 1.3, z = 1.05, out 1.365, g_θ = 2(1.365 − 3)·1.05 = −3.4335,
    G₂ = −7.0335; m₂ = 0.5·m + 0.5·G₂, v₂ = 0.999·v + 0.001·G₂², θ = 1.2 − 0.2·(m₂/0.75)/√(v₂/(1 − 0.999²)).
    """
    meta = _Scalar(1.0)
    opt = meta_optimizer(meta, lr_g=0.1, k=2)
    assert opt.defaults["lr"] == pytest.approx(0.2) and opt.defaults["betas"] == (0.5, 0.999)
    z = torch.ones(1, dtype=torch.float64)
    best, terms = meta_round(meta, opt, z, _loss, k=2, lr_g=0.1, lr_z=0.05, kind="fomaml")
    g1 = -4.0 + 2 * (1.1 * 1.05 - 3.0) * 1.05
    assert g1 == pytest.approx(-7.8745)
    state = opt.state[meta.theta]
    assert float(state["exp_avg"]) == pytest.approx(0.5 * g1, rel=1e-6)
    assert float(state["exp_avg_sq"]) == pytest.approx(0.001 * g1**2, rel=1e-6)
    assert float(meta.theta.detach()) == pytest.approx(1.2, rel=1e-6)
    gz2 = 2 * (1.155 - 3.0) * 1.1  # z's second Adam step (its first moved it to 1.05)
    mz, vz = 0.5 * (0.5 * -4.0) + 0.5 * gz2, 0.999 * (0.001 * 16.0) + 0.001 * gz2**2
    assert float(z) == pytest.approx(1.05 - 0.05 * (mz / 0.75) / math.sqrt(vz / (1 - 0.999**2)), rel=1e-6)
    assert float(best) == pytest.approx(1.155, rel=1e-6) and terms["loss_inv"] == pytest.approx(1.845**2, rel=1e-6)

    z = torch.ones(1, dtype=torch.float64)
    meta_round(meta, opt, z, _loss, k=2, lr_g=0.1, lr_z=0.05, kind="fomaml")
    g2 = -3.6 + 2 * (1.3 * 1.05 - 3.0) * 1.05
    assert g2 == pytest.approx(-7.0335)
    m2 = 0.5 * (0.5 * g1) + 0.5 * g2
    v2 = 0.999 * (0.001 * g1**2) + 0.001 * g2**2
    expected = 1.2 - 0.2 * (m2 / (1 - 0.5**2)) / (math.sqrt(v2 / (1 - 0.999**2)) + 1e-8)
    assert float(meta.theta.detach()) == pytest.approx(expected, rel=1e-6)
    assert abs(expected - 1.4) > 1e-3  # the persistent Adam's moments matter: not another sign step of 0.2


def test_reptile_meta_step_feeds_67_times_the_difference_to_the_same_adam() -> None:
    meta = _Scalar(1.0)
    opt = meta_optimizer(meta, lr_g=0.1, k=2)
    fast_theta = 1.1 + 0.1 * (0.5 * 0.5 * -4 + 0.5 * -3.8745) / 0.75 / -(
        math.sqrt((0.999 * 0.001 * 16 + 0.001 * 3.8745**2) / (1 - 0.999**2))
    )  # the fast copy's second Adam step, by hand
    meta_round(meta, opt, torch.ones(1, dtype=torch.float64), _loss, k=2, lr_g=0.1, lr_z=0.05, kind="reptile")
    grad = 67.0 * (1.0 - fast_theta)
    assert float(opt.state[meta.theta]["exp_avg"]) == pytest.approx(0.5 * grad, rel=1e-5)
    assert float(meta.theta.detach()) == pytest.approx(1.2, rel=1e-6)
    with pytest.raises(ValueError, match="fomaml"):
        meta_round(meta, opt, torch.ones(1, dtype=torch.float64), _loss, k=1, lr_g=0.1, lr_z=0.1, kind="maml2")


def _one_bn(mean: list[float], var: list[float]) -> nn.Module:
    bn = nn.BatchNorm2d(2)
    bn.running_mean.copy_(torch.tensor(mean))
    bn.running_var.copy_(torch.tensor(var))
    return nn.Sequential(bn).eval()


def test_bn_momentum_mixes_the_moving_average_of_earlier_rounds() -> None:
    model = _one_bn([0.5, -1.0], [2.0, 0.5])
    rm, rv = model[0].running_mean, model[0].running_var
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 2, 3, 3, generator=gen) * (i + 1) + i for i in range(3)]
    stats = [(b.mean((0, 2, 3)), b.var((0, 2, 3), unbiased=False)) for b in batches]

    def dist(mean: torch.Tensor, var: torch.Tensor) -> float:
        return float((rm - mean).norm() + (rv - var).norm())

    with BNStatsHooks(model, momentum=0.9) as hooks:
        measured = []
        for b in batches:
            hooks.active = True
            model(torch.randn(6, 2, 3, 3, generator=gen))  # an earlier inner step: not the one the average takes
            hooks.collect()
            model(b)
            hooks.active = False
            measured.append(float(hooks.collect()))
            hooks.update_momentum()
    (m0, v0), (m1, v1), (m2, v2) = stats
    assert measured[0] == pytest.approx(dist(m0, v0), rel=1e-5)  # first round: this batch alone
    assert measured[1] == pytest.approx(dist(0.1 * m1 + 0.9 * m0, 0.1 * v1 + 0.9 * v0), rel=1e-5)
    avg_m, avg_v = 0.9 * m0 + 0.1 * m1, 0.9 * v0 + 0.1 * v1  # M ← 0.9·M + 0.1·(last batch)
    assert measured[2] == pytest.approx(dist(0.1 * m2 + 0.9 * avg_m, 0.1 * v2 + 0.9 * avg_v), rel=1e-5)

    with BNStatsHooks(model, momentum=0.0) as plain:  # m = 0: DeepInversion's plain distance every round
        for b, (m, v) in zip(batches, stats, strict=True):
            plain.active = True
            model(b)
            assert float(plain.collect()) == pytest.approx(dist(m, v), rel=1e-5)
            plain.update_momentum()
        assert plain.mmt == [None]


def test_inversion_loss_decreases_on_pixels_and_leaves_the_teacher_alone() -> None:
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
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


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
    pt, ps = t[0].softmax(0), s[0].softmax(0)
    assert float(adversarial_divergence(t, s)) == pytest.approx(float((pt * (pt.log() - ps.log())).sum()) / 2)


def test_pixels_crop_with_zero_padding_flip_and_normalize() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1) / 16
    px = Pixels(1, mean=[0.5], std=[0.25], pad=1, flip=False)
    a = px.augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, px.augment(x, torch.Generator().manual_seed(3)))  # deterministic given the generator
    padded = torch.nn.functional.pad(x[:1], (1, 1, 1, 1))
    crops = {tuple(padded[0, 0, i : i + 4, j : j + 4].flatten().tolist()) for i in range(3) for j in range(3)}
    seen = {tuple(img[0].flatten().tolist()) for img in a}
    assert seen <= crops and len(seen) > 4  # every output is one of the 9 zero-padded crops, several are drawn
    flipped = Pixels(1, mean=None, std=None, pad=0, flip=True).augment(x, torch.Generator().manual_seed(0))
    kinds = {torch.equal(f, x[0]) or (torch.equal(f, x[0].flip(2)) and 2) for f in flipped}
    assert kinds == {True, 2}
    assert torch.allclose(px.normalize(x), (x - 0.5) / 0.25) and torch.allclose(px.to_pixels(px.normalize(x)), x)
    xr = x.clone().requires_grad_()
    px(xr, torch.Generator().manual_seed(1)).sum().backward()
    assert xr.grad is not None and float(xr.grad.abs().sum()) > 0


def test_pool_round_trips_8_bit_pixels_and_truncates(tmp_path) -> None:
    pool = Pool(tmp_path / "pool", (1, 2, 2))
    first = torch.tensor([[0.0, 0.5], [0.999, 1.0]]).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    pool.add(first, torch.tensor([0, 1, 2]))
    pool.add(torch.full((2, 1, 2, 2), 0.25), torch.tensor([3, 4]))
    assert len(pool) == 5 and (tmp_path / "pool" / "images.u8").stat().st_size == 5 * 4
    back = pool.pixels(torch.tensor([4, 0]))
    assert torch.allclose(back[1], torch.round(first[0] * 255) / 255) and torch.allclose(
        back[0], torch.tensor(64 / 255)
    )
    assert pool.targets(torch.tensor([4, 0, 2])).tolist() == [4, 0, 2]
    batches = pool.batches(3, 2, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [2, 2, 2] and set(torch.cat(batches)[:5].tolist()) == set(range(5))
    reopened = Pool(tmp_path / "pool", (1, 2, 2), fresh=False)  # a resume: what a killed run appended is dropped
    assert len(reopened) == 5
    reopened.truncate(3)
    assert len(reopened) == 3 and (tmp_path / "pool" / "labels.i64").stat().st_size == 3 * 8
    with pytest.raises(ValueError, match="holds 3"):
        reopened.truncate(4)
    assert len(Pool(tmp_path / "pool", (1, 2, 2))) == 0  # a fresh pool starts empty


def test_config_defaults_are_the_official_ones_and_validators() -> None:
    cfg = DataFreeConfig()
    assert (cfg.rounds, cfg.batch_size, cfg.k_inner_steps, cfg.meta, cfg.bn_momentum) == (220, 256, 5, "fomaml", 0.9)
    assert (cfg.warmup_rounds, cfg.reset_l0_round, cfg.student_steps_per_round, cfg.kd_temperature) == (
        20,
        140,
        400,
        20,
    )
    assert (cfg.student_lr, cfg.student_momentum, cfg.student_weight_decay) == (0.2, 0.9, 1e-4)
    assert cfg.weights() == (10.0, 0.5, 1.33) and cfg.lrs() == (0.01, 3e-3)
    assert DataFreeConfig(k_inner_steps=2).lrs() == (0.015, 5e-3) and DataFreeConfig(k_inner_steps=10).lrs() == (
        0.01,
        2e-3,
    )
    assert DataFreeConfig(k_inner_steps=3, lr_z=0.2).lrs() == (0.2, 5e-3)
    di = DataFreeConfig(method="deepinversion")
    assert di.weights() == (10.0, 1.0, 0.0) and (di.di_steps, di.di_lr, di.di_tv) == (2000, 0.05, 2.5e-5)
    assert cfg.pad(32) == 4 and cfg.pad(8) == 1 and cfg.jitter(32) == 2 and DataFreeConfig(crop_pad=2).pad(28) == 2
    with pytest.raises(ValidationError, match="never train"):
        DataFreeConfig(rounds=10, warmup_rounds=10)
    for bad in ({"method": "cmi"}, {"meta": "maml"}, {"bn_momentum": 1.0}, {"unknown_field": 1}, {"crop_pad": 99}):
        with pytest.raises(ValidationError):
            DataFreeConfig(**bad)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 32, 32), (3, 10, 14)])
def test_generator_shape_range_and_reset(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    g = Generator(16, shape, width=4)
    x = g(torch.randn(3, 16)).detach()
    assert x.shape == (3, *shape) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.no_grad():  # as after training: no parameter at its initial value
        for p in g.parameters():
            p.add_(0.5)
    before = copy.deepcopy(g.state_dict())
    g.reset_first_layer()
    after = g.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"l1.0.weight", "l1.0.bias", "conv_blocks.0.weight", "conv_blocks.0.bias"}
    assert float(after["conv_blocks.0.weight"].std()) < 0.1 and float(after["l1.0.bias"].abs().sum()) == 0.0


def test_deepinversion_total_variation_is_nvlabs_four_direction_norm() -> None:
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    # horizontal (−1, −2), vertical (−2, −3), diagonals (2 − 1 = 1) and (0 − 4 = −4)
    expected = math.sqrt(1 + 4) + math.sqrt(4 + 9) + 1 + 4
    assert float(total_variation_l2(x)) == pytest.approx(expected)


def test_plan_estimates_and_text() -> None:
    plan = Plan(method="fastdfkd", rounds=220, start_round=0, warmup_rounds=20, synthesis_steps_per_round=5,
                student_steps_per_round=40, batch_size=128, student_batch_size=128, seconds_per_synthesis_step=0.2,
                seconds_per_student_step=0.05, seconds_per_deepinversion_step=0.1)  # fmt: skip
    assert plan.synthesis_seconds == pytest.approx(220 * 5 * 0.2)
    assert plan.student_seconds == pytest.approx(200 * 40 * 0.05)
    assert plan.minutes == pytest.approx((220 + 400) / 60)
    assert plan.deepinversion_seconds() == pytest.approx(220 * 2000 * 0.1)
    text = plan.text()
    assert (
        text.startswith("220 rounds × k = 5, 40 student steps per round after 20 warm-up rounds")
        and "~10.3 min" in text
    )
    assert "~200× this run's" in text
    later = Plan(method="deepinversion", rounds=10, start_round=4, warmup_rounds=2, synthesis_steps_per_round=50,
                 student_steps_per_round=5, batch_size=8, student_batch_size=8, seconds_per_synthesis_step=0.01,
                 seconds_per_student_step=0.01)  # fmt: skip
    assert later.text().startswith("resuming at round 5: 10 rounds × 50 DeepInversion steps")
    assert later.student_seconds == pytest.approx(6 * 5 * 0.01) and later.deepinversion_seconds() is None


def test_figures_write_pngs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 1, 8, 8)).astype(np.float32)
    y = np.arange(30) % 3
    out = sample_grid(x, y, 3, tmp_path / "grid.png", per_class=4, mean=[0.5], std=[0.25], class_names=["a", "b", "c"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        sample_grid(x[:, 0], y, 3, tmp_path / "bad.png")
    curve = accuracy_curve({"k=5": [(10, 0.5), (20, 0.7)], "DI": [(10, 0.4)]}, tmp_path / "c.png", teacher=0.9)
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
