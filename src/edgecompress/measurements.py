"""Typed measurement records that travel between packages: one device × artifact benchmark row.

A foundation module (pydantic + stdlib only): ``devices`` produces :class:`BenchRow`, ``report`` renders and ranks
them, ``pipeline`` stores them in the run directory. What a device sends back is untrusted input, so the agent's JSON
is validated here (:meth:`AgentResult.parse`) before any number reaches a row: a bad result becomes a failed row
with its reason, never an exception that stops the other rows, and never an "ECE −500 %" in a report.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

UNSTABLE_CV = 0.10  # run-to-run spread of p50 (std/mean over repeats) above which a latency is flagged unstable


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _finite(value: float | None, what: str) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value}")
    return value


class LatencyStats(_Record):
    """Latency percentiles in milliseconds for one batch size."""

    p50: float = Field(ge=0)
    p90: float | None = Field(None, ge=0)
    p99: float | None = Field(None, ge=0)
    mean: float | None = Field(None, ge=0)
    std: float | None = Field(None, ge=0)

    @field_validator("p50", "p90", "p99", "mean", "std")
    @classmethod
    def _is_finite(cls, value: float | None) -> float | None:
        return _finite(value, "a latency")


def plain_json(value: Any) -> Any:
    """A free-form value as plain JSON: numpy scalars and arrays to lists, Paths and other objects to strings."""

    def default(obj: Any) -> Any:
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if hasattr(obj, "model_dump"):
            return obj.model_dump(mode="json")
        return str(obj)

    return None if value is None else json.loads(json.dumps(value, default=default))


def _batch_keys(value: Any) -> Any:
    """``{"1": ..., 8: ...}`` → ``{1: ..., 8: ...}``; a key that is not a positive integer is an error."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        try:
            batch = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"batch size {key!r} is not an integer") from None
        if batch < 1:
            raise ValueError(f"batch size {key!r} is not positive")
        out[batch] = item
    return out


class AgentMetrics(BaseModel):
    """Accuracy and calibration measured on the device (fractions); extra keys (mce, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    accuracy: float | None = Field(None, ge=0, le=1)
    ece: float | None = Field(None, ge=0, le=1)
    nll: float | None = Field(None, ge=0)
    brier: float | None = Field(None, ge=0, le=2)
    n: int | None = Field(None, ge=0)

    @field_validator("accuracy", "ece", "nll", "brier")
    @classmethod
    def _is_finite(cls, value: float | None) -> float | None:
        return _finite(value, "a metric")


class AgentResult(BaseModel):
    """The agent's JSON (``devices/agent.py``), validated at the boundary. Keys the host does not use are ignored."""

    model_config = ConfigDict(extra="ignore")

    ok: bool = False
    error: str | None = None
    errors: list[str] = Field(default_factory=list)
    stage: str | None = None
    metrics: AgentMetrics | None = None
    latency_ms: dict[int, LatencyStats] = Field(default_factory=dict)
    throughput: dict[int, float | None] = Field(default_factory=dict)
    bench: dict[int, dict[str, Any]] = Field(default_factory=dict)
    energy_mj_per_inference: dict[int, float] | None = None
    peak_rss_mb: float | None = Field(None, ge=0)
    info: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, Any] | None = None
    logits_file: str | None = None
    calibration_measured_on: str | None = None
    stderr_tail: str | None = None

    @field_validator("latency_ms", "throughput", "bench", "energy_mj_per_inference", mode="before")
    @classmethod
    def _int_batches(cls, value: Any) -> Any:
        return _batch_keys(value)

    @classmethod
    def parse(cls, data: Any) -> tuple[AgentResult | None, str | None]:
        """The validated result, or ``(None, reason)`` naming the first bad field in one line."""
        if not isinstance(data, dict):
            return None, f"the device result is a {type(data).__name__}, not a JSON object"
        try:
            return cls.model_validate(data), None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "result"
            return None, f"invalid device result: {where}: {err['msg']} (got {str(err.get('input'))[:60]!r})"


class BenchRow(_Record):
    """One (device, artifact) measurement: latency per batch size, accuracy and calibration on that device.

    ``ok`` is False for a run that failed (``error`` says why); such a row is kept in the report and never
    recommended. ``latency_cv`` is the run-to-run spread of p50 over the agent's repeats (std / mean) per batch
    size; ``unstable`` marks rows where it exceeds :data:`UNSTABLE_CV` at some batch size, so a recommendation made
    from them can say so.
    """

    device: str
    transport: str | None = None
    artifact: str
    format: str | None = None
    precision: str | None = None
    runtime: str | None = None
    inference_precision: str | None = None
    latency_ms: dict[int, LatencyStats] = Field(default_factory=dict)
    throughput: dict[int, float] = Field(default_factory=dict, description="Samples per second, by batch size.")
    energy_mj: dict[int, float] = Field(default_factory=dict, description="Energy per inference (mJ), by batch size.")
    latency_cv: dict[int, float] = Field(default_factory=dict)
    unstable: bool = False
    accuracy: float | None = Field(None, ge=0, le=1)
    ece: float | None = Field(None, ge=0, le=1)
    nll: float | None = Field(None, ge=0)
    brier: float | None = Field(None, ge=0, le=2)
    eval_samples: int | None = None
    calibration_measured_on: str | None = None
    metrics_full: dict[str, float] | None = None
    peak_rss_mb: float | None = None
    env: dict[str, Any] | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    ok: bool = True
    error: str | None = None
    errors: list[str] = Field(default_factory=list)
    stderr_tail: str | None = None
    attempts: int = 0
    failures: list[str] = Field(default_factory=list)

    @field_validator("latency_ms", "throughput", "energy_mj", "latency_cv", mode="before")
    @classmethod
    def _int_batches(cls, value: Any) -> Any:
        return _batch_keys(value)

    @field_validator("info", "env", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        return plain_json(value)

    @property
    def failure(self) -> str | None:
        """The one-line error of a failed run, else None."""
        return None if self.ok else " ".join((self.error or "failed").split())

    def p50_at(self, batch: int) -> float | None:
        stats = self.latency_ms.get(batch)
        return stats.p50 if stats else None

    def largest_batch_p50(self) -> tuple[int, float] | None:
        """(batch, p50 ms) at the largest batch measured, or None."""
        if not self.latency_ms:
            return None
        batch = max(self.latency_ms)
        return batch, self.latency_ms[batch].p50

    def throughput_at(self, batch: int | None = None) -> float | None:
        """Samples per second at ``batch`` (default: the largest batch measured)."""
        if not self.throughput:
            return None
        return self.throughput.get(batch) if batch is not None else self.throughput[max(self.throughput)]

    def energy_at(self, batch: int | None = None) -> float | None:
        """Energy per inference (mJ) at ``batch`` (default: the largest batch measured)."""
        if not self.energy_mj:
            return None
        return self.energy_mj.get(batch) if batch is not None else self.energy_mj[max(self.energy_mj)]
