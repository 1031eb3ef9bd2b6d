"""The deployment half of the pipeline: export (+ evaluation through each runtime), benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import MissingExtraError
from edgecompress.pipeline.context import Context, metrics_of, predict_logits
from edgecompress.pipeline.train_stages import Trained

if TYPE_CHECKING:
    from edgecompress.data import Splits

log = logging.getLogger(__name__)


def run_through(art: Any, x: np.ndarray, max_batch: int) -> np.ndarray:
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


def stage_export(ctx: Context, splits: Splits, calibrated: Trained, calib_x: np.ndarray) -> list[dict[str, Any]]:
    """Export every configured format, parity-check it, evaluate it on test through its runtime.

    INT8 / FP16 artifacts whose ECE moved by more than ``calibration.refit_threshold`` get T re-fitted on val through
    their runtime and folded again (both results are kept). The accuracy gate (``export.max_accuracy_drop``, judged on
    val, never on test) lives in the export wrapper.
    """
    ecfg = ctx.cfg.export
    key = {
        "export": ecfg.model_dump(mode="json"),
        "model": calibrated.key,
        "data": splits.fingerprint(),
        "refit": ctx.cfg.calibration.model_dump(mode="json"),
    }
    sd = ctx.run.stage("export", key)
    with ctx.timed("export", sd.key, sd.done, str(sd.path)):
        if sd.done:
            return sd.result()["artifacts"]
        from edgecompress.export import ExportContract, export_all

        temperature = calibrated.record["temperature"]
        contract = ExportContract(
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            output_probabilities=ecfg.output_probabilities,
            dynamic_batch=ecfg.dynamic_batch,
            max_batch=ecfg.max_batch,
            opset=ecfg.opset,
            metadata=_metadata(ctx, splits, temperature),
        )
        has_val = splits.val is not None
        artifacts = export_all(
            calibrated.model,
            contract=contract,
            formats=ecfg.formats,
            calib_x=calib_x,
            out_dir=sd.path / "artifacts",
            cfg=ecfg,
            val_x=splits.val.x if has_val else None,
            val_y=splits.val.y if has_val else None,
            parity_x=(splits.val.x if has_val else calib_x)[:256],  # real inputs: top-1 on noise means little
        )
        reference = calibrated.record.get("val_after", {})
        student_test = predict_logits(calibrated.model, splits.test.x) if splits.test is not None else None
        rows = []
        for art in artifacts:
            rows.extend(_evaluate(ctx, splits, art, reference, student_test, sd.path))
        return sd.finish({"artifacts": rows})["artifacts"]


def _evaluate(
    ctx: Context, splits: Splits, art: Any, reference_val: dict[str, float], student_test: np.ndarray, out_dir: Path
) -> list[dict]:
    """Test metrics through the runtime; a re-fitted, re-folded twin when low precision moved ECE on val.

    A reliability diagram puts the FP32 student (T folded) beside the artifact (and its re-fitted twin, if any).
    """
    row = art.model_dump(mode="json")
    if splits.test is None:
        return [row]
    mb = ctx.cfg.export.max_batch
    try:
        test_logits = run_through(art, splits.test.x, mb)
    except MissingExtraError as exc:  # e.g. TensorRT: built and measured on the target device, not here
        row["note"] = f"not evaluated here: {exc.problem}; it is measured on a device that has the runtime"
        ctx.warn(f"{art.name}: {row['note']}")
        return [row]
    row["metrics"] = metrics_of(test_logits, splits.test.y)
    diagram = [("student FP32 (T folded)", student_test, splits.test.y), (art.name, test_logits, splits.test.y)]
    out = [row]
    ccfg = ctx.cfg.calibration
    if art.precision in ("int8", "fp16") and ccfg.refit_after_quantization and splits.val is not None and reference_val:
        val_logits = run_through(art, splits.val.x, mb)
        moved = abs(metrics_of(val_logits, splits.val.y)["ece"] - reference_val["ece"])
        row["val_ece_shift"] = moved
        if moved > ccfg.refit_threshold:
            from edgecompress.calibration import fit_temperature
            from edgecompress.export import rescale_output

            t_extra = fit_temperature(val_logits, splits.val.y)
            refit = rescale_output(art, 1.0 / t_extra, out_dir / "refit" / art.name)
            refit_row = refit.model_dump(mode="json")
            refit_logits = run_through(refit, splits.test.x, mb)
            refit_row["metrics"] = metrics_of(refit_logits, splits.test.y)
            refit_row.update(name=f"{art.name}-refit", refit_temperature=float(t_extra), refit_of=art.name)
            diagram.append((f"{art.name} (T re-fitted on val)", refit_logits, splits.test.y))
            out.append(refit_row)
    from edgecompress.calibration import reliability_diagram

    png = reliability_diagram(diagram, out_dir / "reliability" / f"{art.name}.png")
    for r in out:
        r["reliability_png"] = str(png)
    return out


def eval_subset(splits: Splits, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test samples (a stratified order is not needed: the test split is already shuffled)."""
    return splits.test.x[:n], splits.test.y[:n]


def stage_benchmark(
    ctx: Context,
    splits: Splits,
    artifacts: list[dict[str, Any]],
    export_key: str,
    *,
    devices: list[str] | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    bcfg = ctx.cfg.benchmark
    if devices is not None:
        bcfg = bcfg.model_copy(update={"devices": devices})
    key = {"benchmark": bcfg.model_dump(mode="json"), "export": export_key}
    sd = ctx.run.stage("benchmark", key)
    cached = sd.done and not force
    with ctx.timed("benchmark", sd.key, cached, str(sd.path)):
        if cached:
            return sd.result()["rows"]
        from edgecompress.devices import benchmark_artifacts

        if splits.test is None:
            ctx.warn("no labelled test data: device benchmarks measure latency only")
            x = np.zeros((max(bcfg.batch_sizes), *splits.input_shape), np.float32)
            y = None
        else:
            x, y = eval_subset(splits, bcfg.eval_samples)
        rows = benchmark_artifacts(artifacts, bcfg.devices, eval_x=x, eval_y=y, cfg=bcfg, workdir=sd.path)
        for row in rows:
            if not row.get("ok", True):
                ctx.warn(f"benchmark of {row.get('artifact')} on {row.get('device')} failed: {row.get('error')}")
        return sd.finish({"rows": rows})["rows"]
