"""What the accuracy-aware INT8 step records on an artifact (pydantic only, so :mod:`artifact` stays light).

One :class:`Int8Recovery` per INT8 artifact that missed ``export.max_accuracy_drop`` with plain post-training
quantization: the layers ranked by sensitivity, every step tried (plain PTQ, mixed precision with k layers float,
QAT with distillation) with its val accuracy and speed against FP32, and what shipped. The report shows it as a
decision (:meth:`Int8Recovery.decision`) and a one-line note (:meth:`Int8Recovery.summary`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LayerSensitivity(_Record):
    """One quantized layer's local INT8 error on calibration data: ``||y - y_q||² / ||y||²`` of its output when its
    input activation and weights are quantized as the INT8 graph quantizes them (everything else exact)."""

    name: str
    op_type: str
    error: float = Field(description="Noise-to-signal ratio of the layer's output (0 = exact).")


class RecoveryStep(_Record):
    """One candidate tried, in order."""

    kind: Literal["ptq", "mixed", "qat"]
    val_accuracy: float | None = None
    within_gate: bool = False
    float_layers: list[str] = Field(default_factory=list, description="Compute layers not run in INT8.")
    speedup: float | None = Field(None, description="FP32 latency / this candidate's, same runtime, paired rounds.")
    seconds: float = 0.0
    note: str = ""


class Int8Recovery(_Record):
    """The accuracy-aware INT8 step of one artifact: ranking, steps, choice."""

    runtime: str
    fp32_val_accuracy: float
    max_accuracy_drop: float
    min_speedup: float
    layers: int = Field(description="Compute layers the plain INT8 graph quantizes.")
    ranking: list[LayerSensitivity] = Field(default_factory=list, description="Most sensitive first (top 20).")
    steps: list[RecoveryStep] = Field(default_factory=list)
    chosen: Literal["mixed", "qat"] | None = None
    float_layers: list[str] = Field(default_factory=list, description="Layers kept float in what shipped.")
    speedup: float | None = None
    speed_setup: str = ""

    def shipped(self) -> RecoveryStep | None:
        """The step that shipped (the last one of the chosen kind), or None."""
        return next((s for s in reversed(self.steps) if s.kind == self.chosen and s.within_gate), None)

    def summary(self) -> str:
        """One line: what plain INT8 lost and what shipped instead (or that nothing held the gate)."""
        ptq = self.steps[0] if self.steps and self.steps[0].kind == "ptq" else None
        lost = ""
        if ptq is not None and ptq.val_accuracy is not None:
            lost = f"plain INT8 lost {100 * (self.fp32_val_accuracy - ptq.val_accuracy):.1f} points on val; "
        shipped = self.shipped()
        if shipped is None:
            tried = "; ".join(t for t in (self._best("mixed"), self._best("qat")) if t)
            return f"INT8 recovery: {lost}nothing shipped" + (f": {tried}" if tried else "")
        kind = "mixed precision" if shipped.kind == "mixed" else "QAT with distillation from the FP32 model"
        floats = shipped.float_layers
        what = f"{kind}, {len(floats)} of {self.layers} layers float" + (f" ({', '.join(floats)})" if floats else "")
        speed = f", {shipped.speedup:.2f}x FP32 speed ({self.speed_setup})" if shipped.speedup is not None else ""
        return f"INT8 recovery: {lost}shipped {what}: val {100 * (shipped.val_accuracy or 0):.2f} %{speed}"

    def _best(self, kind: str) -> str:
        """What the best candidate of ``kind`` reached, for a recovery that shipped nothing ('' if none ran)."""
        steps = [s for s in self.steps if s.kind == kind and s.val_accuracy is not None]
        if not steps:
            return ""
        best = max(steps, key=lambda s: (s.within_gate, s.val_accuracy or 0.0))
        name = f"mixed precision ({len(best.float_layers)} layers float)" if kind == "mixed" else "QAT"
        if not best.within_gate:
            return f"{name} reached {100 * (best.val_accuracy or 0):.2f} %, outside the gate"
        speed = f" at {best.speedup:.2f}x FP32 speed" if best.speedup is not None else ""
        return f"{name} held the gate{speed}, not faster than FP32"

    def decision(self, artifact: str) -> dict[str, Any]:
        """The report's decision entry (``report.schema.Decision`` fields) for ``artifact``."""
        rows = [
            {
                "name": f"{s.kind}" + (f" ({len(s.float_layers)} float)" if s.kind == "mixed" else ""),
                "step": "int8",
                "val_accuracy": s.val_accuracy,
                "seconds": round(s.seconds, 2),
                "chosen": s is self.shipped(),
                "note": "; ".join(
                    p
                    for p in (
                        f"{s.speedup:.2f}x FP32" if s.speedup is not None else "",
                        "within the gate" if s.within_gate else "misses the gate",
                        s.note,
                    )
                    if p
                ),
            }
            for s in self.steps
        ]
        ranked = ", ".join(f"{r.name} ({r.error:.3g})" for r in self.ranking[:8])
        speed = (
            f"mixed precision must also reach {self.min_speedup:g}x FP32 speed, else QAT runs"
            if self.min_speedup > 0
            else "mixed precision ships at any speed (min_speedup 0)"
        )
        notes = [
            f"Gate: val accuracy at most {100 * self.max_accuracy_drop:.1f} points below FP32 "
            f"({100 * self.fp32_val_accuracy:.2f} %) through {self.runtime}; {speed}.",
            f"Most sensitive layers (local INT8 noise-to-signal on calibration data): {ranked}" if ranked else "",
            f"Speed: {self.speed_setup}." if self.speed_setup else "",
        ]
        return {
            "title": f"INT8 accuracy recovery: {artifact}",
            "reason": self.summary(),
            "rows": rows,
            "notes": [n for n in notes if n],
        }
