"""The ``target:`` section: compress to a budget on a device (pydantic + stdlib only, so config stays light).

The user names a device and what the student must meet there — a p50 latency at a batch size, an artifact size, a
speed-up over the teacher on the same device — and how much accuracy (and calibration) it may cost. The pipeline
measures candidate students cut from the teacher before training and distills the largest that meets every budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgecompress._schema import StrictModel
from edgecompress.errors import ConfigError
from edgecompress.export.formats import parse_formats

DEFAULT_CACHE_DIR = Path("~/.cache/edgecompress/latency")


class TargetConfig(StrictModel):
    """The ``target:`` section: the device, the budgets, and how candidates are cut and measured."""

    device: str = Field(
        "local", min_length=1, description="Device profile name or profile YAML path (local, an SSH Jetson, a phone)."
    )
    batch_size: int = Field(1, ge=1, description="Batch size the latency budget is measured at.")
    latency_ms: float | None = Field(None, gt=0, description="Budget: p50 latency on the device (milliseconds).")
    size_kb: float | None = Field(None, gt=0, description="Budget: artifact size in KiB (1024 bytes).")
    speedup: float | None = Field(
        None, gt=1, description="Budget: p50 speed-up over the teacher on the same device (its fastest FP32 artifact)."
    )
    max_accuracy_drop: float = Field(
        0.02, ge=0, le=1, description="Test accuracy the final artifact may lose against the teacher (fraction)."
    )
    max_ece: float | None = Field(None, gt=0, le=1, description="Largest ECE of the final artifact on test (fraction).")
    formats: list[str] | None = Field(
        None, description="'format:precision' items to consider (default: export.formats); each must be exported."
    )
    candidates: int = Field(6, ge=2, le=24, description="Number of candidate students on the geometric MAC grid.")
    max_ratio: float = Field(0.5, gt=0, le=1, description="Largest candidate's MACs relative to the teacher.")
    min_ratio: float = Field(0.01, gt=0, lt=1, description="Smallest candidate's MACs relative to the teacher.")
    round_to: int | None = Field(8, ge=1, description="Candidate channel counts are multiples of this (SIMD kernels).")
    margin: float = Field(
        0.1, ge=0, lt=1, description="Noise margin: a candidate's measured p50 × (1 + margin) must meet the budget."
    )
    search: Literal["largest", "frontier"] = Field(
        "largest",
        description="'largest': distill the largest feasible candidate (step down on a miss). 'frontier': distill the "
        "frontier_k largest feasible candidates, report their accuracy against latency, ship the most accurate one "
        "that met the budget.",
    )
    frontier_k: int = Field(3, ge=2, le=10, description="With search: frontier, feasible candidates to train.")
    max_steps_down: int = Field(
        2, ge=0, le=10, description="When the final artifact misses the latency budget: smaller candidates to try."
    )
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="Cross-run cache of measured candidate latencies.")

    @field_validator("formats", mode="before")
    @classmethod
    def _check_formats(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("target.formats must be a non-empty list of 'format:precision' items, e.g. ['onnx:int8']")
        try:
            pairs = parse_formats(list(value))
        except ConfigError as exc:
            raise ValueError(f"{exc.problem}: {exc.fix}") from None
        return [f"{name}:{precision}" for name, precision in pairs]

    @model_validator(mode="after")
    def _budgets(self) -> TargetConfig:
        if self.latency_ms is None and self.size_kb is None and self.speedup is None:
            raise ValueError("target needs a budget: set at least one of latency_ms, size_kb or speedup")
        if self.min_ratio >= self.max_ratio:
            raise ValueError(f"target.min_ratio ({self.min_ratio}) must be below max_ratio ({self.max_ratio})")
        return self

    def format_pairs(self, export_formats: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (format, precision) pairs to consider: ``formats``, or the export section's."""
        return parse_formats(self.formats) if self.formats is not None else list(export_formats)

    def ratios(self) -> list[float]:
        """The geometric grid of candidate MAC ratios, largest first."""
        n, hi, lo = self.candidates, self.max_ratio, self.min_ratio
        return [hi * (lo / hi) ** (i / (n - 1)) for i in range(n)]
