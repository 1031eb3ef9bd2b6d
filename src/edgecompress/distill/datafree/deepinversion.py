"""DeepInversion baseline: optimize each batch of pixels from noise against the inversion loss.

Yin, Molchanov, Alvarez, Li, Mallya, Hoiem, Jha, Kautz, "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020. Each batch starts from Gaussian noise x ~ N(0, 1) in the teacher's (normalized) input
space and takes N Adam steps on L_inv(x, ŷ) (``inversion.py``; with λ_adv > 0 this is "Adaptive DeepInversion"),
clipping x to the valid pixel range after each step. Nothing is shared between batches, which is why it is slow:
FastDFKD's claim is to match its transfer set at a fraction of the steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgecompress.distill.datafree.inversion import InversionLoss, augment_batch


class DeepInversionSynthesizer:
    """Synthesizes one batch per call by ``steps`` Adam steps on the pixels.

    Args:
        loss: the inversion loss (with hooks on the teacher).
        input_shape: (C, H, W).
        steps, lr: DeepInversion steps per batch and Adam learning rate.
        mean, std: normalization of the teacher's input, used to clip pixels to [0, 1] before normalization.
        augment, flip: augmentation before the teacher.
        gen: torch RNG for the initial noise and the augmentation.
    """

    def __init__(
        self,
        loss: InversionLoss,
        input_shape: Sequence[int],
        *,
        steps: int,
        lr: float,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        augment: bool,
        flip: bool,
        gen: torch.Generator,
    ) -> None:
        self.loss, self.shape = loss, tuple(int(v) for v in input_shape)
        self.steps, self.lr, self.augment, self.flip, self.gen = steps, lr, augment, flip, gen
        c = self.shape[0]
        m = torch.as_tensor([0.0] * c if mean is None else list(mean), dtype=torch.float32).expand(c)
        s = torch.as_tensor([1.0] * c if std is None else list(std), dtype=torch.float32).expand(c)
        self.lo = ((0.0 - m) / s).view(1, c, 1, 1)
        self.hi = ((1.0 - m) / s).view(1, c, 1, 1)

    def synthesize(
        self, targets: torch.Tensor, *, student: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch: returns the best images (detached) and the inversion terms of the best step."""
        x = torch.randn((targets.shape[0], *self.shape), generator=self.gen)
        x = torch.maximum(torch.minimum(x, self.hi), self.lo).requires_grad_()
        opt = torch.optim.Adam([x], lr=self.lr, betas=(0.5, 0.99))
        best_loss, best_x, best_terms = float("inf"), None, {}
        for _ in range(self.steps):
            x_in = augment_batch(x, gen=self.gen, flip=self.flip) if self.augment else x
            loss, terms = self.loss(x_in, targets, student=student, raw=x)
            if terms["loss_inv"] < best_loss or best_x is None:
                best_loss, best_x, best_terms = terms["loss_inv"], x.detach().clone(), terms
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, self.hi), self.lo))
        assert best_x is not None
        return best_x, best_terms
