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
from edgecompress.pipeline.results import CalibrateResult, DistillResult, TeacherResult

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
            }
        )
    student = next((e for e in entries if e["role"] == "student"), None)
    if student is not None and cal.after and cal.before:
        student.update(_metrics(cal.after))
        student["temperature"] = cal.temperature
        student["ece_before_ts"] = cal.before["ece"]
        student["nll_before_ts"] = cal.before["nll"]
        student["notes"] = ["metrics after temperature scaling (T folded into the exported graph)"]
        student["reliability_png"] = cal.reliability_png
    if not cal.ece_measured and student is not None:
        student["notes"] = ["ECE not measured (no labelled val set)"]
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
            notes.append(f"export failed, not shipped: {a.error}")
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
