"""Config of data-free distillation (pydantic + stdlib only: importing this must not import torch).

The defaults are the official settings of the FastDFKD authors' code (zju-vipa/Fast-Datafree, ``datafree_kd.py`` run
by ``scripts/fast_cifar.sh``: ResNet-34 → ResNet-18, the paper's headline rows) and, for the baseline, DeepInversion's
authors' CIFAR-10 settings (NVlabs/DeepInversion, ``cifar10/README.md``, "paper parameters"). Anything a small CPU run
changes (fewer rounds, fewer student steps per round, a narrower generator, smaller batches) is set in the config that
runs it, with its reason there; ``docs/results.md`` lists the runs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgecompress._schema import StrictModel

# scripts/fast_cifar.sh: g_steps (k) -> (lr_z, lr_g)
OFFICIAL_LR: dict[int, tuple[float, float]] = {2: (0.015, 5e-3), 5: (0.01, 3e-3), 10: (0.01, 2e-3)}


def official_lrs(k: int) -> tuple[float, float]:
    """(lr_z, lr_g) of the official script for the nearest official k (2, 5 or 10)."""
    nearest = min(OFFICIAL_LR, key=lambda o: (abs(o - k), o))
    return OFFICIAL_LR[nearest]


class DataFreeConfig(StrictModel):
    """Data-free distillation: synthesize a transfer set from the teacher's BatchNorm statistics, then distill.

    One *round* synthesizes one batch (``fastdfkd``: k inner steps of a fast copy of the meta-generator, then one
    first-order MAML meta step, Fang et al., AAAI 2022; ``deepinversion``: ``di_steps`` steps on the pixels,
    Yin et al., CVPR 2020), adds it to an unbounded image pool on disk (8-bit, like the official PNG pool) and, after
    ``warmup_rounds``, takes ``student_steps_per_round`` KD steps on batches drawn from the whole pool.
    """

    method: Literal["fastdfkd", "deepinversion"] = Field("fastdfkd", description="Synthesis method.")
    rounds: int = Field(
        220,
        ge=1,
        description="Synthesis rounds, one batch each (official 'epochs': 220; 200 student rounds + warm-up).",
    )
    batch_size: int = Field(
        256, ge=2, description="Images synthesized per round (official 256; BN statistics need 2+)."
    )
    # FastDFKD
    k_inner_steps: int = Field(5, ge=1, description="FastDFKD inner steps per round ('g_steps'; the paper's Fast-k).")
    meta: Literal["fomaml", "reptile"] = Field(
        "fomaml",
        description="Meta update: first-order MAML (official default, is_maml 1: the fast copy's gradients of every "
        "inner step summed into the meta-generator) or Reptile (grad = 67·(θ − θ′)); both through the persistent Adam.",
    )
    lr_generator: float | None = Field(
        None,
        gt=0,
        description="Adam lr of the fast generator (inner loop); the meta Adam uses lr·k. None: the official value "
        "for k (k = 2 / 5 / 10: 5e-3 / 3e-3 / 2e-3; other k: the nearest).",
    )
    lr_z: float | None = Field(
        None, gt=0, description="Adam lr of the latent codes z; None: official for k (0.015 / 0.01 / 0.01)."
    )
    z_dim: int = Field(256, ge=1, description="Latent size (official nz 256).")
    generator_width: int = Field(64, ge=2, description="Generator base width ngf (official 64).")
    bn_momentum: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="bn_mmt: the batch statistics compared with the teacher's running ones are (1 − m)·this batch + "
        "m·(moving average of earlier rounds' batches); 0 compares this batch alone (official 0.9).",
    )
    warmup_rounds: int = Field(
        20,
        ge=0,
        description="Rounds at the start without the adversarial term and without student training (official 20).",
    )
    reset_l0_round: int | None = Field(
        140,
        ge=0,
        description="Round (0-based) at which the generator's first layers (projection, first BN) are re-initialized "
        "once ('reset_l0'; official: 120 + warm-up = 140 of 220); None: never.",
    )
    # DeepInversion (NVlabs/DeepInversion cifar10, paper parameters)
    di_steps: int = Field(2000, ge=1, description="DeepInversion Adam steps on the pixels per round (paper: 2k).")
    di_lr: float = Field(0.05, gt=0, description="DeepInversion Adam learning rate (paper parameters: 0.05).")
    di_tv: float = Field(
        2.5e-5, ge=0, description="Weight of DeepInversion's total-variation prior (4-direction L2 norm; 2.5e-5)."
    )
    di_l2: float = Field(0.0, ge=0, description="Weight of DeepInversion's L2 norm of the input (paper parameters: 0).")
    di_jitter: int | Literal["auto"] = Field(
        "auto", description="DeepInversion's random roll (pixels) per step; auto = H/16 (2 at 32x32, as published)."
    )
    # inversion loss
    lambda_bn: float = Field(10.0, ge=0, description="Weight of the BN-statistics term (official 10, both methods).")
    lambda_oh: float | None = Field(
        None, ge=0, description="Weight of the one-hot CE term; None: 0.5 for fastdfkd (official), 1 for deepinversion."
    )
    lambda_adv: float | None = Field(
        None,
        ge=0,
        description="Weight of the adversarial term (teacher–student KL where they agree); None: 1.33 for fastdfkd "
        "(official, ResNet-34 rows), 0 for deepinversion (its paper parameters are not the adaptive variant).",
    )
    allow_no_bn: bool = Field(
        False,
        description="Accept a teacher without BatchNorm2d: run the reduced loss without L_bn (weak; prefer real data).",
    )
    crop_pad: int | Literal["auto"] = Field(
        "auto",
        description="Zero padding of the random crop applied to synthesized and pool images before the teacher and "
        "student (kornia RandomCrop, padding 4 at 32x32); auto = H/8, at least 1.",
    )
    flip: bool = Field(True, description="Random horizontal flip with the crop (official; off for digits and text).")
    # student
    student_steps_per_round: int = Field(
        400, ge=1, description="Student KD steps after each round once warm-up is over (official kd_steps 400)."
    )
    student_batch_size: int = Field(256, ge=2, description="Student mini-batch drawn from the pool (official 256).")
    student_lr: float = Field(0.2, gt=0, description="SGD learning rate of the student (official 0.2).")
    student_lr_min: float = Field(2e-4, ge=0, description="Cosine schedule's floor (official eta_min 2e-4).")
    student_momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (official 0.9).")
    student_weight_decay: float = Field(1e-4, ge=0, description="SGD weight decay (official 1e-4).")
    kd_temperature: float = Field(20.0, gt=0, description="Softmax temperature T of the student's KL (official 20).")
    reset_student_bn_stats: bool = Field(
        False,
        description="Reset the student's BN running statistics before training (use when it was pre-trained on other "
        "data; its statistics are then re-estimated on synthetic samples).",
    )
    # bookkeeping
    eval_every: int = Field(
        10, ge=1, description="With a labelled val set: the student's accuracy every this many rounds (the curve)."
    )
    checkpoint_every: int = Field(
        10,
        ge=1,
        description="With a workdir, save a resumable checkpoint every this many rounds; an interrupted run (even "
        "kill -9) continues from it, bit-identical to an uninterrupted one.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataFreeConfig:
        if self.warmup_rounds >= self.rounds:
            raise ValueError(
                f"warmup_rounds={self.warmup_rounds} is not below rounds={self.rounds}: the student would never train; "
                "lower warmup_rounds or raise rounds"
            )
        if self.student_lr_min > self.student_lr:
            raise ValueError(f"student_lr_min={self.student_lr_min} is above student_lr={self.student_lr}")
        if isinstance(self.crop_pad, int) and not 0 <= self.crop_pad <= 64:
            raise ValueError(f"crop_pad must be 'auto' or 0..64 pixels, got {self.crop_pad}")
        if isinstance(self.di_jitter, int) and not 0 <= self.di_jitter <= 64:
            raise ValueError(f"di_jitter must be 'auto' or 0..64 pixels, got {self.di_jitter}")
        return self

    # resolved values (the None / auto defaults made concrete)
    def lrs(self) -> tuple[float, float]:
        """(lr_z, lr_g) after the per-k official defaults."""
        lr_z, lr_g = official_lrs(self.k_inner_steps)
        return (self.lr_z or lr_z), (self.lr_generator or lr_g)

    def weights(self) -> tuple[float, float, float]:
        """(λ_bn, λ_oh, λ_adv) after the per-method defaults."""
        fast = self.method == "fastdfkd"
        oh = self.lambda_oh if self.lambda_oh is not None else (0.5 if fast else 1.0)
        adv = self.lambda_adv if self.lambda_adv is not None else (1.33 if fast else 0.0)
        return self.lambda_bn, oh, adv

    def pad(self, height: int) -> int:
        """The crop padding in pixels for images of this height."""
        return max(1, round(height / 8)) if self.crop_pad == "auto" else int(self.crop_pad)

    def jitter(self, height: int) -> int:
        """DeepInversion's roll in pixels for images of this height."""
        return max(1, round(height / 16)) if self.di_jitter == "auto" else int(self.di_jitter)

    def steps_per_round(self) -> int:
        """Synthesis optimizer steps per round (k for fastdfkd, di_steps for deepinversion)."""
        return self.k_inner_steps if self.method == "fastdfkd" else self.di_steps
