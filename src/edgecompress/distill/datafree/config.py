"""Config of data-free distillation (pydantic + stdlib only: importing this must not import torch).

Defaults are sized for a CPU run on small images; the paper's CIFAR recipe (zju-vipa/Fast-Datafree,
``scripts/fast_cifar.sh``) uses batch 256, bn 10, oh 0.5, adv 1.1–1.33, lr_z 0.01–0.015, lr_g 2e-3–5e-3 (k=10..2),
T 20 and 400 student steps per synthesized batch. Here lr_z, lambda_bn and lambda_oh lean further towards class
evidence (0.05, 5, 1): with tens instead of thousands of meta iterations the paper's weights left the synthetic
batches barely class-specific in our small runs (sklearn digits, Fashion-MNIST).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgecompress._schema import StrictModel


class DataFreeConfig(StrictModel):
    """Data-free distillation: synthesize a transfer set from the teacher's BatchNorm statistics, then distill.

    ``fastdfkd``: a meta-generator is adapted for ``k_inner_steps`` per batch and meta-updated with Reptile
    (Fang et al., AAAI 2022). ``deepinversion``: the pixels of each batch are optimized from noise for
    ``deepinversion_steps`` steps (Yin et al., CVPR 2020). Both use the same inversion loss and the same interleaved
    student training.
    """

    method: Literal["fastdfkd", "deepinversion"] = Field("fastdfkd", description="Synthesis method.")
    synthesis_batches: int = Field(
        40, ge=1, description="Number of synthesized batches (= meta iterations for fastdfkd)."
    )
    batch_size: int = Field(64, ge=2, description="Images per synthesized batch (BN statistics need >= 2).")
    # FastDFKD
    k_inner_steps: int = Field(5, ge=1, description="FastDFKD inner steps on (z, θ′) per batch (the paper's 'Fast-k').")
    beta_meta: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Reptile step β in θ ← θ + β(θ′ − θ); 1 makes the meta-generator follow each adapted copy.",
    )
    lr_generator: float = Field(5e-3, gt=0, description="Adam learning rate of the adapted generator θ′ (inner loop).")
    lr_z: float = Field(0.05, gt=0, description="Adam learning rate of the per-batch latent codes z (inner loop).")
    z_dim: int = Field(64, ge=1, description="Latent size of the generator.")
    generator_width: int = Field(32, ge=4, description="Base channel width (ngf) of the generator.")
    reset_l0_at_batch: int | None = Field(
        None,
        ge=1,
        description="Re-initialize the meta-generator's first (linear) layer at this batch index, as the paper's "
        "code does once after warm-up ('reset_l0'); None never resets.",
    )
    # DeepInversion
    deepinversion_steps: int = Field(200, ge=1, description="DeepInversion pixel-optimization steps per batch.")
    lr_pixels: float = Field(0.1, gt=0, description="Adam learning rate of DeepInversion's pixels.")
    # inversion loss
    lambda_bn: float = Field(5.0, ge=0, description="Weight of the BN-statistics term L_bn.")
    lambda_oh: float = Field(1.0, ge=0, description="Weight of the one-hot cross-entropy term.")
    lambda_adv: float = Field(1.0, ge=0, description="Weight of the adversarial (teacher–student disagreement) term.")
    lambda_tv: float = Field(0.0, ge=0, description="Weight of DeepInversion's total-variation image prior (0: off).")
    adv_divergence: Literal["kl", "js"] = Field(
        "kl", description="Divergence of the adversarial term: KL(p_t‖p_s) as in the paper's code, or JS."
    )
    adv_warmup_batches: int = Field(
        2, ge=0, description="Batches synthesized before the adversarial term starts (the student is untrained before)."
    )
    allow_no_bn: bool = Field(
        False,
        description="Accept a teacher without BatchNorm2d: run the reduced loss without L_bn (weak; prefer real data).",
    )
    augment: bool = Field(True, description="Random translation of synthetic batches before the teacher and student.")
    flip: bool = Field(False, description="Also random horizontal flips (fine for natural images, wrong for digits).")
    # memory bank
    bank_size: int = Field(4096, ge=2, description="Most synthesized samples kept in the memory bank.")
    bank_policy: Literal["fifo", "reservoir"] = Field(
        "fifo", description="Which samples a full bank drops: the oldest (fifo) or a uniform reservoir sample."
    )
    # student
    student_steps_per_batch: int = Field(
        20, ge=0, description="Student KD steps on bank samples after each synthesized batch (interleaved)."
    )
    student_epochs: int = Field(
        0, ge=0, description="Extra passes over the final bank after synthesis ends (0: interleaved steps only)."
    )
    student_batch_size: int = Field(64, ge=1, description="Student mini-batch size drawn from the bank.")
    student_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the student.")
    kd_temperature: float = Field(20.0, gt=0, description="Softmax temperature T of the student's KL (T² scaled).")
    reset_student_bn_stats: bool = Field(
        False,
        description="Reset the student's BN running statistics before training (use when it was pre-trained on other "
        "data; its statistics are then re-estimated on synthetic samples).",
    )
    # resume
    checkpoint_every: int = Field(
        10,
        ge=1,
        description="With a workdir, save a resumable checkpoint every this many synthesized batches (and after each "
        "student epoch); an interrupted run continues from it, bit-identical to an uninterrupted one.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DataFreeConfig:
        if self.bank_size < self.batch_size:
            raise ValueError(
                f"bank_size={self.bank_size} is smaller than batch_size={self.batch_size}; "
                "set bank_size >= batch_size so a synthesized batch fits in the bank"
            )
        if self.student_steps_per_batch == 0 and self.student_epochs == 0:
            raise ValueError("student_steps_per_batch and student_epochs are both 0: the student would never train")
        if self.reset_l0_at_batch is not None and self.reset_l0_at_batch >= self.synthesis_batches:
            raise ValueError(
                f"reset_l0_at_batch={self.reset_l0_at_batch} is not below synthesis_batches={self.synthesis_batches}; "
                "lower it or leave it None"
            )
        return self
