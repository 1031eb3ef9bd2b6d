"""Config section of the calibration stage (pydantic + stdlib only: importing this must not import torch)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgecompress._schema import StrictModel


class MbLSConfig(StrictModel):
    """Optional short calibration fine-tune of the student with margin-based label smoothing (MbLS).

    L = CE(y, softmax(z)) + λ·Σ_k max(0, max_j z_j − z_k − m)  (Liu et al., CVPR 2022, arXiv 2111.15430).
    The epoch with the lowest validation NLL is kept (epoch 0, the unchanged model, included).
    """

    margin: float = Field(10.0, description="Logit margin m: gaps to the top logit above m are penalized (paper: 10).")
    weight: float = Field(0.1, description="Weight λ of the margin penalty (paper: 0.1; 0 gives plain CE).")
    finetune_epochs: int = Field(3, description="Epochs of the fine-tune (short: it only re-shapes the logits).")
    lr: float = Field(1e-4, description="Adam learning rate of the fine-tune.")
    batch_size: int = Field(128, description="Mini-batch size of the fine-tune.")

    @field_validator("margin")
    @classmethod
    def _margin_positive(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"margin m={v} must be a finite number > 0 (the paper uses m=10)")
        return v

    @field_validator("weight")
    @classmethod
    def _weight_nonneg(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"weight λ={v} must be a finite number >= 0 (the paper uses λ=0.1; 0 disables the margin)")
        return v

    @field_validator("finetune_epochs")
    @classmethod
    def _epochs_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"finetune_epochs={v} must be >= 1 (to skip the fine-tune, set 'mbls: null')")
        return v

    @field_validator("lr")
    @classmethod
    def _lr_positive(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"lr={v} must be a finite number > 0 (a calibration fine-tune uses a small lr, e.g. 1e-4)")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"batch_size={v} must be >= 1")
        return v


class CalibrationConfig(StrictModel):
    """How the final model is calibrated: optional MbLS fine-tune, then temperature scaling on the val split."""

    method: Literal["ts", "mbls", "auto"] = Field(
        "ts",
        description="ts: temperature scaling alone; mbls: an MbLS fine-tune (the mbls section, defaults if absent) "
        "then TS; auto: both compared on val — TS alone vs an MbLS fine-tune per margin in auto_margins, each "
        "followed by TS — keeping the lowest val ECE (then NLL) among candidates within auto_max_accuracy_drop of "
        "TS alone's val accuracy. None: mbls when an mbls section is given, else ts.",
    )
    auto_margins: list[float] = Field(
        default_factory=lambda: [5.0, 10.0], description="With method auto: the MbLS margins m tried."
    )
    auto_max_accuracy_drop: float = Field(
        0.005,
        ge=0,
        le=1,
        description="With method auto: an MbLS candidate losing more val accuracy than this (a fraction: 0.005 = "
        "0.5 pt) against TS alone is not eligible.",
    )
    auto_max_train: int | None = Field(
        4096,
        ge=1,
        description="With method auto: each MbLS candidate fine-tunes on a seeded subset of at most this many "
        "training samples (mbls.finetune_epochs epochs; default 3 x 4096 samples, about 100 steps); None = all.",
    )

    temperature_scaling: bool = Field(
        True, description="Fit one temperature T on the val split (Guo et al., 2017) and fold it into the graph."
    )
    n_bins: int = Field(15, description="Equal-width confidence bins of ECE / MCE and the reliability diagrams.")
    mbls: MbLSConfig | None = Field(
        None, description="MbLS calibration fine-tune of the student before temperature scaling; null disables it."
    )
    refit_after_quantization: bool = Field(
        True,
        description="Re-fit T for a quantized artifact whose val ECE moved by more than refit_threshold "
        "(ignored when temperature_scaling is false).",
    )
    refit_threshold: float = Field(
        0.005, description="ECE change (a fraction, 0.005 = 0.5 pt) that triggers a re-fit of T for an artifact."
    )

    @field_validator("mbls", mode="before")
    @classmethod
    def _mbls_shorthand(cls, v: Any) -> Any:
        # YAML convenience: `mbls: true` means the defaults, `mbls: false` means off.
        if v is True:
            return {}
        if v is False:
            return None
        return v

    @field_validator("auto_margins")
    @classmethod
    def _margins(cls, v: list[float]) -> list[float]:
        if not v or any(not (math.isfinite(m) and m > 0) for m in v):
            raise ValueError(f"auto_margins {v} must be a non-empty list of finite margins > 0 (e.g. [5, 10])")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_method(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("method") is None:
            data = {**data, "method": "mbls" if data.get("mbls") not in (None, False) else "ts"}
        return data

    @model_validator(mode="after")
    def _method(self) -> CalibrationConfig:
        if self.method == "ts" and self.mbls is not None:
            raise ValueError("method 'ts' ignores the mbls section; set method: mbls (or auto), or remove mbls")
        return self

    @property
    def mbls_settings(self) -> MbLSConfig:
        """The MbLS fine-tune's settings: the mbls section, or its defaults."""
        return self.mbls if self.mbls is not None else MbLSConfig()

    @field_validator("n_bins")
    @classmethod
    def _bins_range(cls, v: int) -> int:
        if not 2 <= v <= 1000:
            raise ValueError(f"n_bins={v} must be between 2 and 1000 (the standard ECE uses 15)")
        return v

    @field_validator("refit_threshold")
    @classmethod
    def _threshold_range(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise ValueError(
                f"refit_threshold={v} must be in [0, 1]: it is an ECE change as a fraction (0.005 = 0.5 pt)"
            )
        return v
