"""Compress to a budget as a stage: measure candidate students on the target before training, choose the largest
that meets the budget, hand it to the distill stage; after the benchmark stage, check the final artifact.

The ``budget`` stage runs after ``teacher`` when the config has a ``target:`` section. It sets the student of the
rest of the run (``distill.student.prune_ratio`` / ``round_to``), adds the chosen format to ``export.formats`` and
the target device and batch size to the benchmark section, so the later stages' keys follow the choice. After the
benchmark stage :func:`verify` measures the chosen artifact against the budget; a miss steps down one candidate and
the pipeline redoes distill → benchmark for it (at most ``target.max_steps_down`` times).
"""

from __future__ import annotations

import logging
from typing import Any

from edgecompress.budget.choose import budget_text, choice_of, feasible, misses, teacher_reference
from edgecompress.budget.records import Candidate, Probe, Verdict
from edgecompress.errors import MissingExtraError, ModelError
from edgecompress.pipeline.context import Context, Stage
from edgecompress.pipeline.finishing import REPORT as PLAIN_REPORT
from edgecompress.pipeline.finishing import FinishResult, build_report
from edgecompress.pipeline.results import BenchmarkResult, BudgetResult, ExportResult, TeacherResult
from edgecompress.pipeline.rundir import StageDir
from edgecompress.pipeline.train_stages import splits_of

log = logging.getLogger(__name__)


def _key(ctx: Context) -> dict[str, Any]:
    from edgecompress.devices.profiles import profile_contents

    target = ctx.cfg.target
    assert target is not None
    export = ctx.cfg.export.model_dump(mode="json")
    bench = ctx.cfg.benchmark.model_dump(mode="json", exclude={"devices", "batch_sizes", "eval_samples"})
    return {
        "target": target.model_dump(mode="json", exclude={"cache_dir"}),
        "profile": profile_contents([target.device], [ctx.cfg.benchmark.profiles_dir])[0],  # contents, not the name
        "teacher": ctx.keys["teacher"],
        "data": ctx.keys["data"],
        "export": export,
        "benchmark": bench,
    }


def _compute(ctx: Context, sd: StageDir) -> BudgetResult:
    import numpy as np

    from edgecompress.budget import LatencyCache, ProbeSetup, architecture_hash, cut_candidates, measure_candidates
    from edgecompress.budget.choose import choose, fit_latency, with_predictions

    target = ctx.cfg.target
    assert target is not None
    splits = splits_of(ctx)
    if ctx.result("teacher", TeacherResult).spec is None:
        raise ModelError(
            "target: candidates are cut from the teacher by pruning, but the teacher is a TorchScript / .pt2 program",
            "give the teacher as a state dict with teacher.model, or remove the target section",
        )
    teacher = ctx.models["teacher"]
    cands, notes = cut_candidates(teacher, splits.input_shape, target.ratios(), round_to=target.round_to)
    for note in notes:
        ctx.warn(f"budget: {note}")
    if splits.calib is None:
        raise ModelError("target: no calib split to calibrate the INT8 probes", "give a dataset with a calib split")
    setup = ProbeSetup(
        device=target.device,
        batch_size=target.batch_size,
        pairs=target.format_pairs(ctx.cfg.export.format_pairs()),
        export_cfg=ctx.cfg.export,
        bench_cfg=ctx.cfg.benchmark,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        calib_x=np.asarray(splits.calib.x),
        val=(np.asarray(splits.val.x), splits.val.y) if splits.val is not None else None,
        workdir=sd.path / "probes",
        cache=LatencyCache(target.cache_dir),
        arch=architecture_hash(teacher, splits.input_shape),
    )
    measured, count = measure_candidates(cands, setup)
    fits = fit_latency(measured)
    measured = with_predictions(measured, fits)
    choice, ranked = choose(measured, target)  # BudgetError before any student is trained
    result = BudgetResult(
        device=target.device,
        batch_size=target.batch_size,
        budgets=budget_text(target),
        teacher_p50_ms=teacher_reference(measured),
        candidates=measured,
        fits=fits,
        choice=choice,
        feasible=[f"{c.name} {p.pair}" for c, p in ranked],
        measured_now=count,
        notes=notes,
    )
    log.info("budget: chose %s in %s (%s)", choice.candidate, choice.pair, choice.reason)
    _apply(ctx, result)
    return result


def _load(ctx: Context, sd: StageDir, res: BudgetResult) -> None:
    _apply(ctx, res.model_copy(update={"measured_now": 0}))


def _apply(ctx: Context, res: BudgetResult) -> None:
    """Make the chosen candidate the run's student, and make sure its format is exported and measured on the target
    at the budget's batch size."""
    target = ctx.cfg.target
    assert target is not None
    cfg = ctx.cfg
    student = cfg.distill.student.model_copy(
        update={"prune_ratio": res.choice.target_ratio, "round_to": target.round_to, "model": None}
    )
    formats = cfg.export.formats if cfg.export.formats == "all" else list(cfg.export.formats)
    if formats != "all" and res.choice.pair not in formats:
        formats.append(res.choice.pair)
    bench = cfg.benchmark
    devices = bench.devices if target.device in bench.devices else [*bench.devices, target.device]
    batches = bench.batch_sizes if target.batch_size in bench.batch_sizes else [*bench.batch_sizes, target.batch_size]
    ctx.cfg = cfg.model_copy(
        update={
            "distill": cfg.distill.model_copy(update={"student": student}),
            "export": cfg.export.model_copy(update={"formats": formats}),
            "benchmark": bench.model_copy(update={"devices": devices, "batch_sizes": sorted(batches)}),
        }
    )
    ctx.results["budget"] = res


BUDGET = Stage(
    "budget", BudgetResult, key=_key, compute=_compute, load=_load, applies=lambda ctx: ctx.cfg.target is not None
)


# ---------------------------------------------------------------------------------------------------- verify


def _verdict(ctx: Context, res: BudgetResult) -> Verdict:
    """The chosen artifact as the benchmark stage measured it on the target, against every budget."""
    from edgecompress.devices.profiles import load_profile

    target = ctx.cfg.target
    assert target is not None
    fmt, prec = res.choice.pair.split(":")
    name = f"{fmt}-{prec}"
    device = load_profile(target.device, [ctx.cfg.benchmark.profiles_dir]).name
    art = next((a for a in ctx.result("export", ExportResult).artifacts if a.name == name), None)
    row = next(
        (r for r in ctx.result("benchmark", BenchmarkResult).rows if r.artifact == name and r.device == device), None
    )
    stats = row.latency_ms.get(target.batch_size) if row is not None and row.ok else None
    verdict = Verdict(candidate=res.choice.candidate, artifact=name)
    if art is None or not art.ok:
        verdict.misses.append(f"{name} was not exported: {art.failure if art is not None else 'not requested'}")
        return verdict
    if stats is None:
        verdict.misses.append(f"{name} was not measured on {device}: {row.failure if row is not None else 'no row'}")
        return verdict
    probe = Probe(format=fmt, precision=prec, p50_ms=stats.p50, p90_ms=stats.p90, size_bytes=art.size_bytes)
    verdict.misses.extend(misses(probe, target, res.teacher_p50_ms, margin=0.0))
    teacher_acc = (ctx.result("teacher", TeacherResult).test or {}).get("accuracy")
    metrics = art.test_metrics or {}
    acc, ece = metrics.get("accuracy"), metrics.get("ece")
    drop = teacher_acc - acc if teacher_acc is not None and acc is not None else None
    if drop is not None and drop > target.max_accuracy_drop:
        verdict.misses.append(f"accuracy drop {100 * drop:.2f} pt > {100 * target.max_accuracy_drop:g} pt")
    if target.max_ece is not None and ece is not None and ece > target.max_ece:
        verdict.misses.append(f"ECE {100 * ece:.2f} % > {100 * target.max_ece:g} %")
    return verdict.model_copy(
        update={
            "p50_ms": stats.p50,
            "p90_ms": stats.p90,
            "size_bytes": art.size_bytes,
            "accuracy": acc,
            "val_accuracy": (art.val_metrics or {}).get("accuracy"),
            "ece": ece,
            "accuracy_drop": drop,
            "met": not verdict.misses,
        }  # fmt: skip
    )


def verify(ctx: Context) -> bool:
    """Check the final artifact against the budget; True when a smaller candidate was chosen and distill →
    benchmark must run again for it."""
    res = ctx.results.get("budget")
    target = ctx.cfg.target
    if not isinstance(res, BudgetResult) or target is None:
        return False
    verdict = _verdict(ctx, res)
    earlier = [v for v in res.verdicts if (v.candidate, v.artifact) != (verdict.candidate, verdict.artifact)]
    res = res.model_copy(update={"verdicts": [*earlier, verdict]})  # a cached rerun replaces its own verdict
    ctx.results["budget"] = res
    if target.search == "frontier":
        return _frontier_step(ctx, res, target)
    if verdict.met:
        log.info("budget: %s meets %s (p50 %.4g ms)", verdict.artifact, ", ".join(res.budgets), verdict.p50_ms)
        return False
    device_miss = [m for m in verdict.misses if not m.startswith(("accuracy", "ECE"))]
    what = f"budget: the final {verdict.artifact} of {verdict.candidate} misses: {'; '.join(verdict.misses)}"
    if not device_miss:  # accuracy / ECE: a smaller student would lose more; say so
        ctx.warn(f"{what} (the largest feasible candidate was trained: relax the budget to keep more accuracy)")
        return False
    nxt = _step_down(res, target, exported=verdict.p50_ms is not None)
    if nxt is None or len(res.verdicts) > target.max_steps_down:
        ctx.warn(f"{what}; no smaller candidate is left to try (target.max_steps_down {target.max_steps_down})")
        return False
    cand, probe = nxt
    ctx.warn(f"{what}; stepping down to {cand.name} in {probe.pair}")
    stepped = res.model_copy(update={"choice": choice_of(cand, probe, target, len(res.feasible))})
    stepped.choice.reason = (
        f"stepped down after {verdict.artifact} of {verdict.candidate} missed; " + stepped.choice.reason
    )
    _apply(ctx, stepped)
    return True


def _frontier_step(ctx: Context, res: BudgetResult, target: Any) -> bool:
    """``search: frontier``: train the next smaller feasible candidate until ``frontier_k`` are trained, then go back
    to the most accurate one that met the budget (its stages are cached: the rerun only rewrites the records)."""
    trained = {v.candidate for v in res.verdicts}
    if len(trained) < target.frontier_k:
        nxt = next(((c, p) for c, p in feasible(res.candidates, target) if c.name not in trained), None)
        if nxt is not None:
            cand, probe = nxt
            log.info("budget frontier: %d of %d trained; next %s in %s", len(trained), target.frontier_k, cand.name,
                     probe.pair)  # fmt: skip
            stepped = res.model_copy(update={"choice": choice_of(cand, probe, target, len(res.feasible))})
            stepped.choice.reason = (
                f"frontier candidate {len(trained) + 1} of {target.frontier_k}: {stepped.choice.reason}"
            )
            _apply(ctx, stepped)
            return True
    met = [v for v in res.verdicts if v.met]
    if not met:
        ctx.warn(f"budget: none of the {len(trained)} frontier candidates met {', '.join(res.budgets)} after training")
        return False
    best = max(met, key=lambda v: (v.val_accuracy or 0.0, -(v.p50_ms or 0.0)))  # selected on val, never test
    if best.candidate == res.choice.candidate:
        return False
    cand = next(c for c in res.candidates if c.name == best.candidate)
    fmt, _, prec = best.artifact.partition("-")
    best_probe = cand.probe(f"{fmt}:{prec}")
    assert best_probe is not None
    chosen = res.model_copy(update={"choice": choice_of(cand, best_probe, target, len(res.feasible))})
    chosen.choice.reason = (
        f"the most accurate on val of {len(met)} trained frontier candidates that met the budget "
        f"(val accuracy {100 * (best.val_accuracy or 0):.2f} %, p50 {best.p50_ms:.4g} ms after training)"
    )
    _apply(ctx, chosen)
    return True


def _step_down(res: BudgetResult, target: Any, *, exported: bool) -> tuple[Candidate, Probe] | None:
    """The next feasible (candidate, format): a smaller candidate after a latency miss, else the next in rank."""
    ranked = feasible(res.candidates, target)
    here = (res.choice.candidate, res.choice.pair)
    current = next((i for i, (c, p) in enumerate(ranked) if (c.name, p.pair) == here), None)
    if current is None:
        return None
    macs = ranked[current][0].macs
    for cand, probe in ranked[current + 1 :]:
        if not exported or cand.macs < macs:
            return cand, probe
    return None


# ---------------------------------------------------------------------------------------------------- report


def summary(ctx: Context, res: BudgetResult) -> Any:
    """The report's view of the budget result (:class:`edgecompress.report.budget.BudgetSummary`)."""
    from edgecompress.report.budget import BudgetAttempt, BudgetFitLine, BudgetProbeRow, BudgetSummary

    target = ctx.cfg.target
    assert target is not None
    ok = set(res.feasible)
    probes = [
        BudgetProbeRow(
            candidate=c.name,
            macs=c.macs,
            mac_ratio=c.mac_ratio,
            pair=p.pair,
            measured_ms=p.p50_ms,
            predicted_ms=p.predicted_ms,
            size_bytes=p.size_bytes,
            cached=p.cached,
            feasible=f"{c.name} {p.pair}" in ok,
            chosen=c.name == res.choice.candidate and p.pair == res.choice.pair,
            error=p.error,
        )  # fmt: skip
        for c in res.candidates
        for p in c.probes
    ]
    fits = [
        BudgetFitLine(
            pair=f"{f.format}:{f.precision}",
            kind=f.kind,
            intercept=f.intercept,
            slope=f.slope,
            rms_log_residual=f.rms_log_residual,
            max_rel_residual=f.max_rel_residual,
        )  # fmt: skip
        for f in res.fits
    ]
    attempts = [BudgetAttempt(**v.model_dump(exclude={"val_accuracy"})) for v in res.verdicts]
    return BudgetSummary(
        device=res.device,
        batch_size=res.batch_size,
        budgets=res.budgets,
        margin=target.margin,
        teacher_p50_ms=res.teacher_p50_ms,
        teacher_accuracy=(ctx.result("teacher", TeacherResult).test or {}).get("accuracy"),
        reason=res.choice.reason,
        measured_now=res.measured_now,
        probes=probes,
        fits=fits,
        attempts=attempts,
        notes=res.notes,
    )


def _report_compute(ctx: Context, sd: Any) -> FinishResult:
    """The report, with the budget section and its latency-vs-MACs figure when the run had a target."""
    res = ctx.results.get("budget")
    if not isinstance(res, BudgetResult):
        return PLAIN_REPORT.compute(ctx, sd)
    from edgecompress.report import write_report
    from edgecompress.report.budget import budget_sections, latency_curve_plot
    from edgecompress.report.render import FIGURES_DIR

    view = summary(ctx, res)
    report = build_report(ctx)
    curve = None
    try:
        latency_curve_plot(view, ctx.run.root / FIGURES_DIR / "budget_latency.png")
        curve = f"{FIGURES_DIR}/budget_latency.png"
    except MissingExtraError as exc:
        log.warning("budget plot skipped: %s", exc)
    ctx.report = report
    paths = write_report(report, ctx.run.root, extra_sections=budget_sections(view, curve=curve))
    return FinishResult(paths={k: str(v) for k, v in paths.items()})


REPORT = Stage("report", FinishResult, key=lambda ctx: {}, compute=_report_compute, cached=False)
