"""After the benchmark stage: the chosen artifact measured on the target is checked against the budget; a latency miss
steps down one candidate (bounded), an accuracy miss is only a warning. Built from typed stage results (no runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.budget.choose import choose
from edgecompress.budget.records import Candidate, Probe
from edgecompress.config import PipelineConfig
from edgecompress.export import Artifact
from edgecompress.measurements import BenchRow
from edgecompress.pipeline.budget_stage import _apply, summary, verify
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.results import BenchmarkResult, BudgetResult, ExportResult, TeacherResult
from edgecompress.pipeline.rundir import RunDir


def _cand(name: str, ratio: float, p50: float) -> Candidate:
    return Candidate(name=name, target_ratio=ratio, mac_ratio=ratio, macs=int(ratio * 1e6), params=100, widths=[8],
                     probes=[Probe(format="onnx", precision="fp32", p50_ms=p50, size_bytes=1000)])  # fmt: skip


def _ctx(tmp_path: Path, **target: object) -> Context:
    cfg = PipelineConfig.model_validate({
        "data": {"dataset": "digits"},
        "teacher": {"model": {"family": "cnn"}, "train": {}},
        "export": {"formats": ["onnx:fp32"]},
        "target": {"latency_ms": 1.0, "max_accuracy_drop": 0.05, "cache_dir": str(tmp_path), **target},
    })  # fmt: skip
    ctx = Context(cfg=cfg, run=RunDir(tmp_path / "run"))
    cands = [_cand("teacher", 1.0, 3.0), _cand("big", 0.4, 0.8), _cand("mid", 0.2, 0.5), _cand("small", 0.1, 0.3)]
    assert cfg.target is not None
    choice, ranked = choose(cands, cfg.target)
    res = BudgetResult(device="local", batch_size=1, budgets=["p50 <= 1 ms"], candidates=cands, fits=[],
                       choice=choice, feasible=[f"{c.name} {p.pair}" for c, p in ranked])  # fmt: skip
    ctx.results["teacher"] = TeacherResult(spec={"family": "cnn"}, params=1, macs=1, test={"accuracy": 0.9})
    _apply(ctx, res)
    return ctx


def _measured(ctx: Context, p50: float, accuracy: float = 0.9, val: float | None = None) -> None:
    """The export and benchmark stages' results for the chosen artifact (as a finished run records them)."""
    metrics = {"accuracy": accuracy, "ece": 0.02}
    art = Artifact(name="onnx-fp32", format="onnx", precision="fp32", files=[], model_file=Path("m.onnx"),
                   runtime="onnxruntime", size_bytes=1000, test_metrics=metrics,
                   val_metrics={"accuracy": accuracy if val is None else val})  # fmt: skip
    row = BenchRow(device="local", artifact="onnx-fp32", format="onnx", precision="fp32",
                   latency_ms={1: {"p50": p50, "p90": p50 * 1.2}})  # fmt: skip
    ctx.results["export"] = ExportResult(artifacts=[art])
    ctx.results["benchmark"] = BenchmarkResult(rows=[row])


def test_choice_sets_the_student_the_export_and_the_benchmark(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    res = ctx.results["budget"]
    assert isinstance(res, BudgetResult) and res.choice.candidate == "big"  # 0.8 × 1.1 <= 1 ms
    assert ctx.cfg.distill.student.prune_ratio == 0.4 and ctx.cfg.distill.student.round_to == 8
    assert 1 in ctx.cfg.benchmark.batch_sizes and "local" in ctx.cfg.benchmark.devices


def test_a_met_budget_stops_the_loop(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _measured(ctx, p50=0.9)
    assert verify(ctx) is False
    verdict = ctx.results["budget"].verdicts[-1]
    assert verdict.met and verdict.p50_ms == 0.9 and verdict.accuracy_drop == pytest.approx(0.0)


def test_a_latency_miss_steps_down_one_candidate_and_is_bounded(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, max_steps_down=1)
    _measured(ctx, p50=1.3)  # the trained artifact is slower than its probe: over the budget (no margin here)
    assert verify(ctx) is True
    res = ctx.results["budget"]
    assert res.choice.candidate == "mid" and ctx.cfg.distill.student.prune_ratio == 0.2
    assert "stepped down" in res.choice.reason and "misses: p50 1.3 ms" in ctx.warnings[-1]
    _measured(ctx, p50=1.2)  # the smaller one misses too: max_steps_down 1 is spent
    assert verify(ctx) is False
    assert len(ctx.results["budget"].verdicts) == 2 and "no smaller candidate is left" in ctx.warnings[-1]
    view = summary(ctx, ctx.results["budget"])
    assert [a.candidate for a in view.attempts] == ["big", "mid"] and not any(a.met for a in view.attempts)


def test_an_accuracy_miss_is_a_warning_not_a_step_down(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _measured(ctx, p50=0.7, accuracy=0.8)
    assert verify(ctx) is False
    verdict = ctx.results["budget"].verdicts[-1]
    assert not verdict.met and verdict.misses == ["accuracy drop 10.00 pt > 5 pt"]
    assert ctx.cfg.distill.student.prune_ratio == 0.4 and "relax the budget" in ctx.warnings[-1]


def test_a_failed_export_moves_to_the_next_feasible_pair(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    _measured(ctx, p50=0.7)
    bad = ctx.results["export"].artifacts[0].model_copy(update={"ok": False, "failure": "gate", "model_file": None})
    ctx.results["export"] = ExportResult(artifacts=[bad])
    assert verify(ctx) is True
    assert ctx.results["budget"].choice.candidate == "mid"


def test_frontier_trains_k_candidates_and_ships_the_most_accurate_on_val(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, search="frontier", frontier_k=2)
    _measured(ctx, p50=0.8, accuracy=0.88, val=0.90)  # big: met
    assert verify(ctx) is True and ctx.results["budget"].choice.candidate == "mid"
    _measured(ctx, p50=0.4, accuracy=0.95, val=0.85)  # mid: met, better on test but worse on val (test never selects)
    assert verify(ctx) is True
    res = ctx.results["budget"]
    assert res.choice.candidate == "big" and "most accurate on val of 2" in res.choice.reason
    assert ctx.cfg.distill.student.prune_ratio == 0.4
    _measured(ctx, p50=0.8, accuracy=0.88, val=0.90)  # big again (its stages are cached): the loop ends
    assert verify(ctx) is False
    res = ctx.results["budget"]
    assert sorted(v.candidate for v in res.verdicts) == ["big", "mid"] and all(v.met for v in res.verdicts)
