"""The teacher's reference artifact: the calibrated teacher exported to ONNX FP32 and measured on every device beside
the student's artifacts, so the speed-up the headline states is measured in the same run, on the same device.

A reference is never bundled and never recommended (it lives in ``ExportResult.reference`` and
``BenchmarkResult.reference_rows``, apart from the shipped artifacts), and it never fails the run: when its export,
its evaluation or its benchmark fails, the reason is recorded and the headline says the speed-up was not measured and
why.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.pipeline.context import Context, metrics_of
from edgecompress.pipeline.results import DistillResult, ExportResult

if TYPE_CHECKING:
    from edgecompress.data import Splits
    from edgecompress.devices.config import BenchmarkConfig
    from edgecompress.export import Artifact, ExportContract
    from edgecompress.measurements import BenchRow
    from edgecompress.report import Report

log = logging.getLogger(__name__)

FORMAT = "onnx:fp32"
NAME = "teacher-onnx-fp32"
FOLDER = "reference"  # inside the export stage's folder
REFERENCE_VAL = 1000  # val images that check the reference's export (the demo's teacher: ~8 s per 1,000 on 2 cores)


def teacher_temperature(ctx: Context) -> float:
    """The temperature the teacher was scaled with before it taught (1.0 when it was not, e.g. data-free runs)."""
    members = ctx.result("distill", DistillResult).chain.get("members", [])
    first = members[0] if members else {}
    t = first.get("temperature") if first.get("role") == "teacher" else None
    return float(t) if isinstance(t, int | float) and t > 0 else 1.0


def _failed(why: str) -> Artifact:
    from edgecompress.export import Artifact

    fmt, precision = FORMAT.split(":")
    return Artifact(name=NAME, format=fmt, precision=precision, files=[], model_file=None, runtime="onnxruntime",
                    ok=False, failure=why)  # fmt: skip


def export_reference(ctx: Context, splits: Splits, contract: ExportContract, out_dir: Path) -> Artifact:
    """The calibrated teacher (its T folded in) as ONNX FP32 in ``out_dir``, evaluated on test through ONNX Runtime.

    Never raises: any failure (the teacher cannot be folded, exported or run) is a failed artifact with its reason.
    """
    from edgecompress.export import export_all
    from edgecompress.pipeline.deploy_stages import run_through
    from edgecompress.pipeline.train_stages import fold_with_shape

    ecfg = ctx.cfg.export
    has_val = splits.val is not None and len(splits.val.y) > 0
    try:
        t = teacher_temperature(ctx)
        model = fold_with_shape(ctx.models["teacher"], t, splits.input_shape)
        meta = {**contract.metadata, "temperature": t, "edgecompress.reference": "teacher (never shipped)"}
        art = export_all(
            model,
            contract=dataclasses.replace(contract, metadata=meta),
            formats=[FORMAT],
            calib_x=None,
            out_dir=out_dir,
            cfg=ecfg.model_copy(update={"formats": [FORMAT]}),
            # the reference is never gated or shipped: a val sample checks its export (the headline reads test)
            val_x=np.asarray(splits.val.x[:REFERENCE_VAL]) if has_val else None,
            val_y=splits.val.y[:REFERENCE_VAL] if has_val else None,
            parity_x=np.asarray(splits.val.x[:256]) if has_val else None,
        )[0].model_copy(update={"name": NAME})
        if art.ok and splits.test is not None:
            logits = run_through(art, splits.test.x, ecfg.max_batch)
            art = art.model_copy(update={"test_metrics": metrics_of(logits, splits.test.y)})
    except Exception as exc:  # noqa: BLE001 — a reference must never stop the run; the reason goes to the headline
        log.debug("the teacher's reference export failed", exc_info=True)
        art = _failed(str(exc) if isinstance(exc, EdgeCompressError) else f"{type(exc).__name__}: {exc}")
    if not art.ok:
        _unmeasured(ctx, f"the teacher's FP32 reference was not exported ({art.failure})")
    return art


def _unmeasured(ctx: Context, why: str, where: str = "") -> None:
    """One warning: why the speed-up over the teacher is not measured (the headline says it too)."""
    ctx.warn(f"{why}: the speed-up over the teacher is not measured{where}")


def vetted(ctx: Context) -> Artifact | None:
    """The export's reference when it was exported and its files lie in its own folder of the export stage."""
    ref = ctx.result("export", ExportResult).reference
    if ref is None or not ref.ok or ref.model_file is None:
        return None
    folder = next((Path(r.output_dir) for r in reversed(ctx.stages) if r.name == "export" and r.output_dir), None)
    base = (folder / FOLDER).resolve() if folder else None
    if base is None or not all(base in Path(f).resolve().parents for f in [ref.model_file, *ref.files]):
        ctx.warn(f"{ref.name}: its recorded files are not in its own export folder (an edited run record?); "
                 "not benchmarked")  # fmt: skip
        return None
    return ref


def benchmark_reference(
    ctx: Context, *, eval_x: np.ndarray | None, eval_y: np.ndarray | None, cfg: BenchmarkConfig, workdir: Path,
    num_classes: int,
) -> list[BenchRow]:  # fmt: skip
    """The teacher's reference on every device, measured like the shipped artifacts; a failure is a row, not a stop."""
    from edgecompress.devices import benchmark_artifacts

    ref = vetted(ctx)
    if ref is None:
        return []
    rows = benchmark_artifacts([ref], cfg.devices, eval_x=eval_x, eval_y=eval_y, cfg=cfg, workdir=workdir,
                               num_classes=num_classes)  # fmt: skip
    for row in (r for r in rows if not r.ok):
        _unmeasured(ctx, f"the teacher's reference failed on {row.device} ({row.error})", " there")
    return rows


def reference_note(ctx: Context) -> str | None:
    """Why the teacher has no reference measurement, for the headline (None when it was exported)."""
    ref = ctx.result("export", ExportResult).reference
    if ref is None:
        return "the export stage made no teacher reference (a run record from an earlier version)"
    return None if ref.ok else f"the teacher's FP32 export failed: {ref.failure}"


def with_headline(ctx: Context, report: Report) -> Report:
    """``report`` with its headline: the bundle folders it names are those the bundles stage writes."""
    from edgecompress.report.headline import build_headline

    bundle = ctx.cfg.bundle
    bundles = {
        a.name: f"bundles/{a.name}"
        for a in ctx.result("export", ExportResult).artifacts
        if bundle.enabled and a.ok and bundle.selects(a.name, a.format, a.precision)
    }
    headline = build_headline(report, bundles=bundles, reference_note=reference_note(ctx))
    return report.model_copy(update={"headline": headline})


def reference_entries(ctx: Context, rows: list[BenchRow], device: str) -> list[dict[str, Any]]:
    """The report's row of the teacher's reference artifact (size, whole-test metrics, latency on ``device``)."""
    from edgecompress.pipeline import entries
    from edgecompress.pipeline.results import TeacherResult

    ref = ctx.result("export", ExportResult).reference
    if ref is None:
        return []
    teacher = ctx.result("teacher", TeacherResult)
    (entry,) = entries.artifact_entries([ref], rows, teacher_temperature(ctx), device)
    note = "reference: the calibrated teacher in ONNX FP32, measured beside the shipped artifacts; never shipped"
    notes = [n for n in entry["notes"] if not n.startswith("export failed, not shipped")]
    if not ref.ok:
        notes.append(f"export failed: {ref.failure}")
    entry.update(parent="teacher", params=teacher.params, macs=teacher.macs, reference=True, notes=[note, *notes])
    return [entry]
