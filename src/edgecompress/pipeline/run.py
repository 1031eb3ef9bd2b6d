"""Orchestration: run the stages in order, each cached by content, then write the report and bundles."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress._io import atomic_write_json, atomic_write_text, sha256_json
from edgecompress.config import PipelineConfig, dump_config, load_config
from edgecompress.errors import ConfigError, DeviceError
from edgecompress.pipeline import deploy_stages as deploy
from edgecompress.pipeline import finish
from edgecompress.pipeline import train_stages as train
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.rundir import RunDir, reroot

log = logging.getLogger(__name__)

PRESETS = ("digits", "fashion_mnist")
STATE = "run.json"
ECE_SLACK = 0.01  # how much worse than the FP32 student's ECE a recommended artifact may be


def preset_path(name: str) -> Path:
    """Path of a shipped example config (the files under ``examples/`` in the repository)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", f"use one of {', '.join(PRESETS)}")
    return Path(str(resources.files("edgecompress.pipeline").joinpath("presets", f"{name}.yaml")))


def run_pipeline(
    cfg: PipelineConfig, out: str | Path, *, until: str | None = None, progress: bool = True
) -> dict[str, Path]:
    """Run every stage of ``cfg`` into the run directory ``out``; returns the paths of the report files.

    Finished stages are reused (their folders are addressed by a hash of their config and inputs); a stage that was
    interrupted resumes from its own checkpoints.
    """
    check_devices(cfg.benchmark.devices, cfg.benchmark.profiles_dir)  # fail before any work, not after training
    run = RunDir(out)
    run.prepare()
    import torch

    torch.manual_seed(cfg.seed)
    atomic_write_text(run.root / "config.resolved.yaml", dump_config(cfg))
    ctx = Context(cfg=cfg, run=run, progress=progress)

    splits = train.stage_data(ctx)
    teacher = train.stage_teacher(ctx, splits)
    if until == "teacher" or until == "data":
        return {}
    student = train.stage_distill(ctx, splits, teacher)
    if until == "distill":
        return {}
    calibrated = train.stage_calibrate(ctx, splits, student)
    if until == "calibrate":
        return {}
    # INT8 calibration data: the calib split, or in data-free runs the synthesized transfer set
    calib_x = splits.calib.x if splits.calib is not None else np.load(student.record["bank"])
    artifacts = deploy.stage_export(ctx, splits, calibrated, calib_x)
    export_key = ctx.stages[-1]["output_dir"]
    if until == "export":
        return {}
    bench = deploy.stage_benchmark(ctx, splits, artifacts, export_key)
    state = {
        "config_hash": sha256_json(cfg.model_dump(mode="json")),
        "teacher": teacher.record,
        "distill": student.record,
        "distill_spec": student.spec,
        "calibrate": calibrated.record,
        "artifacts": artifacts,
        "benchmark": bench,
        "export_key": export_key,
        "stages": ctx.stages,
        "warnings": ctx.warnings,
    }
    atomic_write_json(run.root / STATE, state)
    return _finish(ctx, teacher, student, calibrated, artifacts, bench)


def check_devices(devices: list[str], profiles_dir: Path | None) -> None:
    """Load every device profile and build its transport (no connection): a bad profile fails in one line now."""
    from edgecompress.devices.profiles import load_profile
    from edgecompress.devices.transports import make_transport

    for name in devices:
        make_transport(load_profile(name, [profiles_dir]))


def _finish(
    ctx: Context,
    teacher: Any,
    student: Any,
    calibrated: Any,
    artifacts: list[dict[str, Any]],
    bench: list[dict[str, Any]],
) -> dict[str, Path]:
    from edgecompress.report import Report, recommend, write_report

    cfg = ctx.cfg
    device = cfg.benchmark.devices[0]
    temperature = calibrated.record["temperature"]
    models = finish.chain_entries(teacher, student, calibrated) + finish.artifact_entries(
        artifacts, bench, temperature, device
    )
    for m in models:
        m["reliability_png"] = finish._rel(ctx, m.get("reliability_png"))
    # An artifact qualifies when it loses at most export.max_accuracy_drop of accuracy and at most one ECE point
    # against the calibrated FP32 student on the same images the devices evaluated; the fastest qualifying one is
    # recommended per device.
    ref, label = _bench_reference(ctx, calibrated, bench)
    recs = (
        recommend(
            bench,
            reference_accuracy=ref["accuracy"],
            max_accuracy_drop=cfg.export.max_accuracy_drop,
            max_ece=ref["ece"] + ECE_SLACK if ref.get("ece") is not None else None,
            reference_label=label,
        )
        if ref.get("accuracy") is not None
        else []
    )
    figures = {}  # the student's reliability diagram travels with its model entry (reliability_png)
    if student.record.get("sample_grid"):
        figures["datafree_samples"] = finish._rel(ctx, student.record["sample_grid"])
    report = Report(
        name=cfg.name,
        config_hash=sha256_json(cfg.model_dump(mode="json"))[:16],
        environment=finish.environment(),
        models=models,
        benchmarks=bench,
        stages=ctx.stages,
        recommendations=recs,
        figures={k: v for k, v in figures.items() if v},
        warnings=ctx.warnings,
        datafree=student.record.get("datafree"),
    )
    paths = write_report(report, ctx.run.root)
    if cfg.bundle.enabled:
        paths.update(write_bundles(ctx, report, artifacts))
    return paths


def _bench_reference(ctx: Context, calibrated: Any, bench: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Accuracy / ECE of the calibrated FP32 student on the images the devices evaluated, and how to name it.

    Devices evaluate the first ``benchmark.eval_samples`` test images; comparing their accuracy with the student's on
    the whole test split would mix two samples (a subset can be easier or harder). The student (T folded) is run on
    the same subset here; a rerun by ``edgecompress bench`` rebuilds it from the calibrate stage.
    """
    after = calibrated.record.get("after", {})
    counts = {row.get("eval_samples") for row in bench if row.get("ok") and row.get("eval_samples")}
    splits = ctx.splits
    if len(counts) != 1 or splits is None or splits.test is None or counts == {len(splits.test.y)}:
        return after, "calibrated FP32 student"
    n = int(counts.pop())
    model = calibrated.model
    if model is None:  # `edgecompress bench RUN`: rebuild it from the calibrate stage
        stage = next((st for st in reversed(ctx.stages) if st["name"] == "calibrate"), None)
        state = Path(stage["output_dir"]) / "student.pt" if stage else None
        if state is None or not state.is_file():
            return after, "calibrated FP32 student"
        model = train._fold(
            train.rebuild(calibrated.spec, state, splits),
            float(calibrated.record.get("temperature") or 1.0),
            splits,
        )
    from edgecompress.pipeline.context import metrics_of, predict_logits

    x, y = deploy.eval_subset(splits, n)
    return metrics_of(predict_logits(model, x), y), f"calibrated FP32 student on the same {n} test images"


def write_bundles(ctx: Context, report: Any, artifacts: list[dict[str, Any]]) -> dict[str, Path]:
    from edgecompress.bundle import write_bundle, zip_bundle

    splits = ctx.splits
    cfg = ctx.cfg
    entries = {m.name: m for m in report.models}
    out: dict[str, Path] = {}
    for art in artifacts:
        if not cfg.bundle.selects(art["name"], art["format"], art["precision"]):
            continue
        entry = entries.get(art["name"])
        fields = {
            "labels": splits.labels,
            "preprocessing": splits.preprocess.model_dump(mode="json"),
            "temperature": {"value": entry.temperature if entry else None, "folded": True},
            "metrics": {k: getattr(entry, k) for k in ("accuracy", "ece", "nll", "brier")}
            | {"latency_ms": {b: s.p50 for b, s in entry.latency_ms.items()}, "device": entry.device}
            if entry
            else {},
            "config_hash": report.config_hash,
            "input_shape": list(splits.input_shape),
        }
        bdir = write_bundle(
            name=art["name"],
            files=[Path(f) for f in art["files"]],
            model_file=Path(art["model_file"]),
            manifest_fields=fields,
            out_dir=ctx.run.bundles_dir,
            include_runner=cfg.bundle.include_runner,
            artifact=art,
        )
        out[f"bundle {art['name']}"] = bdir
        if cfg.bundle.zip:
            out[f"zip {art['name']}"] = zip_bundle(bdir)
    return out


def _moved(state: dict[str, Any], root: Path) -> dict[str, Any]:
    """``run.json`` of a run directory that was moved or copied (e.g. to another machine): its absolute paths re-rooted.

    The old root is where the recorded stage folders lived.
    """
    stages = state.get("stages") or []
    if not stages or not stages[0].get("output_dir"):
        return state
    old = Path(stages[0]["output_dir"]).parent.parent
    if old != root:
        log.info("run directory moved from %s to %s: re-rooting its recorded paths", old, root)
    return reroot(state, old, root)


def bench_run(run_dir: str | Path, *, devices: list[str]) -> dict[str, Path]:
    """Benchmark a finished run's artifacts on ``devices`` again and rewrite its report."""
    import json

    run = RunDir(run_dir)
    state_file = run.root / STATE
    if not state_file.is_file():
        raise ConfigError(
            f"{run.root} is not a finished run directory (no {STATE})", "run `edgecompress run CONFIG --out DIR` first"
        )
    run.prepare()  # lock the folder: a second process must not write the same report
    cfg = load_config(run.root / "config.resolved.yaml")
    check_devices(devices, cfg.benchmark.profiles_dir)
    state = _moved(json.loads(state_file.read_text()), run.root)
    ctx = Context(
        cfg=cfg.model_copy(update={"benchmark": cfg.benchmark.model_copy(update={"devices": devices})}),
        run=run,
        progress=False,
    )
    splits = train.stage_data(ctx)
    bench = deploy.stage_benchmark(ctx, splits, state["artifacts"], state["export_key"], force=True)
    teacher = train.Trained(None, {}, "", state["teacher"])
    student = train.Trained(None, state["distill_spec"], "", state["distill"])
    calibrated = train.Trained(None, state["distill_spec"], "", state["calibrate"])
    ctx.stages = state["stages"] + ctx.stages
    paths = _finish(ctx, teacher, student, calibrated, state["artifacts"], bench)
    if bench and not any(row.get("ok") for row in bench):  # the report keeps the failed rows and their reasons
        first = next(row for row in bench if not row.get("ok"))
        raise DeviceError(
            f"no benchmark succeeded on {', '.join(devices)}; first failure: {first.get('artifact')} on "
            f"{first.get('device')}: {first.get('error')}",
            f"see the device table in {paths.get('md', run.root / 'report.md')}; check the device profile",
        )
    return paths
