"""DeepInversion baseline with its authors' CIFAR-10 settings: optimize each batch of pixels from noise.

Yin, Molchanov, Alvarez, Li, Mallya, Hoiem, Jha, Kautz, "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020; NVlabs/DeepInversion ``cifar10/deepinversion_cifar10.py`` with the README's "paper
parameters" (bs 256, 2,000 iterations, Adam lr 0.05 with default betas, r_feature 10, TV 2.5e-5, L2 0; balanced
targets 0, 1, …, K−1, 0, 1, …). Each round starts from x ~ N(0, 1) in the teacher's normalized input space; every step
rolls the whole batch by a random offset of up to ``jitter`` pixels (and flips it with p = 0.5 when ``flip``), then
minimizes

    L = λ_bn·Σ_l (‖μ_l^BN − μ_l‖ + ‖σ²_l^BN − σ²_l‖) + λ_oh·CE + λ_tv·(‖Δ_x‖ + ‖Δ_y‖ + ‖Δ_xy‖ + ‖Δ_yx‖) + λ_l2·‖x‖

(norms over the whole jittered batch). The pixels are clipped to the valid range after each step (NVlabs' ImageNet
code and Fast-Datafree's reimplementation do; its CIFAR script does not) because the pool stores 8-bit images. The
lowest-loss batch of the run is kept. Nothing is shared between rounds, which is why it is slow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from edgecompress.distill.datafree.inversion import InversionLoss, Pixels


def total_variation_l2(x: torch.Tensor) -> torch.Tensor:
    """NVlabs' ``loss_var``: the summed L2 norms of the horizontal, vertical and diagonal neighbour differences."""
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    return d1.norm() + d2.norm() + d3.norm() + d4.norm()


class DeepInversionSynthesizer:
    """Synthesizes one batch per round by ``steps`` Adam steps on the pixels.

    Args:
        loss: the inversion loss (with hooks on the teacher; no BN momentum, no adversarial term by default).
        pixels: the normalization (its crop/flip settings are not used: DeepInversion jitters by rolling).
        input_shape: (C, H, W).
        steps, lr, tv, l2, jitter, flip: see :class:`DataFreeConfig` (``di_*``).
        gen: torch RNG for the initial noise and the jitter.
    """

    def __init__(
        self,
        loss: InversionLoss,
        pixels: Pixels,
        input_shape: Sequence[int],
        *,
        steps: int,
        lr: float,
        tv: float,
        l2: float,
        jitter: int,
        flip: bool,
        gen: torch.Generator,
    ) -> None:
        self.loss, self.pixels, self.shape = loss, pixels, tuple(int(v) for v in input_shape)
        self.steps, self.lr, self.tv, self.l2, self.jitter, self.flip = steps, lr, tv, l2, jitter, flip
        self.gen = gen
        self.lo = pixels.normalize(torch.zeros(1, self.shape[0], 1, 1))
        self.hi = pixels.normalize(torch.ones(1, self.shape[0], 1, 1))

    def _step(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, student: nn.Module | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        off = torch.randint(-self.jitter, self.jitter + 1, (2,), generator=gen) if self.jitter > 0 else None
        x_jit = torch.roll(x, shifts=(int(off[0]), int(off[1])), dims=(2, 3)) if off is not None else x
        if self.flip and bool(torch.rand(1, generator=gen) < 0.5):
            x_jit = x_jit.flip(3)
        loss, terms = self.loss(x_jit, targets, student=student)
        if self.tv > 0:
            loss = loss + self.tv * total_variation_l2(x_jit)
        if self.l2 > 0:
            loss = loss + self.l2 * x_jit.norm()
        terms["loss_inv"] = float(loss.detach())
        return loss, terms

    def synthesize(
        self, targets: torch.Tensor, round_index: int, *, student: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One round: the best batch of pixels in [0, 1] (detached) and its terms."""
        del round_index  # nothing carries over between rounds
        x = torch.randn((targets.shape[0], *self.shape), generator=self.gen)
        x = torch.maximum(torch.minimum(x, self.hi), self.lo).requires_grad_()
        opt = torch.optim.Adam([x], lr=self.lr)
        best_loss, best_x, best_terms = float("inf"), None, {}
        for _ in range(self.steps):
            loss, terms = self._step(x, targets, self.gen, student)
            if best_x is None or terms["loss_inv"] < best_loss:
                best_loss, best_x, best_terms = terms["loss_inv"], x.detach().clone(), terms
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, self.hi), self.lo))
        assert best_x is not None
        return self.pixels.to_pixels(best_x), best_terms

    def time_step(self, targets: torch.Tensor, *, student: nn.Module | None, gen: torch.Generator) -> None:
        """One step on throw-away pixels (the pilot's timing)."""
        x = torch.randn((targets.shape[0], *self.shape), generator=gen).requires_grad_()
        loss, _ = self._step(x, targets, gen, student)
        loss.backward()

    def state_dict(self) -> dict[str, Any]:
        """Nothing carries over between rounds."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
        del state
