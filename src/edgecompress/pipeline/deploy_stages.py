"""The deployment half of the pipeline as stages: export (+ evaluation through each runtime), benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import MissingExtraError
from edgecompress.pipeline import reference
from edgecompress.pipeline.context import Context, Stage, metrics_of, predict_logits
from edgecompress.pipeline.results import BenchmarkResult, CalibrateResult, DataResult, DistillResult, ExportResult
from edgecompress.pipeline.rundir import StageDir

if TYPE_CHECKING:
    from edgecompress.data import Splits
    from edgecompress.export import Artifact

log = logging.getLogger(__name__)


def run_through(art: Artifact, x: np.ndarray, max_batch: int) -> np.ndarray:
    """Logits of an artifact on ``x``, computed by the artifact's own runtime at its stated precision."""
    from edgecompress.export import run_artifact

    return run_artifact(art.runtime, art.model_file, x, art.precision, max_batch)[0]


def _metadata(ctx: Context, splits: Splits, temperature: float) -> dict[str, Any]:
    from edgecompress._io import sha256_json

    return {
        "temperature": temperature,
        "temperature_folded": True,
        "labels": splits.labels,
        "preprocessing": splits.preprocess.model_dump(mode="json"),
        "config_hash": sha256_json(ctx.cfg.model_dump(mode="json"))[:16],
        "run_name": ctx.cfg.name,
    }


def calib_inputs(ctx: Context) -> np.ndarray:
    """INT8 calibration data: the calib split, or in data-free runs the synthesized transfer set."""
    splits = ctx.splits
    if splits is not None and splits.calib is not None:
        return np.asarray(splits.calib.x)
    bank = ctx.result("distill", DistillResult).bank
    if bank is None:
        from edgecompress.errors import DataError

        raise DataError("no calibration data for INT8", "give a dataset with a calib split or use data-free mode")
    return np.load(bank, allow_pickle=False)


def _export_key(ctx: Context) -> dict[str, Any]:
    return {
        "export": ctx.cfg.export.model_dump(mode="json"),
        "model": ctx.keys["calibrate"],
        "data": ctx.keys["data"],
        "refit": ctx.cfg.calibration.model_dump(mode="json"),
        "reference": reference.FORMAT,  # the teacher's reference artifact is made here too
    }


def _export_compute(ctx: Context, sd: StageDir) -> ExportResult:
    """Export every configured format, parity-check it, evaluate it on test through its runtime.

    INT8 / FP16 artifacts whose ECE moved by more than ``calibration.refit_threshold`` get T re-fitted on val through
    their runtime and folded again (both results are kept). A format that fails (its exporter, its parity diagnostic
    or its accuracy gate on val) is recorded as failed with the reason; the other formats go on.
    """
    from edgecompress.export import ExportContract, export_all

    ecfg = ctx.cfg.export
    splits = ctx.splits
    assert splits is not None
    calibrated = ctx.models["calibrated"]
    cal = ctx.result("calibrate", CalibrateResult)
    calib_x = calib_inputs(ctx)
    contract = ExportContract.from_config(
        ecfg,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        metadata=_metadata(ctx, splits, cal.temperature),
    )
    has_val = splits.val is not None
    artifacts = export_all(
        calibrated,
        contract=contract,
        formats=ecfg.formats,
        calib_x=calib_x,
        out_dir=sd.path / "artifacts",
        cfg=ecfg,
        val_x=np.asarray(splits.val.x) if has_val else None,
        val_y=splits.val.y if has_val else None,
        parity_x=np.asarray((splits.val.x if has_val else calib_x)[:256]),  # real inputs: top-1 on noise means little
    )
    student_test = predict_logits(calibrated, splits.test.x) if splits.test is not None else None
    rows: list[Artifact] = []
    for art in artifacts:
        if not art.ok:
            ctx.warn(f"export of {art.name} failed and is not shipped: {art.failure}")
            rows.append(art)
            continue
        rows.extend(_evaluate(ctx, splits, art, cal.val_after or {}, student_test, sd.path))
    ref = reference.export_reference(ctx, splits, contract, sd.path / reference.FOLDER)
    return ExportResult(artifacts=rows, reference=ref)


def _evaluate(
    ctx: Context,
    splits: Splits,
    art: Artifact,
    reference_val: dict[str, float],
    student_test: np.ndarray | None,
    out_dir: Path,
) -> list[Artifact]:
    """Test metrics through the runtime; a re-fitted, re-folded twin when low precision moved ECE on val.

    A reliability diagram puts the FP32 student (T folded) beside the artifact (and its re-fitted twin, if any).
    """
    if splits.test is None or student_test is None:
        return [art]
    mb = ctx.cfg.export.max_batch
    try:
        test_logits = run_through(art, splits.test.x, mb)
    except MissingExtraError as exc:  # e.g. TensorRT: built and measured on the target device, not here
        note = f"not evaluated here: {exc.problem}; it is measured on a device that has the runtime"
        ctx.warn(f"{art.name}: {note}")
        return [art.model_copy(update={"note": note})]
    art = art.model_copy(update={"test_metrics": metrics_of(test_logits, splits.test.y)})
    diagram = [("student FP32 (T folded)", student_test, splits.test.y), (art.name, test_logits, splits.test.y)]
    out = [art]
    ccfg = ctx.cfg.calibration
    if art.precision in ("int8", "fp16") and ccfg.refit_after_quantization and splits.val is not None and reference_val:
        val_ece = (art.val_metrics or {}).get("ece")
        val_logits = None
        if val_ece is None:  # not measured by the export gate (no val there): measure it here
            val_logits = run_through(art, splits.val.x, mb)
            val_ece = metrics_of(val_logits, splits.val.y)["ece"]
        moved = abs(val_ece - reference_val["ece"])
        out[0] = art = art.model_copy(update={"val_ece_shift": moved})
        if moved > ccfg.refit_threshold:
            if val_logits is None:
                val_logits = run_through(art, splits.val.x, mb)
            from edgecompress.calibration import fit_temperature
            from edgecompress.errors import ExportError
            from edgecompress.export import rescale_output

            t_extra = float(fit_temperature(val_logits, splits.val.y))
            try:
                refit = rescale_output(art, 1.0 / t_extra, out_dir / "refit" / art.name)
            except ExportError as exc:  # e.g. executorch / ort: no in-place edit; the artifact itself stays
                note = (
                    f"val ECE moved by {moved:.4f} (threshold {ccfg.refit_threshold:g}); a re-fitted T = {t_extra:.3f} "
                    f"was not folded in ({exc})"
                )
                ctx.warn(f"{art.name}: {note}")
                out[0] = art.model_copy(update={"note": note})
            else:
                refit_logits = run_through(refit, splits.test.x, mb)
                refit = refit.model_copy(
                    update={
                        "name": f"{art.name}-refit",
                        "test_metrics": metrics_of(refit_logits, splits.test.y),
                        "refit_temperature": t_extra,
                        "refit_of": art.name,
                    }
                )
                diagram.append((f"{art.name} (T re-fitted on val)", refit_logits, splits.test.y))
                out.append(refit)
    from edgecompress.calibration import reliability_diagram

    png = reliability_diagram(diagram, out_dir / "reliability" / f"{art.name}.png")
    return [a.model_copy(update={"reliability_png": png}) for a in out]


EXPORT = Stage("export", ExportResult, key=_export_key, compute=_export_compute)


def eval_subset(splits: Splits, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test samples (a stratified order is not needed: the test split is already shuffled)."""
    assert splits.test is not None
    return np.asarray(splits.test.x[:n]), splits.test.y[:n]


def _benchmark_key(ctx: Context) -> dict[str, Any]:
    from edgecompress.devices.profiles import profile_contents

    bcfg = ctx.cfg.benchmark
    profiles = profile_contents(bcfg.devices, [bcfg.profiles_dir])  # the contents: an edited profile is measured anew
    return {"benchmark": bcfg.model_dump(mode="json"), "profiles": profiles, "export": ctx.keys["export"]}


def _benchmark_compute(ctx: Context, sd: StageDir) -> BenchmarkResult:
    from edgecompress.devices import benchmark_artifacts

    bcfg = ctx.cfg.benchmark
    data = ctx.result("data", DataResult)
    artifacts = [a for a in ctx.result("export", ExportResult).artifacts if a.ok]  # a failed format is never measured
    x: np.ndarray | None
    y: np.ndarray | None
    if ctx.splits is not None and ctx.splits.test is not None:
        x, y = eval_subset(ctx.splits, bcfg.eval_samples)
    elif ctx.eval_data is not None:  # `edgecompress bench RUN`: the images shipped before, from inside the run
        x, y = ctx.eval_data[0][: bcfg.eval_samples], ctx.eval_data[1][: bcfg.eval_samples]
    else:
        ctx.warn("no labelled test data: device benchmarks measure latency only")
        x, y = np.zeros((max(bcfg.batch_sizes), *data.input_shape), np.float32), None
    rows = benchmark_artifacts(
        artifacts, bcfg.devices, eval_x=x, eval_y=y, cfg=bcfg, workdir=sd.path, num_classes=data.num_classes
    )
    for row in rows:
        if not row.ok:
            ctx.warn(f"benchmark of {row.artifact} on {row.device} failed: {row.error}")
        elif row.unstable:
            worst = max(row.latency_cv.values())
            ctx.warn(
                f"latency of {row.artifact} on {row.device} is unstable (run-to-run p50 spread {100 * worst:.0f} %): "
                "its ranking may not hold; rerun the benchmark on a quiet device"
            )
    ref_rows = reference.benchmark_reference(ctx, eval_x=x, eval_y=y, cfg=bcfg, workdir=sd.path / reference.FOLDER,
                                             num_classes=data.num_classes)  # fmt: skip
    return BenchmarkResult(rows=rows, reference_rows=ref_rows)


BENCHMARK = Stage("benchmark", BenchmarkResult, key=_benchmark_key, compute=_benchmark_compute)
