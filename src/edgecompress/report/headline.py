"""The headline: what a person reads first — teacher → shipped artifact per device, what was shipped and why.

:func:`build_headline` makes a typed :class:`~edgecompress.report.schema.Headline` from a report's own records (the
models' whole-test metrics, the device rows of the shipped artifacts and of the teacher's reference artifact measured
in the same run, the recommendations, the scratch baseline). :func:`headline_view` lays it out once — a few lines and
one small table per device — and the renderers here (Markdown, HTML, plain text) and the command line's rich console
draw that same view, so every place shows the same numbers.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from edgecompress.measurements import UNSTABLE_CV, BenchRow
from edgecompress.report.evalsets import test_split
from edgecompress.report.render import DASH, fmt_bytes, fmt_count, fmt_ms, fmt_pct, num
from edgecompress.report.schema import (
    Headline,
    HeadlineDevice,
    HeadlineModel,
    HeadlinePoint,
    ModelEntry,
    Report,
    ScratchBaseline,
)

TITLE = "Headline"


# --------------------------------------------------------------------------------------------------- building


def build_headline(
    report: Report, *, bundles: dict[str, str] | None = None, reference_note: str | None = None
) -> Headline:
    """The headline of ``report``.

    Accuracy and ECE are the whole test split's (each artifact through its own runtime), never a device's subset;
    latencies and the speed-up are p50s measured in this run on each device, the teacher's reference artifact beside
    the recommended one.

    Args:
        report: the run's report (models, device rows, reference rows, recommendations, scratch baseline).
        bundles: artifact name -> its bundle folder relative to the run folder, for the artifacts that are bundled.
        reference_note: why the teacher's reference artifact is missing or failed, when it is (the headline then says
            the speed-up was not measured and why).
    """
    teacher = next((m for m in report.models if m.role == "teacher"), None)
    student = next((m for m in report.models if m.role == "student"), None)
    ref = next((m for m in report.models if m.reference), None)
    head_teacher = None
    if ref is not None and ref.accuracy is not None:
        head_teacher = _side(ref, macs=teacher.macs if teacher else None)
    elif teacher is not None:
        head_teacher = _side(teacher, macs=teacher.macs)
    by_name = {m.name: m for m in report.models if m.role == "artifact" and not m.reference}
    recs = {r.device: r for r in report.recommendations}
    out = []
    for device in dict.fromkeys([*recs, *(r.device for r in report.benchmarks)]):
        rec = recs.get(device)
        name = rec.artifact if rec is not None else None
        entry = by_name.get(name) if name else None
        teacher_row = _row(report.reference_benchmarks, device, None)
        points = _points(teacher_row, _row(report.benchmarks, device, name))
        out.append(
            HeadlineDevice(
                device=device,
                artifact=name,
                reason=rec.reason if rec is not None else "no recommendation was made on this device",
                bundle=(bundles or {}).get(name) if name else None,
                shipped=_side(entry, macs=student.macs if student else None) if entry else None,
                points=points,
                speedup_note=None
                if any(p.speedup for p in points)
                else _speedup_note(report, device, teacher_row, entry, reference_note),
            )
        )
    return Headline(
        teacher=head_teacher,
        devices=out,
        evaluated_on=test_split(report),
        choice=_choice(report.scratch_baseline, student),
        warnings=len(report.warnings),
    )


def _side(entry: ModelEntry, *, macs: int | None) -> HeadlineModel:
    runtime = entry.runtime or ("pytorch" if entry.format == "pytorch" else None)
    return HeadlineModel(name=entry.name, accuracy=entry.accuracy, ece=entry.ece, size_bytes=entry.size_bytes,
                         macs=macs, runtime=runtime)  # fmt: skip


def _row(rows: list[BenchRow], device: str, artifact: str | None) -> BenchRow | None:
    """The successful row of ``artifact`` on ``device`` (any artifact when None: the reference rows)."""
    return next((r for r in rows if r.device == device and r.ok and (artifact is None or r.artifact == artifact)), None)


def _points(teacher: BenchRow | None, shipped: BenchRow | None) -> list[HeadlinePoint]:
    batches = sorted(set(shipped.latency_ms if shipped else ()) | set(teacher.latency_ms if teacher else ()))
    out = []
    for b in batches:
        t = teacher.p50_at(b) if teacher else None
        s = shipped.p50_at(b) if shipped else None
        shaky = any(r is not None and r.latency_cv.get(b, 0.0) > UNSTABLE_CV for r in (teacher, shipped))
        ratio = t / s if t is not None and s else None
        out.append(HeadlinePoint(batch=b, teacher_ms=t, shipped_ms=s, speedup=ratio, unstable=shaky))
    return out


def _speedup_note(
    report: Report, device: str, teacher: BenchRow | None, shipped: ModelEntry | None, reference_note: str | None
) -> str:
    """Why there is no speed-up on ``device``: nothing shipped there, the teacher failed there, or no teacher."""
    if shipped is None:
        return "speed-up not measured: no artifact is recommended on this device"
    failed = next((r for r in report.reference_benchmarks if r.device == device and not r.ok), None)
    if failed is not None:
        return f"speed-up not measured: the teacher's reference artifact failed on {device}: {failed.failure}"
    if teacher is not None:
        return "speed-up not measured: the teacher and the shipped artifact share no batch size"
    return f"speed-up not measured: {reference_note or 'the teacher has no reference artifact in this run'}"


def _choice(b: ScratchBaseline | None, student: ModelEntry | None) -> str:
    """What was shipped (the distilled student or the one trained on labels alone) and why, with the measured gap."""
    if b is None:
        what = "the distilled student" if student is not None and student.parent else "the student"
        return (f"Shipped {what}; no scratch baseline was trained in this run, so whether distillation beat "
                "training on labels alone is not measured (distill.trials.scratch_baseline).")  # fmt: skip
    if b.same_model:
        text = (f"Shipped the student trained on labels alone: no teacher was in the loop "
                f"(val {fmt_pct(b.baseline_val_accuracy)}).")  # fmt: skip
    elif b.shipped == "baseline":
        text = (f"Shipped the student trained on labels alone: it beat the distilled student significantly on val "
                f"({fmt_pct(b.baseline_val_accuracy)} vs {fmt_pct(b.distilled_val_accuracy)}; test "
                f"{fmt_pct(b.baseline_test_accuracy)} vs {fmt_pct(b.distilled_test_accuracy)}).")  # fmt: skip
    else:
        text = (f"Shipped the distilled student: val {fmt_pct(b.distilled_val_accuracy or b.student_val_accuracy)} vs "
                f"{fmt_pct(b.baseline_val_accuracy)} for the same student trained on labels alone (test "
                f"{fmt_pct(b.student_test_accuracy)} vs {fmt_pct(b.baseline_test_accuracy)}).")  # fmt: skip
    if b.difference is not None:
        gap = f"{100 * b.difference:+.2f}"
        if b.stderr is not None:
            gap += f" ± {100 * b.stderr:.2f}"
        text += f" Difference distilled − scratch on val: {gap} pp"
        text += f" (n = {b.n:,})" if b.n else ""
        if b.significant is False:
            text += ": no significant difference."
        elif b.significant:
            text += ": significant."
        else:
            text += "."
    return text


# --------------------------------------------------------------------------------------------------- layout


@dataclass
class HeadlineTable:
    """One device's comparison: a teacher row, a shipped row and a ratio row (cells already formatted)."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class HeadlineView:
    """The headline laid out once for every renderer: lines before the tables, the tables, lines after."""

    lead: list[str]
    tables: list[HeadlineTable]
    tail: list[str]


def _times(value: float | None) -> str:
    v = num(value)
    if v is None:
        return DASH
    return f"{v:.0f}×" if v >= 100 else f"{v:.1f}×" if v >= 10 else f"{v:.2f}×"


def _pp(shipped: float | None, teacher: float | None) -> str:
    s, t = num(shipped), num(teacher)
    return "" if s is None or t is None else f"{100 * (s - t):+.2f} pp".replace("-", "−")


def _fewer(teacher: int | float | None, shipped: int | float | None, word: str) -> str:
    t, s = num(teacher), num(shipped)
    return f"{_times(t / s)} {word}" if t and s else ""


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{fmt_ms(value)} ms"


def _device_table(h: Headline, d: HeadlineDevice) -> HeadlineTable:
    """Rows are measures, columns the teacher, the shipped artifact and the change: narrow enough for a terminal."""
    t = h.teacher or HeadlineModel(name=DASH)
    s = d.shipped or HeadlineModel(name="none qualifies" if d.artifact is None else d.artifact)
    rows = [
        ["Artifact", t.name, s.name, ""],
        ["Accuracy", fmt_pct(t.accuracy), fmt_pct(s.accuracy), _pp(s.accuracy, t.accuracy)],
        ["ECE", fmt_pct(t.ece), fmt_pct(s.ece), _pp(s.ece, t.ece)],
        ["Size", fmt_bytes(t.size_bytes), fmt_bytes(s.size_bytes), _fewer(t.size_bytes, s.size_bytes, "smaller")],
        ["MACs", fmt_count(t.macs), fmt_count(s.macs), _fewer(t.macs, s.macs, "fewer")],
    ]
    for p in d.points:
        change = (f"{_times(p.speedup)} faster" if p.speedup else "") + (" (unstable)" if p.unstable else "")
        rows.append([f"p50 batch {p.batch}", _ms(p.teacher_ms), _ms(p.shipped_ms), change])
    notes = [d.speedup_note] if d.speedup_note else []
    shaky = [p.batch for p in d.points if p.unstable]
    if shaky:
        notes.append(f"latency unstable at batch {', '.join(map(str, shaky))} (run-to-run p50 spread above "
                     f"{100 * UNSTABLE_CV:.0f} %): rerun on a quiet device before trusting the ratio")  # fmt: skip
    return HeadlineTable(title=f"On {d.device}", headers=["", "Teacher", "Shipped", "Change"], rows=rows, notes=notes)


def headline_view(h: Headline) -> HeadlineView:
    """The headline's lines and tables, ready for any renderer."""
    lead = [
        f"Accuracy and ECE on {h.evaluated_on}, each artifact through its own runtime (T folded in); p50 latency "
        "measured in this run on each device, the teacher's FP32 artifact beside the shipped one."
    ]
    tables = [_device_table(h, d) for d in h.devices if h.teacher is not None or d.shipped is not None]
    tail = []
    for d in h.devices:
        if d.artifact:
            tail.append(f"Recommended on {d.device}: {d.artifact}" + (f" → bundle {d.bundle}." if d.bundle else "."))
        else:
            tail.append(f"Recommended on {d.device}: none — {d.reason}")
    if h.choice:
        tail.append(h.choice)
    if h.warnings:
        tail.append(f"{h.warnings} warning(s) in this run: see the report's Warnings section.")
    return HeadlineView(lead=lead, tables=tables, tail=tail)


# --------------------------------------------------------------------------------------------------- renderers


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def headline_markdown(h: Headline) -> str:
    """The headline as a Markdown section (``## Headline``)."""
    view = headline_view(h)
    lines = [f"## {TITLE}", ""]
    lines += [line + "\n" for line in view.lead]
    for t in view.tables:
        lines += [f"**{t.title}**", ""]
        lines.append("| " + " | ".join(_md_cell(c) for c in t.headers) + " |")
        lines.append("|" + "|".join("---" for _ in t.headers) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
        lines += [""] + [f"*{_md_cell(n)}*\n" for n in t.notes]
    lines += [f"- {_md_cell(line)}" for line in view.tail]
    return "\n".join(lines).rstrip() + "\n"


def headline_html(h: Headline) -> str:
    """The headline as an HTML block (``<section id="headline">``)."""
    e = html.escape
    view = headline_view(h)
    parts = [f'<section id="headline" class="headline"><h2>{TITLE}</h2>']
    parts += [f"<p>{e(line)}</p>" for line in view.lead]
    for t in view.tables:
        head = "".join(f"<th>{e(c)}</th>" for c in t.headers)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in t.rows)
        parts.append(f"<h3>{e(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts += [f'<p class="note">{e(n)}</p>' for n in t.notes]
    if view.tail:
        parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in view.tail) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def headline_text(h: Headline) -> str:
    """The headline as plain text (a console without a terminal, a log): aligned columns, no markup."""
    view = headline_view(h)
    lines = [TITLE, *view.lead]
    for t in view.tables:
        widths = [max(len(str(c)) for c in col) for col in zip(t.headers, *t.rows, strict=True)]
        lines += ["", t.title]
        lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  for row in [t.headers, *t.rows]]  # fmt: skip
        lines += [f"  {n}" for n in t.notes]
    lines += [""] + view.tail
    return "\n".join(lines).rstrip() + "\n"
