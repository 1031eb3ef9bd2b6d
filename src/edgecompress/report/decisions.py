"""The report's decision tables: "Why this chain" (the decide stage's trials) and "Calibration" (method auto)."""

from __future__ import annotations

from edgecompress.report.render import Section, _fmt_s, fmt_count, fmt_float, fmt_pct, fmt_text
from edgecompress.report.schema import Report


def decision_sections(report: Report) -> list[Section]:
    """One table per decision measured in the run (candidates, val metrics, trial cost, the choice), and the
    scratch baseline beside the shipped student."""
    out = []
    for d in report.decisions:
        paragraphs = [f"Choice: {d.reason}."]
        if d.title == "Why this chain" and report.scratch_baseline is not None:
            b = report.scratch_baseline
            paragraphs.append(
                f"Scratch baseline (same student on labels alone, final budget): test accuracy "
                f"{fmt_pct(b.baseline_test_accuracy)} (val {fmt_pct(b.baseline_val_accuracy)}); shipped "
                f"{'student' if b.shipped == 'student' else 'scratch baseline'}: test accuracy "
                f"{fmt_pct(b.student_test_accuracy)} (val {fmt_pct(b.student_val_accuracy)})"
                + (" — scratch won the trials, so they are the same model." if b.same_model else ".")
            )
        out.append(
            Section(
                d.title,
                headers=[
                    "Candidate",
                    "Step",
                    "Val accuracy",
                    "Val ECE",
                    "Val NLL",
                    "Trial s",
                    "Trial steps",
                    "Chosen",
                    "Note",
                ],  # fmt: skip
                rows=[
                    [
                        r.name,
                        fmt_text(r.step),
                        fmt_pct(r.val_accuracy),
                        fmt_pct(r.val_ece),
                        fmt_float(r.val_nll),
                        _fmt_s(r.seconds),
                        fmt_count(r.steps),
                        "yes" if r.chosen else "",
                        r.note,
                    ]  # fmt: skip
                    for r in d.rows
                ],
                paragraphs=paragraphs + list(d.notes),
            )
        )
    return out
