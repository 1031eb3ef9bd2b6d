"""Distillation losses. Each is a small ``nn.Module`` returning a dict of named terms with the total under ``"loss"``.

Notation: z_s / z_t student / teacher logits [N, K], y labels [N], T temperature, p^T = softmax(z / T).
Every loss is ``(1 − α)·CE(y, softmax(z_s)) + α·(distillation term)``, plus an optional MbLS margin penalty
``λ·mean_i Σ_k max(0, max_j z_ij − z_ik − m)`` on the student's logits (Liu et al., CVPR 2022, arXiv 2111.15430).
"""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress.distill.config import LossConfig
from edgecompress.errors import ConfigError


def margin_penalty(logits: Tensor, margin: float) -> Tensor:
    """MbLS margin term: mean over the batch of Σ_k max(0, max_j z_j − z_k − m) (Liu et al., CVPR 2022).

    The definition lives in ``edgecompress.calibration.mbls`` (one for the package).
    """
    from edgecompress.calibration.mbls import margin_penalty as impl

    return impl(logits, margin)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Per-sample KL(p ‖ q) from log-probabilities, shape [N]."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of the rows of ``a`` and ``b``, shape [rows]."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class _Base(nn.Module):
    def __init__(self, *, alpha: float, label_smoothing: float, mbls_margin: float | None, mbls_weight: float):
        super().__init__()
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.mbls_margin = mbls_margin
        self.mbls_weight = mbls_weight

    def _finish(self, student: Tensor, labels: Tensor, terms: dict[str, Tensor], distill: Tensor | None) -> dict:
        ce = F.cross_entropy(student, labels, label_smoothing=self.label_smoothing)
        loss = ce if distill is None else (1 - self.alpha) * ce + self.alpha * distill
        out = {"ce": ce, **terms}
        if self.mbls_margin is not None:
            out["margin"] = margin_penalty(student, self.mbls_margin)
            loss = loss + self.mbls_weight * out["margin"]
        out["loss"] = loss
        return out


class CELoss(_Base):
    """Plain cross-entropy with optional label smoothing and MbLS margin: L = CE(y, softmax(z_s)) [+ λ·margin]."""

    needs_teacher = False

    def __init__(self, *, label_smoothing: float = 0.0, mbls_margin: float | None = None, mbls_weight: float = 0.1):
        super().__init__(alpha=0.0, label_smoothing=label_smoothing, mbls_margin=mbls_margin, mbls_weight=mbls_weight)

    def forward(self, student: Tensor, teacher: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        return self._finish(student, labels, {}, None)


class KDLoss(_Base):
    """Knowledge distillation (Hinton, Vinyals & Dean, 2015, arXiv 1503.02531).

    L = (1 − α)·CE(y, softmax(z_s)) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)); KL averaged over the batch.
    The T² keeps the soft-target gradients on the same scale as T changes. Terms: ce, kd (the KL before T²), loss.
    """

    needs_teacher = True

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.9,
        *,
        label_smoothing: float = 0.0,
        mbls_margin: float | None = None,
        mbls_weight: float = 0.1,
    ):
        super().__init__(alpha=alpha, label_smoothing=label_smoothing, mbls_margin=mbls_margin, mbls_weight=mbls_weight)
        self.temperature = temperature

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        kl = _kl(F.log_softmax(teacher / t, dim=1), F.log_softmax(student / t, dim=1)).mean()
        return self._finish(student, labels, {"kd": kl}, t * t * kl)


class DISTLoss(_Base):
    """DIST: knowledge distillation from a stronger teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

    arXiv 2205.10536.

    With P_s = softmax(z_s/T), P_t = softmax(z_t/T) and ρ the Pearson correlation:
    inter = 1 − mean_i ρ(P_s[i, :], P_t[i, :])   (over classes, per sample)
    intra = 1 − mean_k ρ(P_s[:, k], P_t[:, k])   (over samples, per class)
    L = (1 − α)·CE + α·T²·(β·inter + γ·intra). The paper uses T = 1 (ImageNet) with β = γ = 1 and the CE at weight 1;
    here the CE weight is 1 − α like every loss in this module. Matching relations rather than exact probabilities is
    robust to a large teacher–student gap. Terms: ce, inter, intra, loss.
    """

    needs_teacher = True

    def __init__(
        self,
        temperature: float = 1.0,
        alpha: float = 0.5,
        beta: float = 1.0,
        gamma: float = 1.0,
        *,
        label_smoothing: float = 0.0,
        mbls_margin: float | None = None,
        mbls_weight: float = 0.1,
    ):
        super().__init__(alpha=alpha, label_smoothing=label_smoothing, mbls_margin=mbls_margin, mbls_weight=mbls_weight)
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        ps, pt = F.softmax(student / t, dim=1), F.softmax(teacher / t, dim=1)
        inter = 1 - _pearson(ps, pt).mean()
        intra = 1 - _pearson(ps.t(), pt.t()).mean()
        distill = t * t * (self.beta * inter + self.gamma * intra)
        return self._finish(student, labels, {"inter": inter, "intra": intra}, distill)


class BDKDLoss(_Base):
    """Balanced-divergence KD, after BD-KD (Amara, Sepahvand, Meyer, Gross & Clark, 2022, arXiv 2212.12965).

    BD-KD weighs forward KL(p_t ‖ p_s) (mass-covering: spreads the student over the teacher's support, lowering its
    confidence) and reverse KL(p_s ‖ p_t) (mode-seeking: concentrates the student on the teacher's mode, raising its
    confidence) per sample by the entropy gap between teacher and student. The exact weighting chosen here is a
    hyperparameter-free continuous form of that rule, with the weights treated as constants (no gradient):

        H_t, H_s = entropy(p_t^T), entropy(p_s^T) per sample;  w_r = H_s / (H_s + H_t),  w_f = H_t / (H_s + H_t)
        L = (1 − α)·CE + α·T²·mean_i [ w_f,i·KL(p_t ‖ p_s)_i + w_r,i·KL(p_s ‖ p_t)_i ]

    A student less certain than its teacher (H_s > H_t) gets mostly the reverse KL, which sharpens it toward the
    teacher's mode; an over-confident student (H_s < H_t) gets mostly the forward KL, which softens it. w_f + w_r = 1,
    so the scale equals KD's. Terms: ce, forward_kl, reverse_kl, w_reverse (batch mean), loss.
    """

    needs_teacher = True

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.9,
        *,
        label_smoothing: float = 0.0,
        mbls_margin: float | None = None,
        mbls_weight: float = 0.1,
        eps: float = 1e-8,
    ):
        super().__init__(alpha=alpha, label_smoothing=label_smoothing, mbls_margin=mbls_margin, mbls_weight=mbls_weight)
        self.temperature, self.eps = temperature, eps

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        ls, lt = F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1)
        fwd, rev = _kl(lt, ls), _kl(ls, lt)
        with torch.no_grad():
            hs = -(ls.exp() * ls).sum(dim=1)
            ht = -(lt.exp() * lt).sum(dim=1)
            w_r = (hs + self.eps) / (hs + ht + 2 * self.eps)
        distill = t * t * ((1 - w_r) * fwd + w_r * rev).mean()
        terms = {"forward_kl": fwd.mean(), "reverse_kl": rev.mean(), "w_reverse": w_r.mean()}
        return self._finish(student, labels, terms, distill)


class _CommonLossArgs(TypedDict):
    """Keyword arguments every loss takes (the CE smoothing and the MbLS margin term)."""

    label_smoothing: float
    mbls_margin: float | None
    mbls_weight: float


def build_loss(cfg: LossConfig | None, *, label_smoothing: float = 0.0, has_teacher: bool = True) -> nn.Module:
    """The loss module for ``cfg`` (None: cross-entropy). ``label_smoothing`` applies to the CE term."""
    cfg = cfg or LossConfig(kind="ce")
    common: _CommonLossArgs = {
        "label_smoothing": label_smoothing,
        "mbls_margin": cfg.mbls_margin,
        "mbls_weight": cfg.mbls_weight,
    }
    if cfg.kind != "ce" and not has_teacher:
        raise ConfigError(
            f"loss kind '{cfg.kind}' needs a teacher but none was given", "pass teacher= or use kind 'ce'"
        )
    if cfg.kind == "ce":
        return CELoss(**common)
    if cfg.kind == "kd":
        return KDLoss(cfg.temperature, cfg.alpha, **common)
    if cfg.kind == "dist":
        return DISTLoss(cfg.temperature, cfg.alpha, cfg.dist_beta, cfg.dist_gamma, **common)
    return BDKDLoss(cfg.temperature, cfg.alpha, **common)
