"""FastDFKD synthesis: a meta-generator of common features, adapted per batch in k steps, meta-learned with Reptile.

Fang, Song, Wang, Shen, Wang, Song, "Up to 100× Faster Data-free Knowledge Distillation", AAAI 2022,
arXiv 2112.06253. For each new batch with target labels ŷ:

1. copy the meta-generator θ → θ′ and draw a fresh learnable latent z;
2. take k Adam steps on (z, θ′) against L_inv(G(z; θ′), ŷ) (the inner loop; see ``inversion.py``), keeping the
   lowest-loss images seen (as the paper's code does);
3. move the meta parameters with the first-order Reptile update θ ← θ + β(θ′ − θ).

Differences from the paper's code (zju-vipa/Fast-Datafree), chosen for clarity and stated here: the meta step is the
plain Reptile interpolation with β (the code feeds θ − θ′, or the first-order MAML gradient, to an Adam meta-optimizer);
BN-statistics momentum across batches ('bn_mmt') is not implemented; the augmentation is a random translation (and
optional flip) instead of kornia's random crop + flip.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from edgecompress.distill.datafree.generator import Generator
from edgecompress.distill.datafree.inversion import InversionLoss, augment_batch


@torch.no_grad()
def reptile_update(meta: nn.Module, adapted: nn.Module, beta: float) -> None:
    """First-order Reptile meta step on parameters: θ ← θ + β(θ′ − θ) (Nichol et al., 2018).

    Buffers (the generator's BN running statistics, unused in train mode) are copied from ``adapted``.
    """
    for p, q in zip(meta.parameters(), adapted.parameters(), strict=True):
        p.add_(q.detach() - p, alpha=beta)
    for b, c in zip(meta.buffers(), adapted.buffers(), strict=True):
        b.copy_(c)


class FastDFKDSynthesizer:
    """Synthesizes one batch per call with k inner steps from the meta-generator, then meta-updates it.

    Args:
        generator: the meta-generator θ (trained in place by Reptile).
        loss: the inversion loss (with hooks on the teacher).
        k_inner_steps, beta_meta, lr_generator, lr_z: see :class:`DataFreeConfig`.
        augment, flip: augmentation before the teacher.
        gen: torch RNG for latents and augmentation (determinism).
    """

    def __init__(
        self,
        generator: Generator,
        loss: InversionLoss,
        *,
        k_inner_steps: int,
        beta_meta: float,
        lr_generator: float,
        lr_z: float,
        augment: bool,
        flip: bool,
        gen: torch.Generator,
        reset_l0_at_batch: int | None = None,
    ) -> None:
        self.generator, self.loss = generator, loss
        self.k, self.beta, self.lr_g, self.lr_z = k_inner_steps, beta_meta, lr_generator, lr_z
        self.augment, self.flip, self.gen = augment, flip, gen
        self.reset_l0_at_batch = reset_l0_at_batch
        self.batches_done = 0

    def synthesize(
        self, targets: torch.Tensor, *, student: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch: returns the best images (detached) and the inversion terms of the best step."""
        if self.reset_l0_at_batch is not None and self.batches_done == self.reset_l0_at_batch:
            self.generator.reset_first_layer()
        fast = copy.deepcopy(self.generator).train()
        z = torch.randn(targets.shape[0], self.generator.z_dim, generator=self.gen).requires_grad_()
        groups: list[dict[str, Any]] = [{"params": fast.parameters()}, {"params": [z], "lr": self.lr_z}]
        opt = torch.optim.Adam(groups, lr=self.lr_g, betas=(0.5, 0.999))
        best_loss, best_x, best_terms = float("inf"), None, {}
        for _ in range(self.k):
            x = fast(z)
            x_in = augment_batch(x, gen=self.gen, flip=self.flip) if self.augment else x
            loss, terms = self.loss(x_in, targets, student=student, raw=x)
            if terms["loss_inv"] < best_loss or best_x is None:
                best_loss, best_x, best_terms = terms["loss_inv"], x.detach().clone(), terms
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        reptile_update(self.generator, fast, self.beta)
        self.batches_done += 1
        assert best_x is not None
        return best_x, best_terms
