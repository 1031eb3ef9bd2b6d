"""Typed results of the pipeline's stages: what each stage's ``_done.json`` holds and what ``run.json`` gathers.

Every stage result is a pydantic model; it is written by :meth:`Context.cached` and read back the same way, so no
caller reads a stage's result "tolerantly" with ``.get`` fallbacks. Paths inside results are absolute when written
and are re-rooted when a run directory is moved or copied (:func:`edgecompress.pipeline.rundir.reroot`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgecompress.budget.records import Candidate, Choice, LatencyFit, Verdict
from edgecompress.export import Artifact
from edgecompress.measurements import BenchRow

RUN_STATE_VERSION = 2


class StageResult(BaseModel):
    """Base of every stage result (extra keys refused: a result from another version is recomputed, not guessed)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataResult(StageResult):
    """The splits' identity: the data stage reloads the arrays (cheap, deterministic) and checks this fingerprint."""

    fingerprint: str
    labels: list[str]
    num_classes: int
    input_shape: tuple[int, int, int]
    preprocess: dict[str, Any]
    sizes: dict[str, int] = Field(description="Samples per split (train, val, calib, test); absent splits are 0.")


class TeacherResult(StageResult):
    """The teacher as loaded or trained here: size, test metrics and val accuracy (checked against chance)."""

    name: str = "teacher"
    role: str = "teacher"
    spec: dict[str, Any] | None = Field(description="How to rebuild it; None for a TorchScript / .pt2 program.")
    params: int
    macs: int
    test: dict[str, float] | None = None
    val_accuracy: float | None = None
    events: list[str] = Field(default_factory=list, description="Training events (recoveries, chosen learning rate).")


class SearchResult(StageResult):
    """The teacher-assistant search (``distill.assistants: search``): every candidate tried and the one chosen."""

    chosen_ratio: float | None = None
    table: dict[str, Any] = Field(default_factory=dict)


class DistillResult(StageResult):
    """The chain's records (teacher first, student last) and how to rebuild the student."""

    student_spec: dict[str, Any]
    chain: dict[str, Any]
    member_specs: dict[str, dict[str, Any]] = Field(default_factory=dict)
    datafree: dict[str, Any] | None = None
    sample_grid: str | None = None
    curve_png: str | None = Field(None, description="Data-free runs: the student's val accuracy against rounds.")
    bank: str | None = None
    student_val_accuracy: float | None = None
    teacher_val_accuracy: float | None = None
    decided: dict[str, Any] | None = Field(
        None, description="What the decide stage chose and how the chain applied it (loss, assistants, scratch)."
    )
    scratch_baseline: dict[str, Any] | None = Field(
        None,
        description="The student trained on labels with the final budget: val_accuracy, test metrics, the verdict "
        "(difference = distilled minus scratch val accuracy, stderr, n, significant, reason, test_difference, "
        "test_stderr, test_n; distill.verdict) and shipped (true when scratch was significantly better and replaced "
        "the distilled student).",
    )
    attempts: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Every attempt at the student (distill.escalation.Attempt): the first, then each escalation.",
    )


class CalibrateResult(StageResult):
    """Temperature scaling (and the optional MbLS fine-tune) of the student; metrics on test before and after."""

    temperature: float = 1.0
    before: dict[str, float] | None = None
    after: dict[str, float] | None = None
    val_after: dict[str, float] | None = None
    mbls_history: dict[str, Any] | None = None
    reliability_png: str | None = None
    ece_measured: bool = False
    method: str = Field("ts", description="What was applied: ts, or mbls (an MbLS fine-tune, then TS).")
    candidates: list[dict[str, Any]] = Field(
        default_factory=list,
        description="With calibration.method auto: each candidate (name, margin, val accuracy/ECE/NLL after TS, "
        "eligible, chosen).",
    )
    reason: str | None = Field(None, description="Why this calibration was chosen (method auto).")


class ExportResult(StageResult):
    """Every requested artifact, failed ones included (``ok`` False, ``error`` says why)."""

    artifacts: list[Artifact]
    reference: Artifact | None = Field(
        None, description="The teacher's FP32 export, measured beside the artifacts; never bundled or recommended."
    )


class BenchmarkResult(StageResult):
    """One row per (device, accepted artifact)."""

    rows: list[BenchRow]
    reference_rows: list[BenchRow] = Field(default_factory=list, description="The teacher's reference, per device.")


class StageRecord(BaseModel):
    """A stage's wall time, whether it was reused, and its folder."""

    model_config = ConfigDict(extra="forbid")

    name: str
    seconds: float
    cached: bool
    output_dir: str | None = None
    key: str | None = None


class RunState(BaseModel):
    """``run.json``: what the report is built from, and what ``edgecompress bench RUN`` starts from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    version: int = RUN_STATE_VERSION
    config_hash: str
    stages: list[StageRecord]
    warnings: list[str] = Field(default_factory=list)
    data: DataResult
    teacher: TeacherResult
    search: SearchResult | None = None
    distill: DistillResult
    calibrate: CalibrateResult
    export: ExportResult
    benchmark: BenchmarkResult | None = None
    decide: DecideResult | None = None
    budget: BudgetResult | None = None

    def stage_dir(self, name: str) -> str | None:
        """The folder recorded for stage ``name`` (the last record of that name), or None."""
        for rec in reversed(self.stages):
            if rec.name == name:
                return rec.output_dir
        return None


class DecideResult(StageResult):
    """The decide stage (``assistants: auto`` / ``loss.kind: auto``): every trial on val and the choice, with why."""

    loss: dict[str, Any] = Field(description="The chosen LossConfig (kind ce: scratch won, no teacher).")
    ratios: list[float] | None = Field(
        None, description="The chosen assistants' MAC ratios, largest first ([]: direct); None keeps the config's."
    )
    scratch: bool = False
    reason: str
    trials: list[dict[str, Any]] = Field(
        default_factory=list,
        description="One per candidate: name, step (loss/chain), loss, ratios, val_accuracy, val_ece, val_nll, "
        "seconds, steps, chosen.",
    )
    trial_steps: int = Field(0, description="Optimizer steps of each model trained at the first rung.")
    subset: int = Field(0, description="Training samples the trials draw from.")
    final_steps: int = Field(0, description="Optimizer steps of the final student, for comparison.")
    seconds: float = 0.0
    ranking: list[str] = Field(default_factory=list, description="Every loss candidate, best first.")
    rungs: list[int] = Field(default_factory=list, description="Optimizer steps per model at each rung.")
    budget_steps: int = Field(0, description="Every optimizer step of the trials (range tests included).")


class BudgetResult(StageResult):
    """Compress to a budget (``target:``): the candidates measured before training, the fits, the choice, and the
    final artifact of each attempt measured on the target after training (filled in after the benchmark stage)."""

    device: str
    batch_size: int
    budgets: list[str]
    teacher_p50_ms: float | None = None
    candidates: list[Candidate]
    fits: list[LatencyFit]
    choice: Choice
    feasible: list[str] = Field(default_factory=list, description="'candidate pair' of every feasible probe, ranked.")
    measured_now: int = Field(0, description="Probes measured in this run (0 when all came from the latency cache).")
    notes: list[str] = Field(default_factory=list)
    verdicts: list[Verdict] = Field(default_factory=list, description="Filled after the benchmark stage.")


RunState.model_rebuild()  # its ``decide`` and ``budget`` fields name classes defined after it
