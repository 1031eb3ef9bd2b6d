"""Config sections of the distillation stage (pydantic + stdlib only: importing this must not import torch)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edgecompress._schema import StrictModel
from edgecompress.distill.datafree.config import DataFreeConfig

_MODEL_KEYS = {"family", "params", "factory"}


class TrainConfig(StrictModel):
    """How one network is trained (teacher from scratch, an assistant or the student)."""

    epochs: int = Field(10, ge=1, description="Training epochs.")
    batch_size: int = Field(128, ge=1, description="Global batch size (split across processes under DDP).")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="SGD with momentum or AdamW.")
    lr: float | Literal["auto"] = Field(
        "auto",
        description="Peak learning rate (after warm-up), or 'auto': chosen by a short seeded learning-rate range "
        "test on a copy of the model before training (Smith, 2017); the chosen rate is in the training result.",
    )
    lr_range_steps: int = Field(
        40, ge=10, le=1000, description="With lr: auto, optimizer steps of the range test (exponentially rising lr)."
    )
    grad_clip: float | None = Field(
        5.0, gt=0, description="Clip the global gradient L2 norm to this value before each step; None = off."
    )
    max_recoveries: int = Field(
        3,
        ge=0,
        le=10,
        description="Automatic recoveries: on a non-finite loss, an exploding val NLL or an epoch at chance, restore "
        "the last good state, lower the learning rate x0.3 and go on, at most this many times (0 = fail at once).",
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by AdamW).")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay on weights of rank >= 2 (not biases/norms).")
    warmup_epochs: float = Field(1, ge=0, description="Linear learning-rate warm-up, in epochs (stepped per batch).")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="Learning-rate schedule after warm-up.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy term.")
    augment: bool = Field(True, description="Random crop/flip of training batches (when an augment config is given).")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap on optimizer steps per epoch (quick runs).")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:  # YAML reads 1e-3 (no dot) as a string
            lr = float(v) if not isinstance(v, bool) else math.nan
        except (TypeError, ValueError):
            lr = math.nan
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number or 'auto' (chosen by a range test), got {v!r}")
        return lr

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_epochs > self.epochs:
            raise ValueError(
                f"warmup_epochs={self.warmup_epochs} exceeds epochs={self.epochs}; "
                "set warmup_epochs <= epochs (0 disables warm-up)"
            )
        return self


class LossConfig(StrictModel):
    """The student's loss: a registered loss (``edgecompress._registry.LOSSES``) and its parameters.

    A parameter left out (None) takes the loss's own default (``distill.losses.resolve_loss``), so each loss has one
    default, written beside its formula.
    """

    kind: str = Field(
        "kd",
        description="A registered loss: ce (labels only), kd (Hinton KD), dist (DIST correlation loss), bdkd "
        "(balanced fwd/rev KL), or one a plugin module registers; auto: decided by trials on val (the decide stage, "
        "see distill.trials) among scratch (ce) and the settings each registered loss offers for trials.",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="Softmax temperature T of the distillation term; None = the loss's default (kd: 2, measured; "
        "dist: 1, its paper's).",
    )
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="kd / bdkd: weight of the distillation term, CE gets 1 − alpha; None = the loss's default (0.9). "
        "dist weights CE at 1 (its paper) and takes dist_beta / dist_gamma instead.",
    )
    dist_beta: float = Field(1.0, ge=0, description="DIST weight of the inter-class (per-sample) relation.")
    dist_gamma: float = Field(1.0, ge=0, description="DIST weight of the intra-class (per-class) relation.")
    mbls_margin: float | None = Field(None, gt=0, description="MbLS logit margin m; None disables the margin term.")
    mbls_weight: float = Field(0.1, ge=0, description="MbLS weight λ of the margin penalty.")

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str, info: ValidationInfo) -> str:
        from edgecompress._registry import LOSSES  # light: the names, not the losses

        if v == "auto":
            return v
        return LOSSES.check_name(v, plugins=bool((info.context or {}).get("plugins")))


class MemberSpec(StrictModel):
    """One assistant or the student: an explicit model spec, or a MAC ratio cut from the teacher by pruning."""

    model: dict[str, Any] | None = Field(
        None, description="A models ModelSpec as a plain dict: {family, params} or {factory: 'pkg.mod:fn'}."
    )
    prune_ratio: float | None = Field(
        None, gt=0, le=1, description="Target MACs relative to the teacher, in (0, 1]; the member is pruned from it."
    )
    round_to: int | None = Field(
        None, ge=1, description="With prune_ratio: keep channel counts multiples of this (e.g. 8 or 16 for SIMD/INT8)."
    )
    name: str | None = Field(None, min_length=1, description="Name used in reports and the hop folder.")

    @field_validator("model")
    @classmethod
    def _model_keys(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return v
        unknown = set(v) - _MODEL_KEYS
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in model; allowed: {sorted(_MODEL_KEYS)}")
        if not v.get("family") and not v.get("factory"):
            raise ValueError("model needs 'family' (with optional 'params') or 'factory' ('pkg.mod:fn')")
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> MemberSpec:
        if (self.model is None) == (self.prune_ratio is None):
            raise ValueError("give exactly one of 'model' (a model spec) or 'prune_ratio' (MACs relative to teacher)")
        if self.round_to is not None and self.prune_ratio is None:
            raise ValueError("round_to applies to pruned members only; set prune_ratio or remove round_to")
        return self


class TrialsConfig(StrictModel):
    """The decide stage's trials (``assistants: auto`` / ``loss.kind: auto``): successive halving on val.

    Every candidate (scratch and each registered loss's trial settings) trains a fresh student for ``b`` optimizer
    steps with the final run's augmentation and teacher targets; the best 1/``eta`` is promoted to ``eta`` x the
    steps, and so on while more than one is left. ``b`` is set so that every trial together (rungs, chain trials,
    learning-rate range tests) costs ``budget`` x the final student's steps, at least ``min_steps`` per model.
    """

    budget: float = Field(
        0.3,
        gt=0,
        le=2,
        description="All trials together, as a fraction of the final student's optimizer steps (default 0.3).",
    )
    eta: int = Field(3, ge=2, le=8, description="Successive halving: keep the best 1/eta, give them eta x the steps.")
    min_steps: int = Field(20, ge=1, description="At least this many optimizer steps per model at the first rung.")
    kd_temperatures: list[float] | None = Field(
        None, description="With loss.kind: auto: KD temperatures T tried (None: the KD loss's grid, 1, 2, 4)."
    )
    kd_alphas: list[float] | None = Field(
        None, description="With loss.kind: auto: KD weights alpha tried with every T (None: the grid's, 0.5, 0.9)."
    )
    dist: bool = Field(True, description="With loss.kind: auto: DIST (at its grid's T = 1 and 4) is a candidate.")
    scratch: bool = Field(
        True,
        description="Training on labels without a teacher (ce) is a trial candidate, so the table shows where label "
        "training stands (whether distillation paid is decided at full budget: distill.scratch_baseline).",
    )

    @field_validator("kd_temperatures")
    @classmethod
    def _temps(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not (math.isfinite(t) and t > 0) for t in v):
            raise ValueError(f"kd_temperatures {v} must all be finite and > 0 (e.g. [1, 2, 4])")
        return v

    @field_validator("kd_alphas")
    @classmethod
    def _alphas(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not 0 < a <= 1 for a in v):
            raise ValueError(f"kd_alphas {v} must all be in (0, 1] (the weight of the KD term, e.g. [0.5, 0.9])")
        return v

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "scratch_baseline" in data:
            raise ValueError(
                "distill.trials.scratch_baseline moved: use distill.scratch_baseline (on by default in every run)"
            )
        return data


class DistillConfig(StrictModel):
    """The teacher → assistants → student chain."""

    student: MemberSpec = Field(
        default_factory=lambda: MemberSpec(prune_ratio=0.1, name="student"), description="The final model."
    )
    assistants: list[MemberSpec] | Literal["auto", "planned", "search", "none"] = Field(
        "none",
        description="Explicit assistants (largest first); 'auto': decided by trials on val (decide stage, see "
        "trials) among direct KD, one assistant at the geometric mean MAC ratio of teacher and student, and the "
        "planned path; 'planned' (pruned at geometric MAC ratios, no trial); 'search' (try search_candidates on a "
        "short budget) or 'none' (direct KD).",
    )
    n_assistants: int | None = Field(
        None,
        ge=0,
        description="With 'planned' (and the planned candidate of 'auto'): number of assistants; None = one per ~4.5x "
        "of MAC gap.",
    )
    search_candidates: list[float] = Field(
        default_factory=lambda: [0.5, 0.25], description="With 'search': assistant MAC ratios to try, each in (0, 1)."
    )
    search_epochs: int = Field(2, ge=1, description="With 'search': epochs per candidate (TA and student).")
    calibrate_teachers: bool = Field(True, description="Temperature-scale each teacher on val before it teaches.")
    ensemble: bool = Field(False, description="Student learns from a val-weighted ensemble of the assistants.")
    teacher_label_smoothing: bool = Field(
        False, description="The teacher was trained with label smoothing: distill at T = 1 (Müller et al., 2019)."
    )
    teacher_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="With augmentation on CPU, what each KD teacher runs in on every batch: 'auto' = bf16 when the "
        "CPU has AMX (AVX512-BF16 alone gains too little), it agrees with fp32 (top-1 >= 99 %, KL <= 1e-3 on 512 "
        "training images) and the teacher has >= 10 M MACs per image (smaller ones gain nothing), else fp32; 'fp32'; "
        "'bf16' (error if not faithful). Recorded per hop.",
    )
    teacher_targets: Literal["clean", "online"] = Field(
        "clean",
        description="With augmentation, the teacher's targets: 'clean' = its logits on the un-augmented images, "
        "computed once for the run, which the student learns on its augmented views (one teacher pass: a large "
        "teacher costs no more than a small one); 'online' = the teacher runs on every augmented batch (targets "
        "consistent with the view, one teacher pass per epoch). docs/results.md measures both.",
    )
    datafree: DataFreeConfig | None = Field(
        None, description="Set to distill without training data: synthesize the transfer set from the teacher."
    )
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training of each member.")
    loss: LossConfig = Field(default_factory=LossConfig, description="The distillation loss of each hop.")
    trials: TrialsConfig = Field(
        default_factory=TrialsConfig, description="The trials that decide assistants: auto and loss.kind: auto."
    )
    max_accuracy_drop: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Quality gate: the student, and each assistant before it teaches, may be at most this far below "
        "the teacher's val accuracy (a fraction: 0.05 = 5 points) and never at chance; else the run stops before "
        "export (or escalates, see on_gate_failure).",
    )
    on_gate_failure: Literal["stop", "escalate"] = Field(
        "escalate",
        description="When the student fails the gate: escalate (try again: twice the epochs when its val accuracy "
        "was still rising, else the next larger pruned student, MACs x2; within escalation_budget; every attempt is "
        "a row in the report), or stop at once with both accuracies and what to try.",
    )
    escalation_budget: float = Field(
        3.0,
        ge=1,
        description="With on_gate_failure: escalate, the cap on the total distillation time of all attempts, in "
        "multiples of the first attempt's (an attempt estimated to pass it is not started).",
    )
    scratch_baseline: bool = Field(
        True,
        description="Also train the student on labels alone with the same budget and seed (no teacher: cheap), and "
        "compare it with the distilled student on val with a paired standard error: scratch ships only when it is "
        "significantly better (distill.verdict). false opts out (the report then cannot say whether distillation "
        "paid).",
    )

    @field_validator("search_candidates")
    @classmethod
    def _candidates(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("search_candidates is empty; give at least one MAC ratio in (0, 1)")
        bad = [c for c in v if not 0 < c < 1]
        if bad:
            raise ValueError(f"search_candidates {bad} outside (0, 1); each is a TA's MACs relative to the teacher")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.n_assistants is not None and self.assistants not in ("auto", "planned"):
            raise ValueError(
                "n_assistants is only used with assistants: planned or auto; remove it or set assistants: planned"
            )
        if self.ensemble:
            if self.assistants in ("none", "search", "auto"):
                raise ValueError(
                    f"ensemble needs a fixed set of assistants (explicit list or 'planned'), not '{self.assistants}'"
                )
            if isinstance(self.assistants, list) and len(self.assistants) < 2:
                raise ValueError("ensemble needs at least 2 assistants; add one or set ensemble: false")
            if self.assistants == "planned" and self.n_assistants is not None and self.n_assistants < 2:
                raise ValueError("ensemble needs n_assistants >= 2; raise it or set ensemble: false")
        if self.student.prune_ratio is not None and isinstance(self.assistants, list):
            for a in self.assistants:
                if a.prune_ratio is not None and a.prune_ratio <= self.student.prune_ratio:
                    raise ValueError(
                        f"assistant prune_ratio {a.prune_ratio} <= student's {self.student.prune_ratio}; "
                        "assistants sit between teacher and student"
                    )
        if self.loss.kind == "ce" and self.assistants != "none":
            raise ValueError("loss.kind 'ce' ignores the teachers; use kd/dist/bdkd/auto or assistants: none")
        # loss.kind auto with an explicit list or 'planned' is allowed: the loss is decided on the direct hop and the
        # given chain is kept (dropped only when scratch wins: then the student trains on labels alone)
        if self.loss.kind == "auto" and self.assistants == "search":
            raise ValueError(
                "loss.kind 'auto' is decided by trials that assistants: search does not run; use assistants: auto "
                "(trials the chain too) or a fixed loss.kind"
            )
        tc = self.trials
        if self.loss.kind == "auto" and not tc.dist and ([] in (tc.kd_temperatures, tc.kd_alphas)):
            raise ValueError(
                "loss.kind auto has no teacher-loss candidate (empty KD grid and dist: false); give "
                "trials.kd_temperatures / kd_alphas or dist: true — or train on labels alone with loss.kind: ce"
            )
        if self.datafree is not None and (self.loss.kind == "auto" or self.assistants == "auto"):
            raise ValueError("datafree distillation has no trials: set a fixed loss.kind and assistants (not 'auto')")
        return self

    @property
    def decides(self) -> bool:
        """Whether the decide stage runs trials (assistants or loss.kind is 'auto')."""
        return self.datafree is None and (self.assistants == "auto" or self.loss.kind == "auto")
