"""The report's data-free section: plan, synthesis time, speed-up against DeepInversion, the curve, and what it says
when no labelled set was given."""

from __future__ import annotations

from pathlib import Path

from edgecompress.report import Report, write_report

SUMMARY = {
    "method": "fastdfkd",
    "plan": "60 rounds × k = 5, 20 student steps per round after 5 warm-up rounds (batches 128 / 128): ~6.1 min",
    "rounds": 60,
    "synthesis_seconds": 120.0,
    "student_seconds": 200.0,
    "pool_images": 7680,
    "synthesis_images_per_second": 64.0,
    "deepinversion_estimate_seconds": 36000.0,
    "deepinversion_estimate_speedup": 300.0,
    "val_accuracy": 0.9833,
    "teacher_val_accuracy": 0.9944,
    "curve": [[10, 0.86], [60, 0.9833]],
    "resumed_from_round": 0,
    "config": {"method": "fastdfkd"},
}


def test_datafree_section_shows_plan_speed_up_and_curve(tmp_path: Path) -> None:
    md = write_report(Report(name="df", datafree=SUMMARY), tmp_path)["md"].read_text()
    assert "## Data-free distillation" in md
    assert "Plan (from a measured pilot, logged before the run): 60 rounds × k = 5" in md
    assert "synthesis 120.0 s for 7.68k images (64.0 images/s)" in md
    assert "~10.0 h of synthesis for the same rounds, ~300× this run's" in md
    assert "| Rounds | Student val accuracy |" in md and "| 60 | 98.33% |" in md
    assert "ECE was not measured" not in md


def test_without_a_labelled_set_the_section_says_ece_was_not_measured(tmp_path: Path) -> None:
    unlabelled = {**SUMMARY, "val_accuracy": None, "teacher_val_accuracy": None, "curve": []}
    md = write_report(Report(name="df", datafree=unlabelled), tmp_path)["md"].read_text()
    assert "ECE was not measured" in md and "bundles ship uncalibrated" in md
    assert "| Rounds |" not in md
