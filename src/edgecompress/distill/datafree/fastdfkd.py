"""FastDFKD synthesis as its authors' code runs it: a meta-generator adapted per round in k steps, meta-learned by
first-order MAML through a persistent Adam.

Fang, Song, Wang, Shen, Wang, Song, "Up to 100× Faster Data-free Knowledge Distillation", AAAI 2022,
arXiv 2112.06253; zju-vipa/Fast-Datafree, ``datafree/synthesis/fast_meta.py`` (default ``is_maml 1``). One round:

1. a fresh latent z ~ N(0, I) and a fast copy θ′ of the meta-generator θ;
2. k inner steps of Adam(lr_g for θ′, lr_z for z; betas 0.5, 0.999) on L_inv(G(z; θ′)) (``inversion.py``); the
   lowest-loss batch of the k evaluated ones is kept;
3. meta step, FOMAML: at every inner step the fast copy's gradient ∇θ′ L is *added* to the meta-generator's gradient
   (g = Σ_i ∇θ′_i L), and after the k steps the persistent meta optimizer Adam(lr_g·k, betas 0.5, 0.999) steps once.
   The alternative, Reptile, feeds g = 67·(θ − θ′) to the same Adam (the official constant);
4. the BN-statistics moving averages (``bn_mmt``) take the last inner step's batch statistics.

Once, at ``reset_l0_round``, the generator's projection and first BN are re-initialized (``reset_l0``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from edgecompress.distill.datafree.generator import Generator
from edgecompress.distill.datafree.inversion import InversionLoss, Pixels

REPTILE_SCALE = 67.0  # fast_meta.py: reptile_grad(..., alpha=67)


def meta_optimizer(meta: nn.Module, *, lr_g: float, k: int) -> torch.optim.Adam:
    """The persistent meta optimizer of the official code: Adam(lr_g·k, betas 0.5, 0.999) on the meta parameters."""
    return torch.optim.Adam(meta.parameters(), lr=lr_g * k, betas=(0.5, 0.999))


def meta_round(
    meta: nn.Module,
    meta_opt: torch.optim.Optimizer,
    z: torch.Tensor,
    loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    *,
    k: int,
    lr_g: float,
    lr_z: float,
    kind: str = "fomaml",
) -> tuple[torch.Tensor, dict[str, float]]:
    """One round of meta-learning: k inner Adam steps on a fast copy of ``meta`` and ``z``, then one meta step.

    Args:
        meta: the meta-generator θ (updated in place by ``meta_opt``).
        meta_opt: the persistent meta optimizer over ``meta.parameters()`` (see :func:`meta_optimizer`).
        z: the round's latent codes (optimized in place, with lr_z).
        loss_of: maps the fast generator's output to (loss, named terms); lower is better.
        k, lr_g, lr_z: inner steps and Adam learning rates of the fast copy and of z.
        kind: 'fomaml' (Σ of the fast copy's inner gradients) or 'reptile' (67·(θ − θ′)).

    Returns:
        The output (detached) with the lowest loss among the k evaluated ones, and its terms.
    """
    if kind not in ("fomaml", "reptile"):
        raise ValueError(f"unknown meta update {kind!r}; use 'fomaml' or 'reptile'")
    fast = copy.deepcopy(meta).train()
    z.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": list(fast.parameters())}, {"params": [z], "lr": lr_z}]
    inner = torch.optim.Adam(groups, lr=lr_g, betas=(0.5, 0.999))
    meta_params, fast_params = list(meta.parameters()), list(fast.parameters())
    meta_opt.zero_grad(set_to_none=True)
    best_loss, best_out, best_terms = float("inf"), None, {}
    for _ in range(k):
        out = fast(z)
        loss, terms = loss_of(out)
        if best_out is None or float(loss.detach()) < best_loss:
            best_loss, best_out, best_terms = float(loss.detach()), out.detach().clone(), terms
        inner.zero_grad(set_to_none=True)
        loss.backward()
        if kind == "fomaml":
            for p, q in zip(meta_params, fast_params, strict=True):
                if q.grad is None:
                    continue
                p.grad = q.grad.detach().clone() if p.grad is None else p.grad.add_(q.grad)
        inner.step()
    if kind == "reptile":
        for p, q in zip(meta_params, fast_params, strict=True):
            p.grad = (p.detach() - q.detach()) * REPTILE_SCALE
    meta_opt.step()
    z.requires_grad_(False)
    assert best_out is not None
    return best_out, best_terms


class FastDFKDSynthesizer:
    """Synthesizes one batch per round from the meta-generator (see the module docstring).

    Args:
        generator: the meta-generator θ (trained in place).
        loss: the inversion loss (with hooks on the teacher; its bn_mmt is updated after each round).
        pixels: augmentation + normalization between generator and teacher.
        k_inner_steps, lr_generator, lr_z, meta: see :class:`DataFreeConfig`.
        gen: torch RNG for latents and augmentation (determinism).
        reset_l0_round: round at which :meth:`Generator.reset_first_layer` runs once (None: never).
    """

    def __init__(
        self,
        generator: Generator,
        loss: InversionLoss,
        pixels: Pixels,
        *,
        k_inner_steps: int,
        lr_generator: float,
        lr_z: float,
        meta: str,
        gen: torch.Generator,
        reset_l0_round: int | None = None,
    ) -> None:
        self.generator, self.loss, self.pixels = generator.train(), loss, pixels
        self.k, self.lr_g, self.lr_z, self.meta = k_inner_steps, lr_generator, lr_z, meta
        self.gen, self.reset_l0_round = gen, reset_l0_round
        self.meta_opt = meta_optimizer(generator, lr_g=lr_generator, k=k_inner_steps)

    def synthesize(
        self, targets: torch.Tensor, round_index: int, *, student: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One round: the best batch of pixels in [0, 1] (detached) and its inversion terms."""
        if self.reset_l0_round is not None and round_index == self.reset_l0_round:
            self.generator.reset_first_layer()
        z = torch.randn(targets.shape[0], self.generator.z_dim, generator=self.gen)

        def loss_of(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            return self.loss(self.pixels(x, self.gen), targets, student=student)

        best, terms = meta_round(
            self.generator, self.meta_opt, z, loss_of, k=self.k, lr_g=self.lr_g, lr_z=self.lr_z, kind=self.meta
        )
        self.loss.hooks.update_momentum()
        return best, terms

    def time_step(self, targets: torch.Tensor, *, student: nn.Module | None, gen: torch.Generator) -> None:
        """One inner step on a throw-away fast copy (for the pilot's timing; nothing of the run's state changes)."""
        fast = copy.deepcopy(self.generator).train()
        z = torch.randn(targets.shape[0], self.generator.z_dim, generator=gen)
        hooks = self.loss.hooks
        last = list(hooks.last)
        loss, _ = self.loss(self.pixels(fast(z), gen), targets, student=student)
        loss.backward()
        hooks.last = last

    def state_dict(self) -> dict[str, Any]:
        """The meta-generator and its optimizer (what a checkpoint keeps)."""
        return {"generator": self.generator.state_dict(), "meta_opt": self.meta_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents."""
        self.generator.load_state_dict(state["generator"])
        self.meta_opt.load_state_dict(state["meta_opt"])
