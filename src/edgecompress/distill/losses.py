"""Distillation losses. Each is a small ``nn.Module`` returning a dict of named terms with the total under ``"loss"``,
registered by name in :data:`edgecompress._registry.LOSSES` (the config's ``distill.loss.kind``).

Notation: z_s / z_t student / teacher logits [N, K], y labels [N], T temperature, p^T = softmax(z / T). Every loss
may add the MbLS margin penalty ``λ·mean_i Σ_k max(0, max_j z_ij − z_ik − m)`` on the student's logits (Liu et al.,
CVPR 2022, arXiv 2111.15430). Each loss's weights are its paper's (or measured, where its docstring says so); a
config value left out takes the class default (:func:`resolve_loss`), so there is one default per loss.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress._registry import LOSSES
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


class DistillLoss(nn.Module):
    """Base of the registered losses: the CE term (with label smoothing), the optional MbLS margin, the total.

    A subclass sets ``needs_teacher``, its ``defaults`` (the values a config leaves out take) and ``trial_grid``
    (the settings the decide stage tries with ``loss.kind: auto``; empty: not tried), and implements
    :meth:`from_config` and ``forward(student, teacher, labels) -> dict``.
    """

    needs_teacher: ClassVar[bool] = True
    defaults: ClassVar[dict[str, float]] = {}
    trial_grid: ClassVar[list[dict[str, float]]] = []

    def __init__(self, *, ce_weight: float, label_smoothing: float, mbls_margin: float | None, mbls_weight: float):
        super().__init__()
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing
        self.mbls_margin = mbls_margin
        self.mbls_weight = mbls_weight

    @classmethod
    def from_config(cls, cfg: LossConfig, common: dict[str, Any]) -> DistillLoss:
        """The loss for a resolved config (every default filled); ``common``: label smoothing and MbLS terms."""
        raise NotImplementedError

    def _finish(self, student: Tensor, labels: Tensor, terms: dict[str, Tensor], distill: Tensor | None) -> dict:
        ce = F.cross_entropy(student, labels, label_smoothing=self.label_smoothing)
        loss = self.ce_weight * ce if distill is None else self.ce_weight * ce + distill
        out = {"ce": ce, **terms}
        if self.mbls_margin is not None:
            out["margin"] = margin_penalty(student, self.mbls_margin)
            loss = loss + self.mbls_weight * out["margin"]
        out["loss"] = loss
        return out


@LOSSES.register("ce", summary="labels only (no teacher): the scratch baseline")
class CELoss(DistillLoss):
    """Plain cross-entropy with optional label smoothing and MbLS margin: L = CE(y, softmax(z_s)) [+ λ·margin]."""

    needs_teacher = False
    trial_grid = [{}]

    def __init__(self, *, label_smoothing: float = 0.0, mbls_margin: float | None = None, mbls_weight: float = 0.1):
        super().__init__(ce_weight=1.0, label_smoothing=label_smoothing, mbls_margin=mbls_margin,
                         mbls_weight=mbls_weight)  # fmt: skip

    @classmethod
    def from_config(cls, cfg: LossConfig, common: dict[str, Any]) -> DistillLoss:
        return cls(**common)

    def forward(self, student: Tensor, teacher: Tensor | None, labels: Tensor) -> dict[str, Tensor]:
        return self._finish(student, labels, {}, None)


@LOSSES.register("kd", summary="Hinton KD: (1 − α)·CE + α·T²·KL(p_t^T ‖ p_s^T)")
class KDLoss(DistillLoss):
    """Knowledge distillation (Hinton, Vinyals & Dean, 2015, arXiv 1503.02531).

    L = (1 − α)·CE(y, softmax(z_s)) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)); KL averaged over the batch.
    The T² keeps the soft-target gradients on the same scale as T changes. Terms: ce, kd (the KL before T²), loss.
    The paper gives no single setting; T = 4, α = 0.9 is the common CIFAR habit. The defaults here are measured
    (docs/results.md): T = 2, α = 0.9 on a 1.4k-parameter Fashion-MNIST student (3 seeds), and again first of the six
    (T, α) settings in the demo's successive-halving trials (35.5k-parameter student, converged teacher; 2026-12-08).
    """

    defaults = {"temperature": 2.0, "alpha": 0.9}
    trial_grid = [{"temperature": t, "alpha": a} for t in (1.0, 2.0, 4.0) for a in (0.5, 0.9)]

    def __init__(
        self,
        temperature: float = 2.0,
        alpha: float = 0.9,
        *,
        label_smoothing: float = 0.0,
        mbls_margin: float | None = None,
        mbls_weight: float = 0.1,
    ):
        super().__init__(ce_weight=1 - alpha, label_smoothing=label_smoothing, mbls_margin=mbls_margin,
                         mbls_weight=mbls_weight)  # fmt: skip
        self.temperature, self.alpha = temperature, alpha

    @classmethod
    def from_config(cls, cfg: LossConfig, common: dict[str, Any]) -> DistillLoss:
        return cls(float(cfg.temperature or 0), float(cfg.alpha or 0), **common)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        kl = _kl(F.log_softmax(teacher / t, dim=1), F.log_softmax(student / t, dim=1)).mean()
        return self._finish(student, labels, {"kd": kl}, self.alpha * t * t * kl)


@LOSSES.register("dist", summary="DIST: CE + T²·(β·inter + γ·intra) Pearson relations")
class DISTLoss(DistillLoss):
    """DIST: knowledge distillation from a stronger teacher (Huang, You, Wang, Qian & Xu, NeurIPS 2022).

    arXiv 2205.10536; weights as the official code (hunto/DIST_KD) runs them. With P_s = softmax(z_s/T),
    P_t = softmax(z_t/T) and ρ the Pearson correlation:
    inter = 1 − mean_i ρ(P_s[i, :], P_t[i, :])   (over classes, per sample)
    intra = 1 − mean_k ρ(P_s[:, k], P_t[:, k])   (over samples, per class)
    L = CE(y, softmax(z_s)) + T²·(β·inter + γ·intra), the CE at weight 1 and β = γ = 1; T = 1 on ImageNet, 4 in the
    paper's CIFAR runs (the trials try both). Matching relations rather than exact probabilities is robust to a
    large teacher–student gap. Terms: ce, inter, intra, loss.
    """

    defaults = {"temperature": 1.0}
    trial_grid = [{"temperature": 1.0}, {"temperature": 4.0}]

    def __init__(
        self,
        temperature: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        *,
        label_smoothing: float = 0.0,
        mbls_margin: float | None = None,
        mbls_weight: float = 0.1,
    ):
        super().__init__(ce_weight=1.0, label_smoothing=label_smoothing, mbls_margin=mbls_margin,
                         mbls_weight=mbls_weight)  # fmt: skip
        self.temperature, self.beta, self.gamma = temperature, beta, gamma

    @classmethod
    def from_config(cls, cfg: LossConfig, common: dict[str, Any]) -> DistillLoss:
        return cls(float(cfg.temperature or 0), cfg.dist_beta, cfg.dist_gamma, **common)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        ps, pt = F.softmax(student / t, dim=1), F.softmax(teacher / t, dim=1)
        inter = 1 - _pearson(ps, pt).mean()
        intra = 1 - _pearson(ps.t(), pt.t()).mean()
        distill = t * t * (self.beta * inter + self.gamma * intra)
        return self._finish(student, labels, {"inter": inter, "intra": intra}, distill)


@LOSSES.register("bdkd", summary="balanced forward/reverse KL, weighted per sample by entropy")
class BDKDLoss(DistillLoss):
    """Balanced-divergence KD, after BD-KD (Amara, Sepahvand, Meyer, Gross & Clark, 2022, arXiv 2212.12965).

    BD-KD weighs forward KL(p_t ‖ p_s) (mass-covering: spreads the student over the teacher's support, lowering its
    confidence) and reverse KL(p_s ‖ p_t) (mode-seeking: concentrates the student on the teacher's mode, raising its
    confidence) per sample by the entropy gap between teacher and student. The exact weighting chosen here is a
    hyperparameter-free continuous form of that rule, with the weights treated as constants (no gradient):

        H_t, H_s = entropy(p_t^T), entropy(p_s^T) per sample;  w_r = H_s / (H_s + H_t),  w_f = H_t / (H_s + H_t)
        L = (1 − α)·CE + α·T²·mean_i [ w_f,i·KL(p_t ‖ p_s)_i + w_r,i·KL(p_s ‖ p_t)_i ]

    A student less certain than its teacher (H_s > H_t) gets mostly the reverse KL, which sharpens it toward the
    teacher's mode; an over-confident student (H_s < H_t) gets mostly the forward KL, which softens it. w_f + w_r = 1,
    so the scale equals KD's, and so do the defaults (T = 4, α = 0.9). Not tried by ``loss.kind: auto``.
    Terms: ce, forward_kl, reverse_kl, w_reverse (batch mean), loss.
    """

    defaults = {"temperature": 4.0, "alpha": 0.9}

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
        super().__init__(ce_weight=1 - alpha, label_smoothing=label_smoothing, mbls_margin=mbls_margin,
                         mbls_weight=mbls_weight)  # fmt: skip
        self.temperature, self.alpha, self.eps = temperature, alpha, eps

    @classmethod
    def from_config(cls, cfg: LossConfig, common: dict[str, Any]) -> DistillLoss:
        return cls(float(cfg.temperature or 0), float(cfg.alpha or 0), **common)

    def forward(self, student: Tensor, teacher: Tensor, labels: Tensor) -> dict[str, Tensor]:
        t = self.temperature
        ls, lt = F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1)
        fwd, rev = _kl(lt, ls), _kl(ls, lt)
        with torch.no_grad():
            hs = -(ls.exp() * ls).sum(dim=1)
            ht = -(lt.exp() * lt).sum(dim=1)
            w_r = (hs + self.eps) / (hs + ht + 2 * self.eps)
        distill = self.alpha * t * t * ((1 - w_r) * fwd + w_r * rev).mean()
        terms = {"forward_kl": fwd.mean(), "reverse_kl": rev.mean(), "w_reverse": w_r.mean()}
        return self._finish(student, labels, terms, distill)


def loss_class(kind: str) -> type[DistillLoss]:
    """The registered loss class called ``kind`` (:class:`ConfigError` listing the registered ones)."""
    cls: type[DistillLoss] = LOSSES.get(kind).obj
    return cls


def resolve_loss(cfg: LossConfig) -> LossConfig:
    """``cfg`` with the loss's own defaults filled in where the config left them out (``temperature``, ``alpha``).

    Raises:
        ConfigError: an unknown kind, ``auto`` (decided by trials first), or a parameter the loss does not take.
    """
    if cfg.kind == "auto":
        raise ConfigError(
            "loss.kind 'auto' has no parameters until the trials decide it",
            "decide it first (the pipeline's decide stage) or give a fixed kind",
        )
    cls = loss_class(cfg.kind)
    update: dict[str, float] = {}
    for name in ("temperature", "alpha"):
        value = getattr(cfg, name)
        if value is None and name in cls.defaults:
            update[name] = cls.defaults[name]
        elif value is not None and name not in cls.defaults and cls.needs_teacher:
            raise ConfigError(
                f"distill.loss.{name} does not apply to loss '{cfg.kind}'",
                f"remove it (loss '{cfg.kind}' takes: {', '.join(cls.defaults) or 'no parameters'})",
            )
    return cfg.model_copy(update=update) if update else cfg


def build_loss(cfg: LossConfig | None, *, label_smoothing: float = 0.0, has_teacher: bool = True) -> DistillLoss:
    """The loss module for ``cfg`` (None: cross-entropy). ``label_smoothing`` applies to the CE term."""
    cfg = resolve_loss(cfg or LossConfig(kind="ce"))
    cls = loss_class(cfg.kind)
    if cls.needs_teacher and not has_teacher:
        raise ConfigError(
            f"loss kind '{cfg.kind}' needs a teacher but none was given", "pass teacher= or use kind 'ce'"
        )
    common = {"label_smoothing": label_smoothing, "mbls_margin": cfg.mbls_margin, "mbls_weight": cfg.mbls_weight}
    return cls.from_config(cfg, common)
