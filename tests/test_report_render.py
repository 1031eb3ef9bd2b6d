"""Report: schema round trip, the three files, formatting of missing values, plots, recommendations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgecompress.measurements import BenchRow, LatencyStats
from edgecompress.report import ModelEntry, Report, recommend, write_report
from edgecompress.report.plots import chain_size_plot, latency_accuracy_plot
from edgecompress.report.render import fmt_bytes, fmt_count, fmt_ms, fmt_pct

REQUIRED = ["name", "role", "format", "precision", "params", "macs", "size_bytes", "accuracy", "ece", "nll", "brier",
            "temperature", "latency_ms", "device"]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def _entry(name: str, role: str, **kw) -> ModelEntry:
    base = dict.fromkeys(REQUIRED[2:], None) | {"latency_ms": {}}
    return ModelEntry(name=name, role=role, **(base | kw))


def _rows() -> list[BenchRow]:
    def lat(*p50s: float) -> dict:
        return {b: {"p50": p, "p90": 1.2 * p, "p99": 1.5 * p} for b, p in zip((1, 8), p50s, strict=False)}

    rows = [
        {"device": "x86", "artifact": "onnx_fp32", "format": "onnx", "precision": "fp32", "latency_ms": lat(2.0, 9.0),
         "throughput": {1: 500.0, 8: 890.0}, "accuracy": 0.912, "ece": 0.021},
        {"device": "x86", "artifact": "openvino_int8", "format": "openvino", "precision": "int8",
         "latency_ms": lat(0.9, 4.0), "throughput": {1: 1100.0, 8: 2000.0}, "accuracy": 0.905, "ece": 0.030},
        {"device": "x86", "artifact": "onnx_int8", "format": "onnx", "precision": "int8", "latency_ms": lat(0.5, 2.0),
         "throughput": {8: 4000.0}, "accuracy": 0.85, "ece": 0.05},
        {"device": "phone", "artifact": "onnx_int8", "format": "onnx", "precision": "int8", "latency_ms": lat(5.0),
         "accuracy": 0.85, "ece": 0.05},
        {"device": "phone", "artifact": "onnx_fp32", "format": "onnx", "precision": "fp32", "latency_ms": lat(11.0),
         "accuracy": None, "ece": None, "energy_mj": {1: 3.2}},
        {"device": "phone", "artifact": "pte_fp32", "format": "executorch", "precision": "fp32",
         "accuracy": None, "ece": None, "ok": False, "error": "adb: device offline"},
    ]  # fmt: skip
    return [BenchRow.model_validate(r) for r in rows]


def _report() -> Report:
    models = [
        _entry("teacher", "teacher", params=11_200_000, macs=557_000_000, accuracy=0.93, ece=0.018, nll=0.25,
               brier=0.11, temperature=1.6, ece_before_ts=0.061, nll_before_ts=0.31, size_bytes=44_800_000),
        _entry("ta1", "assistant", params=2_000_000, macs=120_000_000, accuracy=0.921, ece=0.02, parent="teacher",
               fidelity_agreement=0.95, fidelity_kl=0.081),
        _entry("student", "student", params=300_000, macs=20_000_000, accuracy=0.912, parent="ta1",
               notes="ECE not measured (no labelled val set)"),
        _entry("onnx_fp32", "artifact", format="onnx", precision="fp32", accuracy=0.912, ece=0.021,
               latency_ms={1: {"p50": 2.0, "p90": 2.4, "p99": 3.0}, "8": {"p50": 9.0}}, device="x86",
               parity_max_abs_diff=3.1e-6, runtime="onnxruntime", size_bytes=1_200_000),
    ]  # fmt: skip
    rows = _rows()
    recs = recommend(rows, reference_accuracy=0.912, max_accuracy_drop=0.01)
    return Report(
        name="demo",
        config_hash="cafe",
        environment={"python": "3.12", "cpu": {"cores": 2}},
        models=models,
        benchmarks=rows,
        stages=[
            {"name": "distill", "seconds": 12.5, "cached": False, "output_dir": "stages/distill-ab"},
            {"name": "export", "seconds": 3.0, "cached": True},
        ],  # fmt: skip
        recommendations=recs,
        warnings=["no GPU: TensorRT engines not built"],
        datafree={"method": "fast", "images": 512},
    )


def test_write_report_three_files_and_round_trip(tmp_path: Path) -> None:
    report = _report()
    out = write_report(report, tmp_path)
    for key in ("json", "md", "html", "latency_accuracy", "chain_size"):
        assert out[key].is_file(), key
    assert out["latency_accuracy"].read_bytes().startswith(PNG)

    data = json.loads(out["json"].read_text())
    back = Report.model_validate(data)
    assert back.models == report.models and back.figures["latency_accuracy"] == "figures/latency_accuracy.png"
    for entry in data["models"]:
        assert all(k in entry for k in REQUIRED), entry
    assert data["models"][3]["latency_ms"]["1"]["p50"] == 2.0
    assert data["models"][2]["ece"] is None  # missing stays null, not 0

    md = out["md"].read_text()
    for title in ("## Models", "## Calibration before / after", "## Distillation chain and fidelity",
                  "## Devices × artifacts", "## Recommendations", "## Stage times", "## Figures"):  # fmt: skip
        assert title in md
    assert "| Name | Role | Format | Precision | Params | MACs | Size | Accuracy | ECE | NLL | Brier | T |" in md
    student = next(line for line in md.splitlines() if line.startswith("| student | student"))
    assert "—" in student and "| 0.00%" not in student and "91.20%" in student
    assert "ECE not measured (no labelled val set)" in md
    assert "| teacher | 6.10% | 1.80% |" in md  # ECE before / after TS
    assert "11.2M" in md and "557M" in md and "b1: 2.00, b8: 9.00" in md
    assert "![latency accuracy](figures/latency_accuracy.png)" in md
    assert "no GPU: TensorRT engines not built" in md
    assert "| x86 | openvino_int8 | openvino | int8 | 8 | 4.00 | 4.80 | 6.00 | 2,000/s | 90.50% | 3.00% | — |  |" in md
    assert "| phone | onnx_fp32 | onnx | fp32 | 1 | 11.0 | 13.2 | 16.5 | — | — | — | 3.20 |  |" in md
    assert (
        "| phone | pte_fp32 | executorch | fp32 | — | — | — | — | — | — | — | — | failed: adb: device offline |" in md
    )

    page = out["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page and "—" in page
    assert 'src="figures/' not in page  # self-contained


def test_benchmark_rows_with_numpy_values_serialize(tmp_path: Path) -> None:
    import numpy as np

    rows = [BenchRow(device="x", artifact="a", latency_ms={1: {"p50": np.float32(1.5)}}, accuracy=np.float32(0.9),
                     info={"path": tmp_path, "arr": np.arange(3)})]  # fmt: skip
    out = write_report(Report(name="np", benchmarks=rows), tmp_path, plots=False)
    data = json.loads(out["json"].read_text())
    assert data["benchmarks"][0]["latency_ms"]["1"]["p50"] == 1.5 and data["benchmarks"][0]["info"]["arr"] == [0, 1, 2]
    assert "| x | a | — | — | 1 | 1.50 |" in out["md"].read_text()


def test_report_schema_forbids_extra_and_requires_contract_fields() -> None:
    with pytest.raises(ValidationError):
        ModelEntry(name="x", role="student")  # required public fields missing
    with pytest.raises(ValidationError):
        _entry("x", "student", surprise=1)
    with pytest.raises(ValidationError):
        _entry("x", "pupil")


def test_formatting() -> None:
    assert fmt_pct(0.91234) == "91.23%" and fmt_pct(None) == "—" and fmt_pct(float("nan")) == "—"
    assert fmt_ms(0.012345) == "0.0123" and fmt_ms(12.345) == "12.3" and fmt_ms(1234.5) == "1,234"
    assert fmt_ms(2) == "2.00" and fmt_ms(100) == "100" and fmt_ms(0.0) == "0.00" and fmt_ms(None) == "—"
    assert fmt_count(1_234_567) == "1.23M" and fmt_bytes(2 << 20) == "2 MiB" and fmt_count(None) == "—"


def test_recommend_picks_fastest_within_bounds() -> None:
    recs = {r["device"]: r for r in recommend(_rows(), reference_accuracy=0.912, max_accuracy_drop=0.01)}
    x86 = recs["x86"]
    assert x86["artifact"] == "openvino_int8"  # onnx_int8 is faster but loses 6 pp
    assert x86["metric"] == "p50_ms" and x86["batch"] == 8 and x86["value"] == 4.0
    assert "batch 8" in x86["reason"] and "next: onnx_fp32" in x86["reason"]

    phone = recs["phone"]
    assert phone["artifact"] is None
    assert "no artifact meets the bounds" in phone["reason"]
    assert "onnx_int8: accuracy 85.00% too low" in phone["reason"]
    assert "onnx_fp32: accuracy not measured" in phone["reason"]
    assert "pte_fp32: run failed (adb: device offline)" in phone["reason"]


def test_recommend_ece_bound_and_throughput_fallback() -> None:
    rows = _rows()[:2]
    recs = recommend(rows, reference_accuracy=0.912, max_ece=0.025)
    assert recs[0]["artifact"] == "onnx_fp32" and "ECE ≤ 2.50%" in recs[0]["reason"]
    rows[1] = rows[1].model_copy(update={"latency_ms": {4: LatencyStats(p50=1.0)}})  # no batch in common
    recs = recommend(rows, reference_accuracy=0.912)
    assert recs[0]["metric"] == "throughput" and recs[0]["artifact"] == "openvino_int8"
    assert "highest throughput" in recs[0]["reason"]
    assert recommend(rows, reference_accuracy=0.912, by="throughput")[0]["metric"] == "throughput"


def test_plots_written(tmp_path: Path) -> None:
    p1 = latency_accuracy_plot(_rows(), tmp_path / "lat.png")
    p2 = chain_size_plot(_report().models, tmp_path / "chain.png")
    p3 = latency_accuracy_plot([BenchRow(device="x", artifact="a")], tmp_path / "empty.png")
    for p in (p1, p2, p3):
        assert p.read_bytes().startswith(PNG) and p.stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_empty_report(tmp_path: Path) -> None:
    out = write_report(Report(name="empty"), tmp_path)
    assert set(out) == {"json", "md", "html"}
    md = out["md"].read_text()
    assert "No models recorded." in md and "No device benchmarks in this run." in md


@pytest.mark.parametrize(("low", "high", "at_least"), [(0.69, 1.47, 4), (0.05, 40.0, 4)])
def test_log_latency_axis_has_labelled_ticks(low: float, high: float, at_least: int) -> None:
    """A latency range inside one decade still gets several labelled ticks (1-2-5 steps alone would give one)."""
    from edgecompress.report.plots import _log_x, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots()
    ax.scatter([low, high], [1.0, 2.0])
    _log_x(ax, span=high / low)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    plt.close(fig)
    assert len(labels) >= at_least, labels


def test_decision_tables_and_scratch_baseline(tmp_path: Path) -> None:
    """'Why this chain' and 'Calibration': every candidate with its val metrics and trial cost, the choice marked and
    explained, and the scratch baseline's test accuracy beside the shipped student's (both formats, same numbers)."""
    rows = [
        {"name": "scratch (ce)", "step": "loss", "val_accuracy": 0.801, "val_ece": 0.04, "val_nll": 0.61,
         "seconds": 1.25, "steps": 26},
        {"name": "kd T=2 α=0.5", "step": "loss", "val_accuracy": 0.834, "val_ece": 0.03, "val_nll": 0.52,
         "seconds": 1.5, "steps": 26, "chosen": True},
        {"name": "1 TA (0.22) + kd T=2 α=0.5", "step": "chain", "val_accuracy": 0.829, "seconds": 3.0, "steps": 52},
    ]  # fmt: skip
    report = Report(
        name="decide",
        decisions=[
            {"title": "Why this chain", "reason": "kd T=2 α=0.5 won", "rows": rows, "notes": ["Each trial: 26 steps"]},
            {
                "title": "Calibration",
                "reason": "ts: lowest val ECE",
                "rows": [
                    {"name": "ts", "val_accuracy": 0.9, "val_ece": 0.012, "chosen": True},
                    {"name": "mbls m=5 + ts", "val_accuracy": 0.88, "val_ece": 0.01, "note": "not eligible"},
                ],
            },
        ],  # fmt: skip
        scratch_baseline={"baseline_test_accuracy": 0.791, "student_test_accuracy": 0.826, "shipped": "student"},
    )
    out = write_report(report, tmp_path, plots=False)
    md, page = out["md"].read_text(), out["html"].read_text()
    assert "## Why this chain" in md and "## Calibration\n" in md
    assert "| kd T=2 α=0.5 | loss | 83.40% | 3.00% | 0.520 | 1.5 | 26 | yes |" in md
    assert "| 1 TA (0.22) + kd T=2 α=0.5 | chain | 82.90% | — | — | 3.0 | 52 |  |" in md
    assert "Choice: kd T=2 α=0.5 won." in md and "| mbls m=5 + ts |" in md and "not eligible" in md
    assert "test accuracy 79.10%" in md and "shipped distilled student: test accuracy 82.60%" in md
    for text in ("Why this chain", "83.40%", "79.10%", "not eligible"):
        assert text in page
    again = Report.model_validate(json.loads(out["json"].read_text()))
    assert again.decisions[0].rows[1].chosen and again.scratch_baseline.shipped == "student"
    with pytest.raises(ValidationError):
        Report(name="x", scratch_baseline={"shipped": "teacher"})
    # without a decision table (a fixed chain with trials.scratch_baseline: true) the baseline has its own section
    alone = Report(
        name="fixed",
        scratch_baseline={
            "baseline_test_accuracy": 0.9,
            "distilled_test_accuracy": 0.85,
            "distilled_val_accuracy": 0.86,
            "shipped": "baseline",
        },
    )
    md = write_report(alone, tmp_path / "alone", plots=False)["md"].read_text()
    assert "## Scratch baseline" in md and "beat the distilled student (test 85.00%, val 86.00%)" in md


def test_recommendation_ranks_at_the_targets_batch_size_when_given() -> None:
    """A run with a `target:` at batch 1 must not be recommended the artifact that is fastest only at batch 32."""
    rows = [
        BenchRow(device="x", artifact="small_batch_fast", latency_ms={1: {"p50": 1.0}, 32: {"p50": 10.0}},
                 accuracy=0.9, ece=0.02),
        BenchRow(device="x", artifact="large_batch_fast", latency_ms={1: {"p50": 2.0}, 32: {"p50": 5.0}},
                 accuracy=0.9, ece=0.02),
    ]  # fmt: skip
    assert recommend(rows, reference_accuracy=0.9)[0]["artifact"] == "large_batch_fast"
    rec = recommend(rows, reference_accuracy=0.9, batch=1)[0]
    assert (rec["artifact"], rec["batch"]) == ("small_batch_fast", 1)
    assert recommend(rows, reference_accuracy=0.9, batch=8)[0]["artifact"] == "large_batch_fast"  # not measured at 8
