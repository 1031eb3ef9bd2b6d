"""The last step of a run: the report (JSON, Markdown, HTML, plots) and one app bundle per artifact."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path
from typing import Any

from edgecompress.pipeline.context import Context
from edgecompress.pipeline.train_stages import Trained

log = logging.getLogger(__name__)

_METRIC_KEYS = ("accuracy", "ece", "nll", "brier", "adaptive_ece", "classwise_ece", "mce")


def _rel(ctx: Context, path: str | Path | None) -> str | None:
    if not path:
        return None
    return os.path.relpath(Path(path), ctx.run.root)


def _metrics(m: dict[str, Any] | None) -> dict[str, Any]:
    m = m or {}
    return {k: m.get(k) for k in _METRIC_KEYS}


def _latency(row: dict[str, Any]) -> dict[str, Any]:
    return {
        str(b): {k: v for k, v in s.items() if k in ("p50", "p90", "p99", "mean", "std")}
        for b, s in (row.get("latency_ms") or {}).items()
        if s and s.get("p50") is not None
    }


def chain_entries(teacher: Trained, distill: Trained, calibrated: Trained) -> list[dict[str, Any]]:
    """Report rows of the teacher, every assistant and the student (before and after its calibration)."""
    members = distill.record.get("chain", {}).get("members", [])
    by_name = {m.get("name"): m for m in members}
    if "teacher" not in by_name:  # data-free runs have no teacher hop record
        members = [{"name": "teacher", "role": "teacher", **teacher.record}, *members]
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
    cal = calibrated.record
    student = next((e for e in entries if e["role"] == "student"), None)
    if student is not None and cal.get("after"):
        student.update(_metrics(cal["after"]))
        student["temperature"] = cal["temperature"]
        student["ece_before_ts"] = cal["before"]["ece"]
        student["nll_before_ts"] = cal["before"]["nll"]
        student["notes"] = ["metrics after temperature scaling (T folded into the exported graph)"]
        student["reliability_png"] = cal.get("reliability_png")
    if not cal.get("ece_measured", True) and student is not None:
        student["notes"] = ["ECE not measured (no labelled val set)"]
    return entries


def artifact_entries(
    artifacts: list[dict[str, Any]], bench: list[dict[str, Any]], temperature: float, device: str
) -> list[dict[str, Any]]:
    rows = {(r.get("device"), r.get("artifact")): r for r in bench}
    out = []
    for a in artifacts:
        r = rows.get((device, a["name"]), {})
        notes = []
        if a.get("note"):
            notes.append(a["note"])
        if a.get("refit_of"):
            notes.append(f"T re-fitted through the runtime: extra factor 1/{a['refit_temperature']:.3f}")
        info = a.get("info") or {}
        out.append(
            {
                "name": a["name"],
                "role": "artifact",
                "format": a["format"],
                "precision": a["precision"],
                "params": None,
                "macs": None,
                "size_bytes": a.get("size_bytes"),
                **_metrics(a.get("metrics")),
                "temperature": temperature * a.get("refit_temperature", 1.0),
                "latency_ms": _latency(r),
                "device": device if r else None,
                "parity_max_abs_diff": a.get("parity_max_abs_diff"),
                "throughput": _largest(r.get("throughput")),
                "energy_mj": r.get("energy_mj_per_inference"),
                "runtime": a.get("runtime"),
                "notes": notes,
                "precision_used": r.get("inference_precision") or info.get("runtime_info", {}).get("precision"),
                "parent": a.get("refit_of") or "student",
                "reliability_png": a.get("reliability_png"),
            }
        )
    return out


def _largest(throughput: dict[str, Any] | None) -> float | None:
    if not throughput:
        return None
    return throughput[max(throughput, key=lambda b: int(b))]


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
