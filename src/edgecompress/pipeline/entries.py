"""The report's model entries: one row per chain member (teacher, assistants, student) and per exported artifact."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

from edgecompress.export import Artifact
from edgecompress.measurements import BenchRow
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.results import CalibrateResult, DecideResult, DistillResult, TeacherResult

log = logging.getLogger(__name__)

_METRIC_KEYS = ("accuracy", "ece", "nll", "brier", "adaptive_ece", "classwise_ece", "mce")


def rel(ctx: Context, path: str | Path | None) -> str | None:
    if not path:
        return None
    return os.path.relpath(Path(path), ctx.run.root)


def _metrics(m: dict[str, Any] | None) -> dict[str, Any]:
    m = m or {}
    return {k: m.get(k) for k in _METRIC_KEYS}


def chain_entries(teacher: TeacherResult, distill: DistillResult, cal: CalibrateResult) -> list[dict[str, Any]]:
    """Report rows of the teacher, every assistant and the student (before and after its calibration)."""
    members = distill.chain.get("members", [])
    by_name = {m.get("name"): m for m in members}
    if "teacher" not in by_name:  # data-free runs have no teacher hop record
        record = {"name": "teacher", "role": "teacher", "params": teacher.params, "macs": teacher.macs}
        members = [record | (teacher.test or {}), *members]
    entries = []
    for m in members:
        entries.append(
            {
                "name": m["name"],
                "role": m["role"],
                "format": "pytorch",
                "precision": "fp32",
                "params": m.get("params"),
                "macs": m.get("macs"),
                "size_bytes": None,
                "accuracy": m.get("accuracy"),
                "ece": m.get("ece_after", m.get("ece")),
                "nll": m.get("nll"),
                "brier": m.get("brier"),
                "temperature": m.get("temperature"),
                "ece_before_ts": m.get("ece_before"),
                "fidelity_agreement": m.get("fidelity_agreement"),
                "fidelity_kl": m.get("fidelity_kl"),
                "device": "host",
                "parent": m.get("teacher"),
                "notes": [n for n in [(m.get("teacher_precision") or {}).get("note"), m.get("note")] if n],
            }
        )
    student = next((e for e in entries if e["role"] == "student"), None)
    if student is not None and cal.after and cal.before:
        student.update(_metrics(cal.after))
        student["temperature"] = cal.temperature
        student["ece_before_ts"] = cal.before["ece"]
        student["nll_before_ts"] = cal.before["nll"]
        student["notes"].append("metrics after temperature scaling (T folded into the exported graph)")
        student["reliability_png"] = cal.reliability_png
    if not cal.ece_measured and student is not None:
        student["notes"].append("ECE not measured (no labelled val set)")
    base = distill.scratch_baseline or {}
    if student is not None and base.get("shipped") and not base.get("same_as_student"):
        # the distilled student lost to the same student trained on labels: the row is the shipped (scratch) model
        distilled = (members[-1].get("teacher_precision") or {}).get("note")  # not the shipped model's
        student.update(parent=None, fidelity_agreement=None, fidelity_kl=None)
        student["notes"] = [*(n for n in student["notes"] if n != distilled), "trained on labels alone (the scratch "
                            "baseline beat the distilled student on val and was shipped)"]  # fmt: skip
    return entries


def artifact_entries(
    artifacts: list[Artifact], bench: list[BenchRow], temperature: float, device: str
) -> list[dict[str, Any]]:
    """Report rows of the exported artifacts, with their latency on ``device``; failed exports say why."""
    rows = {(r.device, r.artifact): r for r in bench}
    out = []
    for a in artifacts:
        r = rows.get((device, a.name))
        notes = [a.note] if a.note else []
        if a.refit_of and a.refit_temperature:
            notes.append(f"T re-fitted through the runtime: extra factor 1/{a.refit_temperature:.3f}")
        if not a.ok:
            notes.append(f"export failed, not shipped: {a.failure}")
        out.append(
            {
                "name": a.name,
                "role": "artifact",
                "format": a.format,
                "precision": a.precision,
                "params": None,
                "macs": None,
                "size_bytes": a.size_bytes if a.ok else None,
                **_metrics(a.test_metrics),
                "temperature": temperature * (a.refit_temperature or 1.0),
                "latency_ms": {str(b): s.model_dump() for b, s in r.latency_ms.items()} if r and r.ok else {},
                "device": device if r else None,
                "parity_max_abs_diff": a.parity_max_abs_diff,
                "throughput": r.throughput_at() if r else None,
                "energy_mj": r.energy_at() if r else None,
                "runtime": a.runtime,
                "notes": notes,
                "precision_used": (r.inference_precision if r else None)
                or (a.info.get("runtime_info") or {}).get("precision"),
                "parent": a.refit_of or "student",
                "reliability_png": str(a.reliability_png) if a.reliability_png else None,
            }
        )
    return out


def environment() -> dict[str, Any]:
    from importlib import metadata

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    for pkg in ("torch", "onnx", "onnxruntime", "openvino", "nncf", "torch-pruning", "executorch", "tensorrt"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[pkg] = metadata.version(pkg)
    return env


def decision_entries(decide: DecideResult | None, distill: DistillResult, cal: CalibrateResult) -> list[dict[str, Any]]:
    """The report's decisions: 'Why this chain' (the decide stage's trials) and 'Calibration' (method auto)."""
    out: list[dict[str, Any]] = []
    if decide is not None:
        keys = ("name", "step", "val_accuracy", "val_ece", "val_nll", "seconds", "steps", "chosen")
        rungs = " → ".join(str(s) for s in decide.rungs) or str(decide.trial_steps)
        share = decide.budget_steps / decide.final_steps if decide.final_steps else 0.0
        notes = [
            f"Successive halving: {rungs} optimizer steps per model at each rung (the best third promoted), with the "
            f"final run's augmentation, same seed; {decide.budget_steps} trial steps in all, {100 * share:.0f} % of "
            f"the final student's {decide.final_steps}. The trials took {decide.seconds:.1f} s."
        ]
        if decide.ranking:
            notes.append("Ranking: " + " > ".join(decide.ranking) + ".")
        if decide.scratch:
            notes.append("No teacher loss was a candidate: the shipped student is trained on labels (loss ce).")
        out.append({"title": "Why this chain", "reason": decide.reason, "notes": notes,
                    "rows": [{k: t.get(k) for k in keys} for t in decide.trials]})  # fmt: skip
    if cal.candidates:
        rows = [
            {
                "name": c["name"],
                "step": "calibration",
                "val_accuracy": c["val_accuracy"],
                "val_ece": c["val_ece"],
                "val_nll": c["val_nll"],
                "chosen": c["chosen"],
                "note": c.get("note") or f"T={c['temperature']:.3f}",
            }  # fmt: skip
            for c in cal.candidates
        ]
        out.append(
            {
                "title": "Calibration",
                "reason": cal.reason or "",
                "rows": rows,
                "notes": ["Val metrics after temperature scaling fitted on val (the same for every candidate)."],
            }
        )
    return out


def scratch_baseline_entry(distill: DistillResult) -> dict[str, Any] | None:
    """The scratch baseline (labels only, final budget) beside the shipped student, or None when not trained."""
    b = distill.scratch_baseline
    if b is None:
        return None
    members = distill.chain.get("members", [])
    distilled = members[-1] if members else {}
    shipped = bool(b.get("shipped"))
    base_test = (b.get("test") or {}).get("accuracy")
    return {
        "baseline_val_accuracy": b.get("val_accuracy"),
        "baseline_test_accuracy": base_test,
        "student_val_accuracy": distill.student_val_accuracy,
        "student_test_accuracy": base_test if shipped else distilled.get("accuracy"),
        "distilled_val_accuracy": distilled.get("val_accuracy"),
        "distilled_test_accuracy": distilled.get("accuracy"),
        "shipped": "baseline" if shipped and not b.get("same_as_student") else "student",
        "same_model": bool(b.get("same_as_student")),
        **{
            k: b.get(k)
            for k in ("difference", "stderr", "n", "significant", "test_difference", "test_stderr", "reason")
        },
    }
