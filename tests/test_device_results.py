"""Device results are validated at the boundary: a bad result fails its own row, never the benchmark or the report.

Issue 15 finding 7 (a latency keyed "x", `metrics` as a list, logits of the wrong shape, a corrupt .npy, an accuracy
of "high", an ECE of -5) and issue 13's energy bug (the agent sends energy per batch size; the report took a float).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.devices.bench import _row
from edgecompress.devices.profiles import load_profile
from edgecompress.devices.transports import Outcome
from edgecompress.measurements import UNSTABLE_CV, AgentResult, BenchRow
from edgecompress.report import Report, recommend, write_report

ART = {"name": "onnx-fp32", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime"}


def _good(**over: object) -> dict:
    res = {
        "ok": True,
        "metrics": {"accuracy": 0.9, "ece": 0.02, "nll": 0.3, "brier": 0.15, "n": 4},
        "latency_ms": {"1": {"p50": 1.0, "p90": 1.2, "p99": 1.5, "mean": 1.05, "std": 0.1}},
        "throughput": {"1": 950.0},
        "bench": {"1": {"repeats_p50": [1.0, 1.01, 0.99]}},
        "energy_mj_per_inference": {"1": 2.5},
        "info": {"precision": "fp32"},
    }
    return res | over


def _make(result: object, tmp_path: Path | None = None, y: np.ndarray | None = None) -> BenchRow:
    return _row(ART, load_profile("local"), Outcome(result=result), y, 10)  # type: ignore[arg-type]


BAD = {
    "latency keyed x": _good(latency_ms={"x": {"p50": 1.0}}),
    "metrics a list": _good(metrics=[0.9, 0.1]),
    "accuracy high": _good(metrics={"accuracy": "high"}),
    "negative ece": _good(metrics={"accuracy": 0.9, "ece": -5}),
    "nan latency": _good(latency_ms={"1": {"p50": float("nan")}}),
    "not an object": ["ok"],
    "energy a scalar": _good(energy_mj_per_inference=3.0),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_result_fails_its_row_with_a_reason(case: str) -> None:
    row = _make(BAD[case])
    assert not row.ok and row.error and "\n" not in row.error
    assert row.accuracy is None and row.ece is None and not row.latency_ms


def test_bad_logits_files_fail_their_row(tmp_path: Path) -> None:
    y = np.arange(4) % 10
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 3), np.float32))  # 3 classes where the model has 10
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    for path, why in ((wrong, "shape"), (corrupt, "unreadable")):
        row = _make(_good(logits_file=str(path)), y=y)
        assert not row.ok and why in row.error
    good = tmp_path / "good.npy"
    np.save(good, np.eye(10, dtype=np.float32)[y] * 5)
    row = _make(_good(logits_file=str(good)), y=y)
    assert row.ok and row.metrics_full and row.metrics_full["accuracy"] == 1.0


def test_energy_per_batch_reaches_the_report(tmp_path: Path) -> None:
    """Was: pydantic ValidationError building the report (energy {batch: mJ} into a float field)."""
    from edgecompress.pipeline.entries import artifact_entries

    row = _make(_good(energy_mj_per_inference={"1": 2.5, "32": 0.4}, latency_ms={
        "1": {"p50": 1.0}, "32": {"p50": 8.0}}, throughput={"1": 1000.0, "32": 4000.0}))  # fmt: skip
    assert row.ok and row.energy_mj == {1: 2.5, 32: 0.4}
    from edgecompress.export import Artifact

    art = Artifact(name="onnx-fp32", format="onnx", precision="fp32", files=[], model_file=None, runtime="onnxruntime",
                   test_metrics={"accuracy": 0.9, "ece": 0.02, "nll": 0.3, "brier": 0.1})  # fmt: skip
    models = artifact_entries([art], [row], 1.5, "local")
    report = Report(name="energy", models=models, benchmarks=[row])
    out = write_report(report, tmp_path, plots=False)
    assert report.models[0].energy_mj == 0.4  # at the largest batch measured
    assert "0.400" in out["md"].read_text()


def test_unstable_latency_is_flagged_in_the_recommendation() -> None:
    fast = _make(_good(bench={"1": {"repeats_p50": [1.0, 1.6, 0.7]}}))
    slow = _make(_good(latency_ms={"1": {"p50": 2.0}}))
    assert fast.unstable and fast.latency_cv[1] > UNSTABLE_CV and not slow.unstable
    rec = recommend([fast.model_copy(update={"artifact": "a"}), slow.model_copy(update={"artifact": "b"})],
                    reference_accuracy=0.9, max_accuracy_drop=0.01)[0]  # fmt: skip
    assert rec["artifact"] == "a" and "unstable" in rec["reason"]


def test_parse_names_the_bad_field() -> None:
    res, why = AgentResult.parse(BAD["negative ece"])
    assert res is None and "metrics.ece" in why
