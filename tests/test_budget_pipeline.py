"""Compress to a budget end to end on digits: the largest feasible candidate is the student, a second run on the
same device measures nothing (the latency cache), an impossible budget fails before any student is trained with the
fastest measured latency in its one line, and ``search: frontier`` distills k candidates and ships the best on val."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompress.config import PipelineConfig

pytestmark = pytest.mark.slow  # three tiny runs: candidates exported and timed, one student distilled (~1 min)

TINY = {
    "name": "tiny-budget",
    "seed": 0,
    "data": {"dataset": "digits", "val_fraction": 0.2, "calib_size": 64, "test_fraction": 0.2, "max_train": 600},
    "teacher": {
        "model": {"family": "cnn", "params": {"channels": [32, 64]}},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0},
    },
    "distill": {
        "assistants": "none",
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0},
        "max_accuracy_drop": 1.0,  # mechanics; the gate has its own tests
    },
    "export": {"formats": ["onnx:fp32", "onnx:int8"], "calib_samples": 64, "max_accuracy_drop": 1.0},
    "benchmark": {"devices": ["local"], "batch_sizes": [1], "min_time_s": 0.02, "repeats": 2, "eval_samples": 64},
}


def _cfg(cache: Path, **target: object) -> PipelineConfig:
    data = json.loads(json.dumps(TINY))
    data["target"] = {"candidates": 4, "max_ratio": 0.5, "min_ratio": 0.05, "cache_dir": str(cache), **target}
    return PipelineConfig.model_validate(data)


def _budget(out: Path) -> dict:
    return json.loads(next(out.glob("stages/budget-*/_done.json")).read_text())


def _stages(out: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[0] for p in (out / "stages").iterdir()}


def test_budget_end_to_end(tmp_path: Path) -> None:
    from edgecompress.budget import BudgetError
    from edgecompress.pipeline import bench_run, run_pipeline

    cache = tmp_path / "latency-cache"
    # 1. everything feasible: the largest student candidate is chosen; nothing trained past the budget stage
    first = tmp_path / "first"
    run_pipeline(_cfg(cache, latency_ms=1000.0), first, until="budget", progress=False)
    res = _budget(first)
    students = [c for c in res["candidates"] if c["name"] != "teacher"]
    assert len(students) >= 3 and res["measured_now"] == sum(len(c["probes"]) for c in res["candidates"]) > 0
    assert res["choice"]["candidate"] == max(students, key=lambda c: c["macs"])["name"]
    assert not {"distill", "calibrate", "export"} & _stages(first)
    assert any(cache.glob("*.json"))

    # 2. a size budget the largest candidate misses: the next one that meets it is distilled; nothing is measured again
    smallest = {c["name"]: min(p["size_bytes"] for p in c["probes"]) for c in students}
    largest = max(students, key=lambda c: c["macs"])
    size_kb = (smallest[largest["name"]] - 1) / 1024
    second = tmp_path / "second"
    run_pipeline(_cfg(cache, size_kb=size_kb), second, progress=False)
    res = _budget(second)
    assert res["measured_now"] == 0 and all(p["cached"] for c in res["candidates"] for p in c["probes"])
    fits = [c for c in students if any(p["size_bytes"] <= size_kb * 1024 for p in c["probes"])]
    chosen = max(fits, key=lambda c: c["macs"])
    assert res["choice"]["candidate"] == chosen["name"] != largest["name"]
    state = json.loads((second / "run.json").read_text())
    student = state["distill"]["chain"]["members"][-1]
    assert student["macs"] == chosen["macs"]  # the distilled student is the chosen candidate's architecture
    verdict = state["budget"]["verdicts"][-1]
    assert verdict["candidate"] == chosen["name"] and verdict["size_bytes"] is not None
    assert verdict["size_bytes"] <= size_kb * 1024 and not any(m.startswith("size") for m in verdict["misses"])
    report = (second / "report.md").read_text()
    assert "## Compress to a budget" in report and chosen["name"] in report
    assert (second / "figures" / "budget_latency.png").stat().st_size > 0
    bench_run(second, devices=["local"])  # `edgecompress bench RUN` keeps the budget record and its report section
    again = json.loads((second / "run.json").read_text())
    assert again["budget"]["choice"] == state["budget"]["choice"]
    assert "## Compress to a budget" in (second / "report.md").read_text()

    # 3. an impossible budget: one line with the fastest measured latency, before any student is trained
    third = tmp_path / "third"
    with pytest.raises(BudgetError) as info:
        run_pipeline(_cfg(cache, latency_ms=1e-6), third, progress=False)
    fastest = min(p["p50_ms"] for c in students for p in c["probes"])
    message = str(info.value)
    assert "\n" not in message and f"{fastest:.4g} ms" in message
    assert "distill" not in _stages(third) and "budget" in _stages(third)
    # 4. search: frontier — the two largest feasible candidates are distilled (the pipeline loops distill →
    # benchmark), then the run goes back to the one more accurate on val (its stages cached) and ships it
    fourth = tmp_path / "fourth"
    run_pipeline(_cfg(cache, latency_ms=1000.0, search="frontier", frontier_k=2, max_accuracy_drop=1.0), fourth,
                 progress=False)  # fmt: skip
    state = json.loads((fourth / "run.json").read_text())
    verdicts = state["budget"]["verdicts"]
    two = sorted(students, key=lambda c: -c["macs"])[:2]
    assert sorted(v["candidate"] for v in verdicts) == sorted(c["name"] for c in two) and all(
        v["met"] for v in verdicts
    )
    best = max(verdicts, key=lambda v: (v["val_accuracy"], -v["p50_ms"]))
    assert state["budget"]["choice"]["candidate"] == best["candidate"]
    assert state["distill"]["chain"]["members"][-1]["macs"] == next(
        c["macs"] for c in two if c["name"] == best["candidate"]
    )
    assert len([p for p in (fourth / "stages").iterdir() if p.name.startswith("distill-")]) == 2
