"""The inversion loss shared by FastDFKD and DeepInversion, and the BatchNorm-statistics hooks it needs.

L_inv(x) = λ_bn·Σ_l (‖μ_l(x) − μ_l^BN‖₂ + ‖σ²_l(x) − σ²_l^BN‖₂) + λ_oh·CE(ŷ, f_t(x)) − λ_adv·L_adv(x) + λ_tv·R_tv(x)

* μ_l(x), σ²_l(x): per-channel mean and (biased) variance of the input of the teacher's l-th BatchNorm2d on the
  synthetic batch; μ_l^BN, σ²_l^BN its running statistics (Yin et al., "Dreaming to Distill", CVPR 2020).
* ŷ: the batch's target labels (one-hot term).
* L_adv: the "decision adversarial" term of the paper's code (zju-vipa/Fast-Datafree): the divergence between
  teacher and student, KL(p_t‖p_s) (or JS), averaged over the batch but counted only for samples on which teacher
  and student agree (argmax), so the generator looks for samples the student has not learned yet without pushing
  into regions where the teacher itself is unsure. Fang et al., "Up to 100× Faster Data-free Knowledge
  Distillation", AAAI 2022, arXiv 2112.06253.
* R_tv: DeepInversion's total-variation prior (off by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecompress.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn


class BNStatsHooks:
    """Forward hooks on every BatchNorm2d of ``model`` that measure the distance of batch to running statistics.

    Use as a context manager; the hooks are removed on exit. Only while :attr:`active` is true are distances kept, so
    teacher forwards for the student's KD targets pay nothing. The model must be in eval mode (its running statistics
    are read, never updated).
    """

    def __init__(self, model: nn.Module, *, allow_none: bool = False) -> None:
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
        self.active = False
        self.losses: list[torch.Tensor] = []
        self._handles: list = []

    def __enter__(self) -> BNStatsHooks:
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not self.active:
            return
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.losses.append(
            (mean - module.running_mean).norm(2) + (var - module.running_var).norm(2)  # type: ignore[operator]
        )

    def collect(self) -> torch.Tensor | None:
        """Sum of the distances recorded since the last call (None when nothing was recorded); clears them."""
        if not self.losses:
            return None
        total = sum(self.losses[1:], self.losses[0])
        self.losses = []
        return total


def adversarial_divergence(t_logits: torch.Tensor, s_logits: torch.Tensor, *, kind: str = "kl") -> torch.Tensor:
    """Mean per-sample divergence between teacher and student, counted only where their argmax agrees.

    kl: KL(p_t‖p_s) = Σ_k p_t,k (log p_t,k − log p_s,k); js: ½KL(p_t‖m) + ½KL(p_s‖m), m = ½(p_t + p_s).
    The inversion loss subtracts it (the generator maximizes the disagreement).
    """
    import torch
    import torch.nn.functional as F

    log_pt = F.log_softmax(t_logits, dim=1)
    log_ps = F.log_softmax(s_logits, dim=1)
    if kind == "kl":
        div = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    elif kind == "js":
        pt, ps = log_pt.exp(), log_ps.exp()
        log_m = torch.log((0.5 * (pt + ps)).clamp_min(1e-12))
        div = 0.5 * (pt * (log_pt - log_m)).sum(1) + 0.5 * (ps * (log_ps - log_m)).sum(1)
    else:
        raise ValueError(f"unknown adversarial divergence {kind!r}; use 'kl' or 'js'")
    mask = (t_logits.argmax(1) == s_logits.argmax(1)).to(div.dtype)
    return (div * mask).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's R_tv: mean squared difference of neighbouring pixels (both directions)."""
    dh = x[:, :, 1:, :] - x[:, :, :-1, :]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


def augment_batch(
    x: torch.Tensor, *, gen: torch.Generator, max_shift: int | None = None, flip: bool = False
) -> torch.Tensor:
    """Random per-sample translation (up to ``max_shift`` pixels, default H/8) and optional horizontal flip.

    Differentiable w.r.t. ``x`` (bilinear ``grid_sample`` with integer shifts, border padding), deterministic given
    ``gen``. Plays the role of the paper's random-crop-with-padding augmentation.
    """
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    shift = max(1, h // 8) if max_shift is None else max_shift
    if shift > 0:
        offs = torch.randint(-shift, shift + 1, (n, 2), generator=gen).to(x.dtype)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype)
        theta[:, 0, 0] = 1.0
        theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = offs[:, 0] * 2.0 / w
        theta[:, 1, 2] = offs[:, 1] * 2.0 / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class InversionLoss:
    """Computes L_inv for a synthetic batch; owns the BN hooks on the teacher (use as a context manager).

    Args:
        teacher: the frozen teacher, in eval mode.
        lambda_bn, lambda_oh, lambda_adv, lambda_tv: term weights (see the module docstring).
        adv_divergence: 'kl' or 'js'.
        allow_no_bn: accept a teacher without BatchNorm2d (then L_bn is 0); otherwise raise ModelError.
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        lambda_bn: float,
        lambda_oh: float,
        lambda_adv: float,
        lambda_tv: float = 0.0,
        adv_divergence: str = "kl",
        allow_no_bn: bool = False,
    ) -> None:
        self.teacher = teacher
        self.hooks = BNStatsHooks(teacher, allow_none=allow_no_bn)
        self.lambda_bn, self.lambda_oh, self.lambda_adv, self.lambda_tv = lambda_bn, lambda_oh, lambda_adv, lambda_tv
        self.adv_divergence = adv_divergence

    def __enter__(self) -> InversionLoss:
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    def __call__(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        *,
        student: nn.Module | None = None,
        raw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_inv of the (augmented) batch ``x`` with target labels; ``raw`` (un-augmented) feeds the TV prior.

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
            l_adv = adversarial_divergence(t_logits, student(x), kind=self.adv_divergence)
            loss = loss - self.lambda_adv * l_adv
        l_tv = t_logits.new_zeros(())
        if self.lambda_tv > 0:
            l_tv = total_variation(x if raw is None else raw)
            loss = loss + self.lambda_tv * l_tv
        terms = {
            "loss_inv": float(loss.detach()),
            "loss_bn": float(l_bn.detach()),
            "loss_oh": float(l_oh.detach()),
            "loss_adv": float(l_adv.detach()),
            "loss_tv": float(l_tv.detach()),
            "teacher_acc_on_targets": float((t_logits.argmax(1) == targets).float().mean()),
        }
        return loss, terms
