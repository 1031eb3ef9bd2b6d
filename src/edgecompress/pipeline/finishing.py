"""The last two stages: the report (JSON, Markdown, HTML, plots) and one app bundle per shipped artifact.

Neither is cached: both are rewritten each time the pipeline reaches them (a rerun of ``edgecompress bench`` too).
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress._io import sha256_json
from edgecompress.errors import ConfigError, EdgeCompressError
from edgecompress.pipeline import entries, reference
from edgecompress.pipeline.context import Context, Stage, metrics_of, predict_logits
from edgecompress.pipeline.results import (
    BenchmarkResult,
    CalibrateResult,
    DataResult,
    DecideResult,
    DistillResult,
    ExportResult,
    StageResult,
    TeacherResult,
)

if TYPE_CHECKING:
    from edgecompress.measurements import BenchRow
    from edgecompress.report import Report

log = logging.getLogger(__name__)

ECE_SLACK = 0.01  # how much worse than the FP32 student's ECE a recommended artifact may be


class FinishResult(StageResult):
    """Paths written by the report or bundles stage, by what they are."""

    paths: dict[str, str]


def eval_set(ctx: Context) -> tuple[np.ndarray, np.ndarray] | None:
    """The images and labels the devices evaluated: the benchmark folder's shipped ``eval.npz`` (inside the run)."""
    if ctx.eval_data is not None:
        return ctx.eval_data
    from edgecompress._contain import contained

    folder = next((r.output_dir for r in reversed(ctx.stages) if r.name == "benchmark" and r.output_dir), None)
    path = contained(ctx.run.root, Path(folder) / "eval.npz", what="the benchmark stage's eval.npz") if folder else None
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["x"], data["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ConfigError(
            f"{path} (the images the benchmark stage shipped) is not a readable .npz ({type(exc).__name__}: "
            f"{' '.join(str(exc).split()).split('. ')[0][:120]})",
            "a run directory is data: use the original, or rerun the pipeline to rewrite it",
        ) from None


def _bench_reference(ctx: Context, rows: list[BenchRow]) -> tuple[dict[str, Any], str]:
    """Accuracy / ECE of the calibrated FP32 student on the images the devices evaluated, and how to name it.

    Devices evaluate the first ``benchmark.eval_samples`` test images; comparing their accuracy with the student's on
    the whole test split would mix two samples (a subset can be easier or harder). The student (T folded) is run on
    the same subset here; a rerun by ``edgecompress bench`` rebuilds it from the calibrate stage's folder.
    """
    after = ctx.result("calibrate", CalibrateResult).after or {}
    counts = {row.eval_samples for row in rows if row.ok and row.eval_samples}
    data = ctx.result("data", DataResult)
    evaluated = eval_set(ctx)
    if len(counts) != 1 or evaluated is None or counts == {data.sizes.get("test")}:
        return after, "calibrated FP32 student"
    n = int(counts.pop())
    model = ctx.models.get("calibrated")
    if model is None:  # `edgecompress bench RUN`: rebuild it from the calibrate stage
        try:
            model = _rebuild_calibrated(ctx)
        except EdgeCompressError as exc:
            log.info("the calibrated student is not rebuilt (%s); comparing with its whole-test metrics", exc)
            return after, "calibrated FP32 student"
    x, y = evaluated[0][:n], evaluated[1][:n]
    return metrics_of(predict_logits(model, x), y), f"calibrated FP32 student on the same {n} test images"


def _rebuild_calibrated(ctx: Context) -> Any:
    from edgecompress._contain import contained
    from edgecompress.models import ModelSpec, build_model, load_state
    from edgecompress.pipeline.train_stages import fold_with_shape

    folder = next((r.output_dir for r in reversed(ctx.stages) if r.name == "calibrate" and r.output_dir), None)
    state = contained(ctx.run.root, Path(folder) / "student.pt", what="the calibrate stage") if folder else None
    if state is None or not state.is_file():
        raise EdgeCompressError("the calibrate stage's student.pt is missing", "rerun the pipeline")
    data = ctx.result("data", DataResult)
    c, h, w = data.input_shape
    spec = ModelSpec(**ctx.result("distill", DistillResult).student_spec)
    model = build_model(
        spec, in_channels=c, num_classes=data.num_classes, input_size=(h, w), trusted_modules=ctx.trusted_modules
    )
    model = load_state(model, state)
    return fold_with_shape(model, ctx.result("calibrate", CalibrateResult).temperature, data.input_shape)


def build_report(ctx: Context) -> Report:
    """The report of everything this run measured."""
    from edgecompress.report import Report, recommend

    cfg = ctx.cfg
    teacher = ctx.result("teacher", TeacherResult)
    distill = ctx.result("distill", DistillResult)
    cal = ctx.result("calibrate", CalibrateResult)
    decide = ctx.results.get("decide")
    artifacts = ctx.result("export", ExportResult).artifacts
    bench = ctx.result("benchmark", BenchmarkResult).rows if "benchmark" in ctx.results else []
    device = cfg.benchmark.devices[0]
    models = entries.chain_entries(teacher, distill, cal) + entries.artifact_entries(
        artifacts, bench, cal.temperature, device
    )
    ref_rows = ctx.result("benchmark", BenchmarkResult).reference_rows if "benchmark" in ctx.results else []
    models += reference.reference_entries(ctx, ref_rows, device)
    for m in models:
        m["reliability_png"] = entries.rel(ctx, m.get("reliability_png"))
    # An artifact qualifies when it loses at most export.max_accuracy_drop of accuracy and at most one ECE point
    # against the calibrated FP32 student on the same images the devices evaluated; the fastest qualifying one is
    # recommended per device. A failed export is never benchmarked, so never recommended.
    ref, label = _bench_reference(ctx, bench)
    recs = (
        recommend(
            bench,
            reference_accuracy=ref["accuracy"],
            max_accuracy_drop=cfg.export.max_accuracy_drop,
            max_ece=ref["ece"] + ECE_SLACK if ref.get("ece") is not None else None,
            reference_label=label,
            batch=cfg.target.batch_size if cfg.target is not None else None,
        )
        if ref.get("accuracy") is not None
        else []
    )
    figures = {"datafree_samples": entries.rel(ctx, distill.sample_grid)} if distill.sample_grid else {}
    if distill.curve_png:
        figures["datafree_accuracy_vs_rounds"] = entries.rel(ctx, distill.curve_png)
    report = Report(
        name=cfg.name,
        config_hash=sha256_json(cfg.model_dump(mode="json"))[:16],
        environment=entries.environment(),
        models=models,
        benchmarks=bench,
        stages=[s.model_dump(exclude={"key"}) for s in ctx.stages],
        recommendations=recs,
        figures={k: v for k, v in figures.items() if v},
        warnings=ctx.warnings,
        datafree=distill.datafree,
        decisions=entries.decision_entries(decide if isinstance(decide, DecideResult) else None, distill, cal)
        + [a.int8_recovery.decision(a.name) for a in artifacts if a.int8_recovery is not None and not a.refit_of],
        scratch_baseline=entries.scratch_baseline_entry(distill),
        reference_benchmarks=ref_rows,
        test_samples=ctx.result("data", DataResult).sizes.get("test") or None,
        attempts=distill.attempts if len(distill.attempts) > 1 else [],
    )
    return reference.with_headline(ctx, report)


def _report_compute(ctx: Context, sd: Any) -> FinishResult:
    from edgecompress.report import write_report

    report = build_report(ctx)
    ctx.report = report
    return FinishResult(paths={k: str(v) for k, v in write_report(report, ctx.run.root).items()})


REPORT = Stage("report", FinishResult, key=lambda ctx: {}, compute=_report_compute, cached=False)


def _bundles_compute(ctx: Context, sd: Any) -> FinishResult:
    """One bundle per successfully exported artifact that the bundle section selects (failed exports never ship)."""
    from edgecompress.bundle import write_bundle, zip_bundle

    cfg = ctx.cfg
    if not cfg.bundle.enabled:
        ctx.run.remove_stale_bundles(set())
        return FinishResult(paths={})
    report = ctx.report if ctx.report is not None else build_report(ctx)
    data = ctx.result("data", DataResult)
    by_name = {m.name: m for m in report.models}
    out: dict[str, str] = {}
    export_dir = next((Path(r.output_dir) for r in reversed(ctx.stages) if r.name == "export" and r.output_dir), None)
    for art in ctx.result("export", ExportResult).artifacts:
        if not art.ok or art.model_file is None or not cfg.bundle.selects(art.name, art.format, art.precision):
            continue
        if export_dir is None or not _own_files(art, export_dir):  # vet_artifacts marked it already; kept as a guard
            continue
        entry = by_name.get(art.name)
        fields = {
            "labels": data.labels,
            "preprocessing": data.preprocess,
            "temperature": {"value": entry.temperature if entry else None, "folded": True},
            "metrics": {k: getattr(entry, k) for k in ("accuracy", "ece", "nll", "brier")}
            | {"latency_ms": {b: s.p50 for b, s in entry.latency_ms.items()}, "device": entry.device}
            if entry
            else {},
            "config_hash": report.config_hash,
            "input_shape": list(data.input_shape),
        }
        bdir = write_bundle(
            name=art.name,
            files=list(art.files),
            model_file=art.model_file,
            manifest_fields=fields,
            out_dir=ctx.run.bundles_dir,
            include_runner=cfg.bundle.include_runner,
            artifact=art.model_dump(mode="json"),
        )
        out[f"bundle {art.name}"] = str(bdir)
        if cfg.bundle.zip:
            out[f"zip {art.name}"] = str(zip_bundle(bdir))
    written = {key.split(" ", 1)[1] for key in out}
    for stale in ctx.run.remove_stale_bundles(written):  # an earlier config's bundles would still verify "ok"
        log.info("removed the bundle %s of an earlier run in this directory", stale.name)
    return FinishResult(paths=out)


def vet_artifacts(ctx: Context) -> None:
    """Mark failed every artifact whose recorded files are not in the folder its export wrote.

    For a run directory received from elsewhere: a record edited to ship another artifact's model under this name
    (say the FP32 model as the INT8 bundle) is caught here, named in the report, and never benchmarked or bundled.
    """
    export = ctx.result("export", ExportResult)
    export_dir = next((Path(r.output_dir) for r in reversed(ctx.stages) if r.name == "export" and r.output_dir), None)
    vetted = []
    for art in export.artifacts:
        if art.ok and (export_dir is None or art.model_file is None or not _own_files(art, export_dir)):
            problem = "its recorded files are not in its own export folder (an edited run record?)"
            ctx.warn(f"{art.name}: {problem}; not benchmarked or bundled")
            art = art.model_copy(update={"ok": False, "failure": problem})
        vetted.append(art)
    ctx.results["export"] = ExportResult(artifacts=vetted)


def _own_files(art: Any, export_dir: Path) -> bool:
    """Whether every file of ``art`` lies in the folder its export wrote (a record edited to ship another
    artifact's model under this name is refused)."""
    from edgecompress._contain import contained
    from edgecompress.pipeline.received import check_name_field

    try:
        check_name_field(art.name, "the artifact", "name")
        check_name_field(art.refit_of, "the artifact", "refit_of")
        rel = f"refit/{art.refit_of}" if art.refit_of else f"artifacts/{art.name}"
        base = contained(export_dir, rel, what="the artifact record")
        return all(base in contained(base, f, what="the artifact record").parents for f in [art.model_file, *art.files])
    except ConfigError:
        return False


BUNDLES = Stage("bundles", FinishResult, key=lambda ctx: {}, compute=_bundles_compute, cached=False)
