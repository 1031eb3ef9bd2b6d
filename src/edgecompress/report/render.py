"""Write ``report.json``, ``report.md`` and a self-contained ``report.html`` (images embedded) into the run folder.

Both text formats are rendered from one list of sections, so they always show the same numbers. Missing values are
shown as "—", never as 0.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress._io import atomic_write_text
from edgecompress._text import printable
from edgecompress.errors import MissingExtraError
from edgecompress.measurements import UNSTABLE_CV, BenchRow, LatencyStats
from edgecompress.report.schema import ModelEntry, Report

log = logging.getLogger(__name__)

DASH = "—"
FIGURES_DIR = "figures"
_CHAIN_ROLES = ("teacher", "assistant", "student")


# --------------------------------------------------------------------------------------------------- formatting


def num(value: Any) -> float | None:
    """``value`` as a finite float for display, or None (missing, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt_pct(value: Any, digits: int = 2) -> str:
    """A fraction as a percentage (0.9123 -> "91.23%")."""
    v = num(value)
    return DASH if v is None else f"{100 * v:.{digits}f}%"


def fmt_ms(value: Any) -> str:
    """Milliseconds with 3 significant digits (2 -> "2.00", 0.01234 -> "0.0123", 1234 -> "1,234")."""
    v = num(value)
    if v is None:
        return DASH
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    text = f"{v:#.3g}"  # keep trailing zeros: 2 -> "2.00"
    return text[:-1] if text.endswith(".") else text


def fmt_float(value: Any, digits: int = 3) -> str:
    v = num(value)
    return DASH if v is None else f"{v:.{digits}f}"


def fmt_count(value: Any) -> str:
    """A count with a k/M/G suffix (1_234_567 -> "1.23M")."""
    v = num(value)
    if v is None:
        return DASH
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}"


def fmt_bytes(value: Any) -> str:
    v = num(value)
    if v is None:
        return DASH
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(v) >= div:
            return f"{v / div:.3g} {suffix}"
    return f"{v:.0f} B"


def fmt_rate(value: Any) -> str:
    v = num(value)
    return DASH if v is None else (f"{v:,.0f}/s" if v >= 100 else f"{v:.3g}/s")


def fmt_text(value: Any) -> str:
    return DASH if value is None or value == "" else str(value)


def _p50_cell(m: ModelEntry) -> str:
    table = sorted((int(b), s) for b, s in m.latency_ms.items())
    return ", ".join(f"b{b}: {fmt_ms(s.p50)}" for b, s in table) or DASH


# --------------------------------------------------------------------------------------------------- sections


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to the run folder)


def build_sections(report: Report) -> list[Section]:
    """The report's content, format-independent."""
    from edgecompress.report.evalsets import device_section, models_set  # import this module's Section

    models = report.models
    out = []
    if report.warnings:
        out.append(Section("Warnings", bullets=list(report.warnings)))
    out.append(
        Section(
            "Models",
            headers=[
                "Name",
                "Role",
                "Format",
                "Precision",
                "Params",
                "MACs",
                "Size",
                "Accuracy",
                "ECE",
                "NLL",
                "Brier",
                "T",
                "p50 ms (batch)",
                "Device",
            ],  # fmt: skip
            rows=[
                [
                    m.name,
                    m.role,
                    fmt_text(m.format),
                    fmt_text(m.precision),
                    fmt_count(m.params),
                    fmt_count(m.macs),
                    fmt_bytes(m.size_bytes),
                    fmt_pct(m.accuracy),
                    fmt_pct(m.ece),
                    fmt_float(m.nll),
                    fmt_float(m.brier, 4),
                    fmt_float(m.temperature),
                    _p50_cell(m),
                    fmt_text(m.device),
                ]  # fmt: skip
                for m in models
            ],
            paragraphs=[models_set(report)] if models else ["No models recorded."],
        )
    )
    calib = [m for m in models if any(v is not None for v in (m.ece, m.ece_before_ts, m.nll_before_ts, m.mce))]
    out.append(
        Section(
            "Calibration before / after temperature scaling",
            headers=[
                "Name",
                "ECE before",
                "ECE after",
                "NLL before",
                "NLL after",
                "T",
                "Adaptive ECE",
                "Classwise ECE",
                "MCE",
            ],  # fmt: skip
            rows=[
                [
                    m.name,
                    fmt_pct(m.ece_before_ts),
                    fmt_pct(m.ece),
                    fmt_float(m.nll_before_ts),
                    fmt_float(m.nll),
                    fmt_float(m.temperature),
                    fmt_pct(m.adaptive_ece),
                    fmt_pct(m.classwise_ece),
                    fmt_pct(m.mce),
                ]  # fmt: skip
                for m in calib
            ],
            paragraphs=[] if calib else ["ECE not measured for any model."],
        )
    )
    notes = [f"{m.name}: {note}" for m in models for note in m.notes]
    if notes:
        out.append(Section("Notes", bullets=notes))
    chain = [m for m in models if m.role in _CHAIN_ROLES]
    if chain:
        out.append(
            Section(
                "Distillation chain and fidelity",
                headers=[
                    "Name",
                    "Role",
                    "Parent",
                    "Params",
                    "MACs",
                    "Accuracy",
                    "ECE",
                    "Agreement with teacher",
                    "KL(teacher‖model)",
                ],  # fmt: skip
                rows=[
                    [
                        m.name,
                        m.role,
                        fmt_text(m.parent),
                        fmt_count(m.params),
                        fmt_count(m.macs),
                        fmt_pct(m.accuracy),
                        fmt_pct(m.ece),
                        fmt_pct(m.fidelity_agreement),
                        fmt_float(m.fidelity_kl, 4),
                    ]  # fmt: skip
                    for m in chain
                ],
            )
        )
    arts = [m for m in models if m.role == "artifact"]
    if arts:
        out.append(
            Section(
                "Exported artifacts",
                headers=[
                    "Name",
                    "Format",
                    "Precision",
                    "Runtime",
                    "Precision used",
                    "Size",
                    "Parity max |Δ|",
                    "Accuracy",
                    "ECE",
                    "NLL",
                ],  # fmt: skip
                rows=[
                    [
                        m.name,
                        fmt_text(m.format),
                        fmt_text(m.precision),
                        fmt_text(m.runtime),
                        fmt_text(m.precision_used),
                        fmt_bytes(m.size_bytes),
                        _fmt_sci(m.parity_max_abs_diff),
                        fmt_pct(m.accuracy),
                        fmt_pct(m.ece),
                        fmt_float(m.nll),
                    ]  # fmt: skip
                    for m in arts
                ],
            )
        )
    out.append(device_section(report))
    if report.recommendations:
        out.append(
            Section(
                "Recommendations",
                headers=["Device", "Recommended artifact", "Reason"],
                rows=[[r.device, r.artifact or "none qualifies", r.reason] for r in report.recommendations],
            )
        )
    if report.stages:
        total = sum(num(s.seconds) or 0.0 for s in report.stages)
        out.append(
            Section(
                "Stage times",
                headers=["Stage", "Seconds", "Cached", "Output"],
                rows=[
                    [s.name, _fmt_s(s.seconds), "yes" if s.cached else "no", fmt_text(s.output_dir)]
                    for s in report.stages
                ],  # fmt: skip
                paragraphs=[f"Total: {_fmt_s(total)} s."],
            )
        )
    from edgecompress.report.decisions import decision_sections  # imports this module's Section and formatters

    out += decision_sections(report)
    if report.datafree:
        from edgecompress.report.datafree import datafree_section  # imports this module's Section and formatters

        out.append(datafree_section(report.datafree))
    images = [(name.replace("_", " "), rel) for name, rel in report.figures.items()]
    images += [(f"reliability: {m.name}", m.reliability_png) for m in models if m.reliability_png]
    if images:
        out.append(Section("Figures", images=list(dict.fromkeys(images))))
    if report.environment:
        out.append(_kv_section("Environment", report.environment))
    return out


def _fmt_sci(value: Any) -> str:
    v = num(value)
    return DASH if v is None else f"{v:.2e}"


def _fmt_s(value: Any) -> str:
    v = num(value)
    return DASH if v is None else f"{v:.1f}"


def _kv_section(title: str, data: dict[str, Any]) -> Section:
    rows = []
    for key, value in data.items():
        text = json.dumps(value, default=str) if isinstance(value, dict | list) else fmt_text(value)
        rows.append([str(key), text])
    return Section(title, headers=["Key", "Value"], rows=rows)


def _bench_section(rows: Sequence[BenchRow], reference_ids: Collection[int] = frozenset()) -> Section:
    """The device × artifact table; rows whose id is in ``reference_ids`` are marked as the teacher's reference."""
    sec = Section(
        "Devices × artifacts",
        headers=[
            "Device",
            "Artifact",
            "Format",
            "Precision",
            "Batch",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "Throughput",
            "Accuracy",
            "ECE",
            "Energy mJ",
            "Notes",
        ],  # fmt: skip
    )
    if not rows:
        sec.paragraphs.append("No device benchmarks in this run.")
        sec.headers = []
    for row in rows:
        common = [row.device, row.artifact, fmt_text(row.format), fmt_text(row.precision)]
        note = f"failed: {row.failure}" if row.failure else ""
        if row.calibration_measured_on == "host runtime":
            note = "accuracy/ECE from the host runtime"
        if id(row) in reference_ids:
            note = "; ".join(x for x in ("reference (the teacher): not shipped", note) if x)
        per_batch: list[tuple[int | None, LatencyStats | None]] = [*sorted(row.latency_ms.items())] or [(None, None)]
        for batch, stats in per_batch:
            lat = [fmt_ms(getattr(stats, q) if stats else None) for q in ("p50", "p90", "p99")]
            tp = fmt_rate(row.throughput_at(batch))
            quality = [fmt_pct(row.accuracy), fmt_pct(row.ece), fmt_ms(row.energy_at(batch))]
            cv = row.latency_cv.get(batch) if batch is not None else None
            flag = f"unstable: p50 spread {100 * cv:.0f} %" if cv is not None and cv > UNSTABLE_CV else ""
            sec.rows.append([*common, fmt_text(batch), *lat, tp, *quality, "; ".join(x for x in (note, flag) if x)])
    return sec


# --------------------------------------------------------------------------------------------------- renderers


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, sections: list[Section]) -> str:
    lines = [f"# edgecompress report: {report.name}", ""]
    lines.append(f"Created {report.created}" + (f" · config hash `{report.config_hash}`" if report.config_hash else ""))
    if report.headline is not None:
        from edgecompress.report.headline import headline_markdown  # imports this module's formatters

        lines += ["", headline_markdown(report.headline).rstrip()]
    for sec in sections:
        lines += ["", f"## {sec.title}", ""]
        lines += [p + "\n" for p in sec.paragraphs]
        lines += [f"- {_md_cell(b)}" for b in sec.bullets]
        if sec.headers and sec.rows:
            lines.append("| " + " | ".join(_md_cell(h) for h in sec.headers) + " |")
            lines.append("|" + "|".join("---" for _ in sec.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in sec.rows]
        for caption, rel in sec.images:
            lines += [f"![{caption}]({rel})", f"*{caption}*", ""]
    # names, labels and messages come from configs, runs and devices: no control character reaches a terminal or
    # viewer (the HTML report escapes them as HTML)
    return "\n".join(printable(line) for line in "\n".join(lines).split("\n")).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
padding:0 1em}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;max-width:100%}th,td{border:1px solid #ccc;
padding:.25em .5em;text-align:right;overflow-wrap:break-word}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em 1em .5em 0;max-width:100%}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.meta{color:#666;font-size:.9em}
.headline{background:#f6f9fc;border:1px solid #cfdce8;border-radius:6px;padding:.2em 1em .6em;margin:1em 0}
.headline h2{border:none;margin-top:.6em}.headline h3{font-size:1em;margin:.8em 0 .2em}
.headline table{font-size:.95em;background:#fff}.headline .note{color:#8a5300;font-size:.9em;margin:.2em 0}
"""


def _img_src(run_dir: Path, rel: str) -> str | None:
    """The PNG ``rel`` (inside the run: never a file elsewhere, through ``..`` or a link) as a data URL."""
    from edgecompress._contain import contained
    from edgecompress.errors import ConfigError

    try:
        path = contained(run_dir, rel, what="the report")
    except ConfigError as exc:
        log.warning("report figure not embedded: %s", exc.problem)
        return None
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(report: Report, sections: list[Section], run_dir: Path) -> str:
    e = html.escape
    meta = f"Created {e(report.created)}" + (f" · config hash <code>{e(report.config_hash)}</code>"
                                             if report.config_hash else "")  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>edgecompress report: {e(report.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>edgecompress report: {e(report.name)}</h1>",
        f'<p class="meta">{meta}</p>',
    ]
    if report.headline is not None:
        from edgecompress.report.headline import headline_html  # imports this module's formatters

        parts.append(headline_html(report.headline))
    for sec in sections:
        parts.append(f"<h2>{e(sec.title)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in sec.paragraphs]
        if sec.bullets:
            parts.append("<ul>" + "".join(f"<li>{e(b)}</li>" for b in sec.bullets) + "</ul>")
        if sec.headers and sec.rows:
            head = "".join(f"<th>{e(h)}</th>" for h in sec.headers)
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in sec.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        for caption, rel in sec.images:
            src = _img_src(run_dir, rel)
            img = f'<img src="{src}" alt="{e(caption)}">' if src else f"<p>(missing image: {e(rel)})</p>"
            parts.append(f"<figure>{img}<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------- entry point


def _relative(path: Path, run_dir: Path) -> str:
    try:
        return Path(os.path.relpath(path, run_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return str(path)


def _make_plots(report: Report, run_dir: Path) -> dict[str, str]:
    from edgecompress.report import plots

    figures = dict(report.figures)
    try:
        if report.benchmarks and "latency_accuracy" not in figures:
            path = plots.latency_accuracy_plot(report.benchmarks, run_dir / FIGURES_DIR / "latency_accuracy.png")
            figures["latency_accuracy"] = _relative(path, run_dir)
        chain = [m for m in report.models if m.role in _CHAIN_ROLES and m.accuracy is not None and (m.params or m.macs)]
        if chain and "chain_size" not in figures:
            path = plots.chain_size_plot(report.models, run_dir / FIGURES_DIR / "chain_size.png")
            figures["chain_size"] = _relative(path, run_dir)
    except MissingExtraError as exc:
        log.warning("report plots skipped: %s", exc)
    return figures


def write_report(
    report: Report, run_dir: Path, *, plots: bool = True, extra_sections: list[Section] | None = None
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md``, ``report.html`` (and the plots) into ``run_dir``.

    The latency–accuracy plot (when there are benchmarks) and the chain size plot (when chain members have accuracy
    and size) are drawn into ``run_dir/figures/`` and added to ``report.figures`` unless already there.

    ``extra_sections`` (e.g. the budget section, :mod:`edgecompress.report.budget`) go before the stage times.

    Returns:
        ``{"json", "md", "html"}`` plus one entry per figure name -> absolute paths.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        report = report.model_copy(update={"figures": _make_plots(report, run_dir)})
    if report.headline is None:
        from edgecompress.report.headline import build_headline

        report = report.model_copy(update={"headline": build_headline(report)})
    sections = build_sections(report)
    at = next((i for i, sec in enumerate(sections) if sec.title == "Stage times"), len(sections))
    sections[at:at] = extra_sections or []
    out = {
        "json": atomic_write_text(run_dir / "report.json", report.model_dump_json(indent=2) + "\n"),
        "md": atomic_write_text(run_dir / "report.md", render_markdown(report, sections)),
        "html": atomic_write_text(run_dir / "report.html", render_html(report, sections, run_dir)),
    }
    for name, rel in report.figures.items():
        out[name] = Path(rel) if Path(rel).is_absolute() else run_dir / rel
    log.info("wrote report %s (%d models, %d benchmark rows)", run_dir / "report.html", len(report.models),
             len(report.benchmarks))  # fmt: skip
    return out
