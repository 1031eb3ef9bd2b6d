"""The report's decision tables: "Why this chain" (the decide stage's trials) and "Calibration" (method auto)."""

from __future__ import annotations

from edgecompress.report.render import Section, _fmt_s, fmt_count, fmt_float, fmt_pct, fmt_text
from edgecompress.report.schema import Report, ScratchBaseline


def decision_sections(report: Report) -> list[Section]:
    """One table per decision measured in the run (candidates, val metrics, trial cost, the choice), and the
    scratch baseline beside the shipped student."""
    out = []
    for d in report.decisions:
        paragraphs = [f"Choice: {d.reason}."]
        if d.title == "Why this chain" and report.scratch_baseline is not None:
            paragraphs.append(_baseline_line(report.scratch_baseline))
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
    if report.scratch_baseline is not None and not any(d.title == "Why this chain" for d in report.decisions):
        out.append(Section("Scratch baseline", paragraphs=[_baseline_line(report.scratch_baseline)]))
    if report.attempts:
        out.append(_attempts_section(report))
    return out


def _attempts_section(report: Report) -> Section:
    """The student's attempts when the quality gate escalated: each try, why it was made, and its outcome."""
    rows = [
        [
            str(a.index + 1),
            "given model" if a.prune_ratio is None else f"{a.prune_ratio:g}",
            fmt_count(a.macs),
            str(a.epochs),
            fmt_pct(a.val_accuracy),
            fmt_pct(a.teacher_val_accuracy),
            "passed" if a.passed else "missed",
            _fmt_s(a.seconds),
            fmt_text(a.why),
        ]
        for a in report.attempts
    ]
    return Section(
        "Quality gate: the student's attempts",
        headers=["Attempt", "MAC ratio", "MACs", "Epochs", "Val accuracy", "Teacher val", "Gate", "Time", "Why"],
        rows=rows,
        paragraphs=[
            "The first attempt missed distill.max_accuracy_drop; each next one was chosen from the one "
            "before (twice the epochs when it was still improving, else the next larger student), within "
            "distill.escalation_budget."
        ],  # fmt: skip
    )


def _baseline_line(b: ScratchBaseline) -> str:
    """The scratch baseline's accuracy beside the shipped (and the distilled) student's, and the verdict."""
    line = (
        f"Scratch baseline (the same student on labels alone, final budget): test accuracy "
        f"{fmt_pct(b.baseline_test_accuracy)} (val {fmt_pct(b.baseline_val_accuracy)})"
    )
    if b.same_model:
        return line + "; no teacher was in the loop, so the shipped student is this model."
    if b.reason:
        test = ""
        if b.test_difference is not None and b.test_stderr is not None:
            test = f" On test: {100 * b.test_difference:+.2f} ± {100 * b.test_stderr:.2f} points."
        dist = (f" Distilled student: test {fmt_pct(b.distilled_test_accuracy)} (val "
                f"{fmt_pct(b.distilled_val_accuracy)}).")  # fmt: skip
        return f"{line}.{dist} Verdict: {fmt_text(b.reason)}.{test}"
    if b.shipped == "baseline":
        return line + (f"; it beat the distilled student (test {fmt_pct(b.distilled_test_accuracy)}, val "
                       f"{fmt_pct(b.distilled_val_accuracy)}) on val and was shipped instead.")  # fmt: skip
    return line + (f"; shipped distilled student: test accuracy {fmt_pct(b.student_test_accuracy)} (val "
                   f"{fmt_pct(b.student_val_accuracy)}).")  # fmt: skip
