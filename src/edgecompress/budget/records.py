"""Typed records of the budget search: a candidate's measured latency per format, the latency-vs-MACs fit, the choice.

Plain pydantic (no torch), so the pipeline's stage result and the latency cache hold the same objects.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgecompress.report.budget import BudgetAttempt


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Probe(_Record):
    """One candidate in one (format, precision), measured untrained on the target device (or read from the cache)."""

    format: str
    precision: str
    ok: bool = True
    error: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    cv: float | None = Field(None, description="Run-to-run spread of p50 over the agent's repeats (std / mean).")
    size_bytes: int | None = None
    cached: bool = Field(False, description="Read from the latency cache instead of measured in this run.")
    predicted_ms: float | None = Field(None, description="The format's latency-vs-MACs fit at this candidate's MACs.")

    @property
    def pair(self) -> str:
        return f"{self.format}:{self.precision}"


class Candidate(_Record):
    """A student cut from the teacher by structured pruning at a target MAC ratio (or the teacher itself)."""

    name: str
    target_ratio: float = Field(description="Requested MACs relative to the teacher (the student's prune_ratio).")
    mac_ratio: float = Field(description="MACs reached, relative to the teacher.")
    macs: int
    params: int
    widths: list[int] = Field(description="Output channels / features of every Conv and Linear layer, in order.")
    probes: list[Probe] = Field(default_factory=list)

    def probe(self, pair: str) -> Probe | None:
        return next((p for p in self.probes if p.pair == pair), None)


class LatencyFit(_Record):
    """p50 latency against MACs for one (format, precision), by least squares: a power law
    ``log p50 = a + b · log MACs`` (``kind: power``) or a line ``p50 = a + b · MACs`` (``kind: linear``)."""

    format: str
    precision: str
    kind: Literal["power", "linear"] = "power"
    intercept: float
    slope: float
    points: int
    rms_log_residual: float = Field(description="Root mean square of log(measured / fitted) (≈ relative error).")
    max_rel_residual: float = Field(description="Largest |measured / fitted − 1| over the candidates.")

    def predict(self, macs: int) -> float:
        import math

        if self.kind == "linear":
            return max(self.intercept + self.slope * macs, 1e-9)
        return math.exp(self.intercept + self.slope * math.log(max(macs, 1)))


class Choice(_Record):
    """The chosen candidate and format, and why."""

    candidate: str
    pair: str
    target_ratio: float
    p50_ms: float | None
    reason: str


class Verdict(BudgetAttempt):
    """The final artifact of one attempt, measured on the target after training, against the budgets (the report's
    attempt row, plus what the frontier selection and the step-down read)."""

    accuracy: float | None = Field(None, description="Test accuracy through the artifact's runtime (reported).")
    val_accuracy: float | None = Field(None, description="Val accuracy through its runtime (frontier selection).")
    misses: list[str] = Field(default_factory=list, description="One line per budget missed.")
