"""The report's schema: ``report.json`` is ``Report.model_dump(mode="json")``.

``ModelEntry``'s required fields (name, role, format, precision, params, macs, size_bytes, accuracy, ece, nll,
brier, temperature, latency_ms, device) are a public contract read by other tools: they are always present in the
JSON, ``null`` when not measured. Metrics are fractions (0.91, not 91 %); latencies are milliseconds.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgecompress.measurements import BenchRow, LatencyStats, plain_json

SCHEMA_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelEntry(_Model):
    """One model of the run: a chain member (teacher / assistant / student) or an exported artifact."""

    name: str
    role: Literal["teacher", "assistant", "student", "artifact"]
    format: str | None
    precision: str | None
    params: int | None
    macs: int | None
    size_bytes: int | None
    accuracy: float | None
    ece: float | None
    nll: float | None
    brier: float | None
    temperature: float | None
    latency_ms: dict[str, LatencyStats] = Field(default_factory=dict, description="Keyed by batch size ('1', '8').")
    device: str | None
    adaptive_ece: float | None = None
    classwise_ece: float | None = None
    mce: float | None = None
    ece_before_ts: float | None = None
    nll_before_ts: float | None = None
    fidelity_agreement: float | None = Field(None, description="Top-1 agreement with the teacher (fraction).")
    fidelity_kl: float | None = Field(None, description="Mean KL(teacher || model) on held-out data.")
    parity_max_abs_diff: float | None = None
    throughput: float | None = Field(None, description="Samples per second at the largest batch measured.")
    energy_mj: float | None = Field(
        None, description="Energy per inference in millijoules at the largest batch measured, where measured."
    )
    runtime: str | None = None
    precision_used: str | None = Field(None, description="Precision the runtime actually ran (may differ).")
    notes: list[str] = Field(default_factory=list)
    reliability_png: str | None = Field(None, description="Reliability diagram, relative to the run folder.")
    parent: str | None = Field(None, description="The model this one was distilled or exported from.")
    reference: bool = Field(
        False,
        description="A reference artifact (the teacher's FP32 export): measured beside the shipped artifacts, "
        "never bundled or recommended.",
    )

    @field_validator("latency_ms", mode="before")
    @classmethod
    def _str_keys(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("notes", mode="before")
    @classmethod
    def _one_note(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class StageEntry(_Model):
    """A pipeline stage's wall time and whether it was reused from the cache."""

    name: str
    seconds: float | None = None
    cached: bool = False
    output_dir: str | None = None


class Recommendation(_Model):
    """Which artifact to ship on a device, and why (``artifact`` is None when nothing met the bounds)."""

    device: str
    artifact: str | None
    reason: str
    metric: str | None = Field(None, description="What 'fastest' was judged by: p50_ms or throughput.")
    value: float | None = None
    batch: int | None = None


class DecisionRow(_Model):
    """One candidate of a decision measured in the run (val metrics after its trial; fractions, NLL in nats)."""

    name: str
    step: str | None = Field(None, description="loss / chain (the decide stage) or calibration.")
    val_accuracy: float | None = None
    val_ece: float | None = None
    val_nll: float | None = None
    seconds: float | None = Field(None, description="The trial's training time.")
    steps: int | None = Field(None, description="The trial's optimizer steps (every model it trained).")
    chosen: bool = False
    note: str = ""


class Decision(_Model):
    """A choice the run made by measurement: its candidates, the one chosen and why."""

    title: str
    reason: str
    rows: list[DecisionRow] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ScratchBaseline(_Model):
    """The student trained on labels alone with the final budget, beside the shipped student (fractions)."""

    baseline_val_accuracy: float | None = None
    baseline_test_accuracy: float | None = None
    student_val_accuracy: float | None = Field(None, description="The shipped student's (val).")
    student_test_accuracy: float | None = Field(None, description="The shipped student's (test).")
    distilled_val_accuracy: float | None = Field(None, description="The distilled student's, shipped or not (val).")
    distilled_test_accuracy: float | None = Field(None, description="The distilled student's (test).")
    shipped: Literal["student", "baseline"] = "student"
    same_model: bool = Field(False, description="No teacher in the loop: the shipped student is this baseline.")
    difference: float | None = Field(None, description="Distilled minus scratch val accuracy, paired (fraction).")
    stderr: float | None = Field(None, description="Standard error of the difference (paired, fraction).")
    n: int | None = Field(None, description="Val images of the comparison.")
    significant: bool | None = Field(None, description="|difference| > 1.96 standard errors.")
    test_difference: float | None = Field(None, description="The same difference on test (reported only).")
    test_stderr: float | None = None
    reason: str | None = Field(None, description="The verdict in one line (distill.verdict).")


class AttemptEntry(_Model):
    """One attempt at the student (``distill.on_gate_failure: escalate``): the first, then each escalation."""

    index: int
    prune_ratio: float | None
    epochs: int
    macs: int | None = None
    val_accuracy: float | None = None
    teacher_val_accuracy: float | None = None
    passed: bool
    seconds: float
    why: str
    problem: str | None = None


class HeadlinePoint(_Model):
    """The teacher and the shipped artifact at one batch size on one device: p50 latency (ms) and their ratio."""

    batch: int
    teacher_ms: float | None = None
    shipped_ms: float | None = None
    speedup: float | None = Field(None, description="teacher p50 / shipped p50, both measured in this run.")
    unstable: bool = Field(False, description="Either latency's run-to-run spread is above the unstable bound.")


class HeadlineModel(_Model):
    """One side of the headline: the teacher's reference artifact or a shipped artifact (whole test split)."""

    name: str
    accuracy: float | None = None
    ece: float | None = None
    size_bytes: int | None = None
    macs: int | None = None
    runtime: str | None = Field(None, description="What ran it for these metrics (onnxruntime, openvino, pytorch).")


class HeadlineDevice(_Model):
    """The verdict on one device: the recommended artifact, its bundle, and its speed against the teacher."""

    device: str
    artifact: str | None = Field(None, description="The recommended artifact; None when nothing qualifies.")
    reason: str = ""
    bundle: str | None = Field(None, description="Its bundle folder, relative to the run folder.")
    shipped: HeadlineModel | None = None
    points: list[HeadlinePoint] = Field(default_factory=list)
    speedup_note: str | None = Field(None, description="Why the speed-up over the teacher was not measured.")


class Headline(_Model):
    """What a person reads first: teacher → shipped artifact per device, what was shipped and why."""

    teacher: HeadlineModel | None = None
    devices: list[HeadlineDevice] = Field(default_factory=list)
    evaluated_on: str = Field("", description="What the accuracies are measured on, e.g. 'all 450 test images'.")
    choice: str = Field("", description="What was shipped (distilled or scratch student) and why.")
    warnings: int = 0


class Report(_Model):
    """Everything a run measured, for ``report.json`` / ``report.md`` / ``report.html``."""

    schema_version: int = SCHEMA_VERSION
    name: str
    created: str = Field(default_factory=_now)
    config_hash: str | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelEntry] = Field(default_factory=list)
    benchmarks: list[BenchRow] = Field(
        default_factory=list, description="Device x artifact rows (edgecompress.measurements.BenchRow)."
    )
    stages: list[StageEntry] = Field(default_factory=list)
    attempts: list[AttemptEntry] = Field(
        default_factory=list, description="Every attempt at the student; more than one when the gate escalated."
    )
    recommendations: list[Recommendation] = Field(default_factory=list)
    figures: dict[str, str] = Field(default_factory=dict, description="Figure name -> PNG path relative to the run.")
    warnings: list[str] = Field(default_factory=list)
    datafree: dict[str, Any] | None = None
    decisions: list[Decision] = Field(
        default_factory=list, description="Choices measured in the run: 'Why this chain', 'Calibration'."
    )
    scratch_baseline: ScratchBaseline | None = None
    reference_benchmarks: list[BenchRow] = Field(
        default_factory=list, description="Device rows of reference artifacts (the teacher's FP32 export)."
    )
    test_samples: int | None = Field(None, description="Images in the test split (the models' metrics use them all).")
    headline: Headline | None = None

    @field_validator("environment", "datafree", mode="before")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        """Free-form parts become plain JSON (numpy scalars/arrays to lists, Paths to str, keys to str)."""
        return plain_json(value)
