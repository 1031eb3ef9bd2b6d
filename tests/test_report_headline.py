"""The headline (teacher → shipped artifact per device) and the named evaluation sets of the report's accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompress.measurements import BenchRow
from edgecompress.report import ModelEntry, Report, recommend, write_report
from edgecompress.report.headline import build_headline, headline_markdown, headline_text, headline_view

REQUIRED = ["format", "precision", "params", "macs", "size_bytes", "accuracy", "ece", "nll", "brier", "temperature",
            "device"]  # fmt: skip


def _entry(name: str, role: str, **kw) -> ModelEntry:
    return ModelEntry(name=name, role=role, **(dict.fromkeys(REQUIRED) | kw))


def _row(device: str, artifact: str, p50s: dict[int, float], **kw) -> BenchRow:
    lat = {b: {"p50": p, "p90": 1.1 * p, "p99": 1.3 * p} for b, p in p50s.items()}
    return BenchRow.model_validate({"device": device, "artifact": artifact, "format": "onnx", "latency_ms": lat,
                                    "throughput": {b: 1000 * b / p for b, p in p50s.items()}, **kw})  # fmt: skip


def _report(**kw) -> Report:
    """Two devices; on x86 the teacher's reference is measured, on the phone it failed. The device rows evaluate
    2,000 of the 10,000 test images, so their accuracies differ from the whole-split ones of the models."""
    models = [
        _entry("teacher", "teacher", format="pytorch", macs=45_800_000, params=449_000, accuracy=0.9012, ece=0.021),
        _entry("student", "student", format="pytorch", macs=3_600_000, params=30_000, accuracy=0.8801, ece=0.015,
               parent="teacher"),
        _entry("onnx-fp32", "artifact", format="onnx", precision="fp32", accuracy=0.8801, ece=0.015,
               size_bytes=130_000, runtime="onnxruntime"),
        _entry("onnx-int8", "artifact", format="onnx", precision="int8", accuracy=0.8795, ece=0.017,
               size_bytes=40_000, runtime="onnxruntime"),
        _entry("teacher-onnx-fp32", "artifact", format="onnx", precision="fp32", accuracy=0.9010, ece=0.019,
               size_bytes=1_800_000, runtime="onnxruntime", reference=True, parent="teacher"),
    ]  # fmt: skip
    rows = [
        _row("x86", "onnx-fp32", {1: 0.30, 32: 4.0}, accuracy=0.8935, ece=0.02, eval_samples=2000),
        _row("x86", "onnx-int8", {1: 0.20, 32: 2.0}, accuracy=0.8930, ece=0.02, eval_samples=2000),
        _row("phone", "onnx-int8", {1: 1.5}, accuracy=0.8930, ece=0.02, eval_samples=2000),
    ]
    reference = [
        _row("x86", "teacher-onnx-fp32", {1: 1.10, 32: 40.0}, accuracy=0.905, ece=0.02, eval_samples=2000),
        BenchRow(device="phone", artifact="teacher-onnx-fp32", ok=False, error="adb: device offline"),
    ]
    recs = recommend(rows, reference_accuracy=0.8935, max_accuracy_drop=0.01)
    return Report(name="h", models=models, benchmarks=rows, reference_benchmarks=reference, recommendations=recs,
                  test_samples=10_000, **kw)  # fmt: skip


def test_speed_up_is_the_teacher_over_the_shipped_artifact_measured_on_the_same_device() -> None:
    report = _report()
    h = build_headline(report, bundles={"onnx-int8": "bundles/onnx-int8"})
    x86, phone = h.devices
    assert (x86.device, x86.artifact, x86.bundle) == ("x86", "onnx-int8", "bundles/onnx-int8")
    assert [(p.batch, p.teacher_ms, p.shipped_ms) for p in x86.points] == [(1, 1.10, 0.20), (32, 40.0, 2.0)]
    assert [p.speedup for p in x86.points] == [pytest.approx(5.5), pytest.approx(20.0)]
    assert x86.speedup_note is None
    # the headline's accuracies are the whole test split's (the models'), not a device's 2,000-image subset
    assert (h.teacher.name, h.teacher.accuracy, h.teacher.macs) == ("teacher-onnx-fp32", 0.9010, 45_800_000)
    assert (x86.shipped.accuracy, x86.shipped.size_bytes, x86.shipped.macs) == (0.8795, 40_000, 3_600_000)
    assert h.evaluated_on == "all 10,000 test images"
    # on the phone the teacher's reference failed: no ratio, and the headline says why
    assert phone.artifact == "onnx-int8" and all(p.speedup is None for p in phone.points)
    assert "failed on phone: adb: device offline" in phone.speedup_note
    text = headline_text(h)
    for line in ("p50 batch 32  40.0 ms", "20.0× faster", "−2.15 pp", "45.0× smaller", "12.7× fewer",
                 "Recommended on x86: onnx-int8 → bundle bundles/onnx-int8."):  # fmt: skip
        assert line in text, (line, text)


def test_report_begins_with_the_same_headline_in_markdown_and_html(tmp_path: Path) -> None:
    out = write_report(_report(warnings=["one"]), tmp_path, plots=False)
    md, page = out["md"].read_text(), out["html"].read_text()
    assert md.index("## Headline") < md.index("## Warnings") < md.index("## Models")
    assert page.index('<section id="headline"') < page.index("<h2>Warnings</h2>")
    for cell in ("20.0× faster", "5.50× faster", "87.95%", "90.10%", "1 warning(s)"):
        assert cell in md and cell in page, cell
    stored = Report.model_validate(json.loads(out["json"].read_text()))  # the verdict is in report.json too
    assert stored.headline is not None and stored.headline.devices[0].points[1].speedup == pytest.approx(20.0)


def test_device_table_names_its_subset_and_the_models_their_split(tmp_path: Path) -> None:
    md = write_report(_report(), tmp_path, plots=False)["md"].read_text()
    devices = md[md.index("## Devices × artifacts") :]
    assert "measured on each device on the first 2,000 of the 10,000 test images" in devices
    assert "| Accuracy (device) | ECE (device) |" in devices and "89.35%" in devices
    assert "reference (the teacher): not shipped" in devices  # the teacher's rows, marked
    models = md[md.index("## Models") :]
    assert "Accuracy, ECE, NLL and Brier on all 10,000 test images" in models
    # devices that evaluated the whole split: no note, plain headers
    whole = _report().model_copy(update={"test_samples": 2000})
    md = write_report(whole, tmp_path / "whole", plots=False)["md"].read_text()
    assert "measured on each device on the first" not in md and "| Accuracy | ECE |" in md


def test_without_a_teacher_reference_the_headline_says_why() -> None:
    report = _report().model_copy(update={"reference_benchmarks": []})
    h = build_headline(report, reference_note="the teacher's FP32 export failed: ExportError: no")
    assert all(p.speedup is None and p.teacher_ms is None for p in h.devices[0].points)
    assert h.devices[0].speedup_note == "speed-up not measured: the teacher's FP32 export failed: ExportError: no"
    assert "speed-up not measured: the teacher's FP32 export failed" in headline_markdown(h)
    nothing = Report(name="empty")
    assert headline_view(build_headline(nothing)).tables == []


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"difference": 0.004, "stderr": 0.006, "n": 5000, "significant": False},
         "Difference distilled − scratch on val: +0.40 ± 0.60 pp (n = 5,000): no significant difference."),
        ({"difference": 0.021, "stderr": 0.005, "n": 5000, "significant": True},
         "+2.10 ± 0.50 pp (n = 5,000): significant."),
        ({}, "Shipped the distilled student: val 88.40% vs 87.90% for the same student trained on labels alone"),
    ],
)  # fmt: skip
def test_what_was_shipped_and_why(extra: dict, expected: str) -> None:
    base = {"baseline_val_accuracy": 0.879, "distilled_val_accuracy": 0.884, "student_val_accuracy": 0.884,
            "baseline_test_accuracy": 0.87, "student_test_accuracy": 0.875, "shipped": "student"}  # fmt: skip
    h = build_headline(_report(scratch_baseline=base | extra))
    assert expected in h.choice, h.choice
    if not extra:
        assert "±" not in h.choice
    scratch = build_headline(_report(scratch_baseline=base | {"shipped": "baseline", "distilled_val_accuracy": 0.86}))
    assert scratch.choice.startswith("Shipped the student trained on labels alone: it beat the distilled student")


def test_the_pipeline_passes_the_verdicts_new_keys_through() -> None:
    """The distill stage's scratch verdict (difference, stderr, n, significant) reaches the report where present."""
    from edgecompress.pipeline.entries import scratch_baseline_entry
    from edgecompress.pipeline.results import DistillResult
    from edgecompress.report.schema import ScratchBaseline

    members = [{"name": "teacher", "role": "teacher"}, {"name": "student", "role": "student", "accuracy": 0.9}]
    verdict = {"val_accuracy": 0.88, "test": {"accuracy": 0.87}, "shipped": False, "difference": 0.01,
               "stderr": 0.004, "n": 6000, "significant": True}  # fmt: skip
    distill = DistillResult(student_spec={}, chain={"members": members}, scratch_baseline=verdict)
    entry = ScratchBaseline.model_validate(scratch_baseline_entry(distill))
    assert (entry.difference, entry.stderr, entry.n, entry.significant) == (0.01, 0.004, 6000, True)
    today = DistillResult(student_spec={}, chain={"members": members}, scratch_baseline={"val_accuracy": 0.88})
    assert ScratchBaseline.model_validate(scratch_baseline_entry(today)).difference is None
