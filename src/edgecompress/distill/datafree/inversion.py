"""The inversion loss of FastDFKD and DeepInversion, its BatchNorm hooks, and the augmentation before the teacher.

L_inv(x) = λ_bn·Σ_l (‖μ_l^BN − μ̃_l(x)‖₂ + ‖σ²_l^BN − σ̃²_l(x)‖₂) + λ_oh·CE(ŷ, f_t(x)) − λ_adv·L_adv(x)

* μ_l(x), σ²_l(x): per-channel mean and (biased) variance of the input of the teacher's l-th BatchNorm2d on the
  synthetic batch; μ_l^BN, σ²_l^BN its running statistics (Yin et al., "Dreaming to Distill", CVPR 2020).
* BN-statistics momentum ``bn_mmt`` = m (FastDFKD's code, ``datafree/hooks.py``): μ̃ = (1 − m)·μ(x) + m·M_μ, where
  M_μ is a moving average over rounds of the batch statistics of each round's last inner step
  (M ← m·M + (1 − m)·μ_last; the first round sets M and compares μ(x) alone). Same for σ². m = 0 is plain
  DeepInversion.
* ŷ: the batch's target labels (one-hot term).
* L_adv: the "decision adversarial" term of the official code: KL(p_t‖p_s) per sample, averaged over the batch but
  counted only where the argmaxes of teacher and student agree (Fang et al., "Up to 100× Faster Data-free Knowledge
  Distillation", AAAI 2022, arXiv 2112.06253).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edgecompress.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn


class BNStatsHooks:
    """Forward hooks on every BatchNorm2d of ``model`` measuring the distance of batch to running statistics.

    Use as a context manager; the hooks are removed on exit. Distances are kept only while :attr:`active` is true (so
    the teacher's forwards for the student's KD targets pay nothing). The model must be in eval mode (its running
    statistics are read, never updated).

    Args:
        model: the teacher.
        momentum: bn_mmt (see the module docstring); 0 disables the moving average.
        allow_none: accept a model without BatchNorm2d (then nothing is measured); otherwise raise ModelError.
    """

    def __init__(self, model: nn.Module, *, momentum: float = 0.0, allow_none: bool = False) -> None:
        from torch import nn

        self.layers = [
            m
            for m in model.modules()
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None
        ]
        if not self.layers and not allow_none:
            raise ModelError(
                "data-free distillation needs the teacher's BatchNorm2d running statistics, and this teacher has no "
                "BatchNorm2d layer",
                "provide training data (distill with data), or set distill.datafree.allow_no_bn: true for a weaker "
                "reduced loss without the BN term",
            )
        self.momentum = float(momentum)
        self.active = False
        self.losses: list[torch.Tensor] = []
        self.last: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.mmt: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self._handles: list[Any] = []

    def __enter__(self) -> BNStatsHooks:
        self._handles = [m.register_forward_hook(functools.partial(self._hook, i)) for i, m in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, i: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.last[i] = (mean.detach(), var.detach())
        mmt = self.mmt[i]
        if mmt is not None:
            m = self.momentum
            mean, var = (1 - m) * mean + m * mmt[0], (1 - m) * var + m * mmt[1]
        self.losses.append((module.running_mean - mean).norm(2) + (module.running_var - var).norm(2))  # type: ignore[operator]

    def update_momentum(self) -> None:
        """End of a round: fold the last measured batch statistics into the moving averages (no-op when m = 0)."""
        if self.momentum == 0:
            return
        m = self.momentum
        for i, last in enumerate(self.last):
            if last is None:
                continue
            old = self.mmt[i]
            self.mmt[i] = last if old is None else (m * old[0] + (1 - m) * last[0], m * old[1] + (1 - m) * last[1])

    def collect(self) -> torch.Tensor | None:
        """Sum of the distances recorded since the last call (None when nothing was recorded); clears them."""
        if not self.losses:
            return None
        total = sum(self.losses[1:], self.losses[0])
        self.losses = []
        return total


def adversarial_divergence(t_logits: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of KL(p_t‖p_s) = Σ_k p_t,k (log p_t,k − log p_s,k), counted only where argmaxes agree.

    The inversion loss subtracts it (the generator maximizes the disagreement on samples the teacher is sure of).
    """
    import torch.nn.functional as F

    log_pt = F.log_softmax(t_logits, dim=1)
    log_ps = F.log_softmax(s_logits, dim=1)
    div = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    mask = (t_logits.argmax(1) == s_logits.argmax(1)).to(div.dtype)
    return (div * mask).mean()


class Pixels:
    """Pixels in [0, 1] → the teacher's input: random crop with zero padding, optional flip, then (x − mean)/std.

    The official code's ``kornia`` RandomCrop(padding) + RandomHorizontalFlip + normalize, per sample, differentiable
    with respect to the pixels, deterministic given the ``torch.Generator``. The same transform feeds the synthesis
    (on generator outputs) and the student (on pool images), as the official code uses the dataset's training
    transform for the pool.
    """

    def __init__(
        self, channels: int, *, mean: Sequence[float] | None, std: Sequence[float] | None, pad: int, flip: bool
    ):
        import torch

        m = torch.as_tensor([0.0] * channels if mean is None else list(mean), dtype=torch.float32)
        s = torch.as_tensor([1.0] * channels if std is None else list(std), dtype=torch.float32)
        self.mean = m.expand(channels).clone().view(1, channels, 1, 1)
        self.std = s.expand(channels).clone().view(1, channels, 1, 1)
        self.pad, self.flip = int(pad), bool(flip)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x − mean) / std."""
        return (x - self.mean) / self.std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`normalize`, clipped to [0, 1]."""
        return (x * self.std + self.mean).clamp(0.0, 1.0)

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop (zero padding ``pad``) and optional flip of [0, 1] pixels, per sample."""
        import torch
        import torch.nn.functional as F

        n, _, h, w = x.shape
        if self.pad > 0:
            p = self.pad
            padded = F.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [n, h, 1]
            cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [n, 1, w]
            x = padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # [n, c, h, w]
        if self.flip:
            mask = torch.rand(n, generator=gen) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self.normalize(self.augment(x, gen))


class InversionLoss:
    """Computes L_inv for a synthetic batch; owns the BN hooks on the teacher (use as a context manager).

    Args:
        teacher: the frozen teacher, in eval mode.
        lambda_bn, lambda_oh, lambda_adv: term weights (see the module docstring).
        bn_momentum: bn_mmt.
        allow_no_bn: accept a teacher without BatchNorm2d (then L_bn is 0); otherwise raise ModelError.
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        lambda_bn: float,
        lambda_oh: float,
        lambda_adv: float,
        bn_momentum: float = 0.0,
        allow_no_bn: bool = False,
    ) -> None:
        self.teacher = teacher
        self.hooks = BNStatsHooks(teacher, momentum=bn_momentum, allow_none=allow_no_bn)
        self.lambda_bn, self.lambda_oh, self.lambda_adv = lambda_bn, lambda_oh, lambda_adv

    def __enter__(self) -> InversionLoss:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor, *, student: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_inv of the (augmented, normalized) batch ``x`` with target labels.

        Returns the loss tensor (to backpropagate into x's producer) and its named terms as floats.
        """
        import torch.nn.functional as F

        self.hooks.losses = []
        self.hooks.active = True
        try:
            t_logits = self.teacher(x)
        finally:
            self.hooks.active = False
        l_bn = self.hooks.collect()
        if l_bn is None:
            l_bn = t_logits.new_zeros(())
        l_oh = F.cross_entropy(t_logits, targets)
        loss = self.lambda_bn * l_bn + self.lambda_oh * l_oh
        l_adv = t_logits.new_zeros(())
        if student is not None and self.lambda_adv > 0:
            l_adv = adversarial_divergence(t_logits, student(x))
            loss = loss - self.lambda_adv * l_adv
        terms = {
            "loss_inv": float(loss.detach()),
            "loss_bn": float(l_bn.detach()),
            "loss_oh": float(l_oh.detach()),
            "loss_adv": float(l_adv.detach()),
            "teacher_acc_on_targets": float((t_logits.argmax(1) == targets).float().mean()),
        }
        return loss, terms
