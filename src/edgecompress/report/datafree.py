"""The report's data-free section: the plan, the synthesis time and its speed-up against DeepInversion, the student
against its teacher round by round (the curve's numbers; its PNG and the per-class sample grid are in Figures)."""

from __future__ import annotations

from typing import Any

from edgecompress.report.render import Section, _fmt_s, fmt_count, fmt_pct, fmt_text, num


def datafree_section(datafree: dict[str, Any]) -> Section:
    """One section from a data-free run's summary (``DataFreeResult.summary()``)."""
    paragraphs = []
    if datafree.get("plan"):
        paragraphs.append(f"Plan (from a measured pilot, logged before the run): {datafree['plan']}.")
    synth, images = num(datafree.get("synthesis_seconds")), num(datafree.get("pool_images"))
    rate = num(datafree.get("synthesis_images_per_second"))
    paragraphs.append(
        f"Method {fmt_text(datafree.get('method'))}: synthesis {_fmt_s(synth)} s for {fmt_count(images)} images "
        f"({_fmt_s(rate)} images/s), student training {_fmt_s(datafree.get('student_seconds'))} s."
    )
    di, speedup = (
        num(datafree.get("deepinversion_estimate_seconds")),
        num(datafree.get("deepinversion_estimate_speedup")),
    )
    if di is not None and speedup is not None:
        paragraphs.append(
            f"Speed-up against DeepInversion: at its published 2,000 steps per batch it would need ~{di / 3600:.1f} h "
            f"of synthesis for the same rounds, ~{speedup:.0f}× this run's (estimated from a DeepInversion step timed "
            "in the pilot; measured side by side in benchmarks/datafree.py)."
        )
    s_acc, t_acc = num(datafree.get("val_accuracy")), num(datafree.get("teacher_val_accuracy"))
    curve = datafree.get("curve") or []
    if s_acc is None:
        paragraphs.append(
            "No labelled set was given: the student's accuracy was not measured during synthesis (no curve) and its "
            "ECE was not measured; the bundles ship uncalibrated (temperature 1)."
        )
    else:
        paragraphs.append(
            f"Student on the labelled val set: {fmt_pct(s_acc)} (teacher {fmt_pct(t_acc)}); accuracy against rounds "
            "below and in Figures."
        )
    return Section(
        "Data-free distillation",
        paragraphs=paragraphs,
        headers=["Rounds", "Student val accuracy"] if curve else [],
        rows=[[fmt_text(int(r)), fmt_pct(a)] for r, a in curve],
    )
