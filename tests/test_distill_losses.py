"""Golden values of the distillation losses on tiny hand-checked tensors, and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch

from edgecompress.distill.config import LossConfig
from edgecompress.distill.losses import BDKDLoss, CELoss, DISTLoss, KDLoss, build_loss, margin_penalty

LN3 = math.log(3.0)
# Student logits [0, 0] -> p_s = (1/2, 1/2); teacher [ln 3, 0] -> p_t = (3/4, 1/4) at T = 1.
ZS = torch.tensor([[0.0, 0.0]])
ZT = torch.tensor([[LN3, 0.0]])
Y = torch.tensor([0])
# KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2)
KL_T1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def test_kd_golden_t1_alpha1() -> None:
    out = KDLoss(temperature=1.0, alpha=1.0)(ZS, ZT, Y)
    assert out["kd"].item() == pytest.approx(KL_T1, abs=1e-6)
    assert out["loss"].item() == pytest.approx(KL_T1, abs=1e-6)
    assert out["ce"].item() == pytest.approx(math.log(2), abs=1e-6)


def test_kd_golden_t2_alpha09() -> None:
    # T = 2: teacher [ln3/2, 0] -> p_t = (√3, 1)/(√3 + 1); loss = 0.1·ln 2 + 0.9·4·KL
    s3 = math.sqrt(3.0)
    pt = (s3 / (s3 + 1), 1 / (s3 + 1))
    kl = pt[0] * math.log(pt[0] / 0.5) + pt[1] * math.log(pt[1] / 0.5)
    out = KDLoss(temperature=2.0, alpha=0.9)(ZS, ZT, Y)
    assert out["loss"].item() == pytest.approx(0.1 * math.log(2) + 0.9 * 4 * kl, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.2001415, abs=1e-6)


def test_kd_zero_when_student_equals_teacher() -> None:
    z = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    assert KDLoss(4.0, 1.0)(z, z.clone(), torch.tensor([0, 1]))["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_dist_golden_two_classes() -> None:
    # With 2 classes every Pearson correlation is ±1: the sign says whether the two predictions move together.
    zs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    agree = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    loss = DISTLoss(temperature=1.0, beta=1.0, gamma=1.0)
    out = loss(zs, agree, torch.tensor([0, 1]))
    assert out["inter"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["intra"].item() == pytest.approx(0.0, abs=1e-6)
    # sample 0 now disagrees (ρ = −1), sample 1 agrees (ρ = +1): inter = 1 − 0 = 1. Class 0 over samples:
    # student (0.73, 0.27) falls, teacher (0.12, 0.05) falls -> ρ = +1 for both classes: intra = 0.
    out = loss(zs, torch.tensor([[0.0, 2.0], [0.0, 3.0]]), torch.tensor([0, 1]))
    assert out["inter"].item() == pytest.approx(1.0, abs=1e-6)
    assert out["intra"].item() == pytest.approx(0.0, abs=1e-6)
    # the paper's weights: CE at 1 plus the relation terms
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 1.0, abs=1e-6)
    weighted = DISTLoss(temperature=2.0, beta=2.0, gamma=1.0)(zs, torch.tensor([[0.0, 2.0], [0.0, 3.0]]), Y.repeat(2))
    # CE + T²·(2·inter + 1·intra) with T = 2 -> CE + 4·2·1
    assert weighted["loss"].item() == pytest.approx(weighted["ce"].item() + 8.0, abs=1e-5)


def test_dist_weights_ce_at_one_as_the_paper() -> None:
    """DIST (Huang et al., 2022; hunto/DIST_KD): L = CE + T²(β·inter + γ·intra); no 1 − α on the CE."""
    torch.manual_seed(0)
    zs, zt, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    out = build_loss(LossConfig(kind="dist"))(zs, zt, y)
    assert out["loss"].item() == pytest.approx((out["ce"] + out["inter"] + out["intra"]).item(), abs=1e-6)


def test_bdkd_golden() -> None:
    # H_t = −(¾ ln ¾ + ¼ ln ¼), H_s = ln 2; w_r = H_s/(H_s + H_t); reverse KL(p_s‖p_t) = ½ ln(2/3) + ½ ln 2.
    ht = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    hs = math.log(2)
    wr = hs / (hs + ht)
    rev = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    out = BDKDLoss(temperature=1.0, alpha=1.0)(ZS, ZT, Y)
    assert out["w_reverse"].item() == pytest.approx(wr, abs=1e-6)
    assert out["forward_kl"].item() == pytest.approx(KL_T1, abs=1e-6)
    assert out["reverse_kl"].item() == pytest.approx(rev, abs=1e-6)
    assert out["loss"].item() == pytest.approx((1 - wr) * KL_T1 + wr * rev, abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.1380053, abs=1e-6)


def test_margin_penalty_golden() -> None:
    # z = [3, 0, 1], m = 1: max − z = [0, 3, 2] -> relu(· − 1) = [0, 2, 1] -> 3; second row all equal -> 0.
    z = torch.tensor([[3.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert margin_penalty(z, 1.0).item() == pytest.approx(1.5, abs=1e-6)
    out = CELoss(mbls_margin=1.0, mbls_weight=0.1)(z, None, torch.tensor([0, 0]))
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.1 * 1.5, abs=1e-6)


@pytest.mark.parametrize("kind", ["ce", "kd", "dist", "bdkd"])
def test_gradients_flow_to_student_only(kind: str) -> None:
    torch.manual_seed(0)
    zs = torch.randn(6, 5, requires_grad=True)
    zt = torch.randn(6, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    loss = build_loss(LossConfig(kind=kind, mbls_margin=2.0), label_smoothing=0.1)
    out = loss(zs, zt.detach() if kind != "ce" else None, y)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0
    assert zt.grad is None


def test_kd_loss_needs_teacher() -> None:
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="needs a teacher"):
        build_loss(LossConfig(kind="kd"), has_teacher=False)


def test_config_defaults_come_from_the_loss_classes() -> None:
    """One default per loss: a config that leaves T / alpha out gets the class's (issue 27: they disagreed)."""
    from edgecompress.distill.losses import resolve_loss

    kd = resolve_loss(LossConfig(kind="kd"))
    assert (kd.temperature, kd.alpha) == (KDLoss.defaults["temperature"], KDLoss.defaults["alpha"])
    assert KDLoss().temperature == kd.temperature and KDLoss().alpha == kd.alpha
    dist = resolve_loss(LossConfig(kind="dist"))
    assert dist.temperature == DISTLoss.defaults["temperature"] == DISTLoss().temperature and dist.alpha is None


def test_dist_refuses_alpha_with_the_fix() -> None:
    from edgecompress.distill.losses import resolve_loss
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha does not apply to loss 'dist'"):
        resolve_loss(LossConfig(kind="dist", alpha=0.5))


def test_unknown_loss_lists_the_registered_ones() -> None:
    from pydantic import ValidationError

    from edgecompress.errors import ConfigError

    with pytest.raises(ValidationError, match="unknown loss 'fancy'; use one of: ce, kd, dist, bdkd"):
        LossConfig(kind="fancy")
    # a config that lists plugins defers the check to the run's start, where the registry answers in one line
    deferred = LossConfig.model_validate({"kind": "fancy"}, context={"plugins": True})
    with pytest.raises(ConfigError) as err:
        build_loss(deferred)
    assert "unknown loss 'fancy' in distill.loss.kind" in str(err.value) and "ce, kd, dist, bdkd" in str(err.value)


def test_builtin_loss_names_match_what_the_losses_module_registers() -> None:
    """The light name list (config checks without importing torch) is pinned to the registry."""
    from edgecompress._registry import LOSSES

    assert tuple(LOSSES.names()[: len(LOSSES.builtin_names)]) == LOSSES.builtin_names
