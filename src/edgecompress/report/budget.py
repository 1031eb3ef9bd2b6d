"""The report's "Compress to a budget" section and its figure: p50 latency against MACs per format on the target.

The pipeline turns its budget result into these report rows (as it turns stage results into ``ModelEntry``), so
the report package needs nothing of the budget search itself. matplotlib is imported lazily.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edgecompress.report.plots import _MARKERS, _log_x, _pyplot, _save
from edgecompress.report.render import DASH, Section, fmt_bytes, fmt_count, fmt_ms, fmt_pct


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BudgetProbeRow(_Row):
    """One candidate in one format: measured untrained on the target, and the fit's prediction."""

    candidate: str
    macs: int
    mac_ratio: float
    pair: str
    measured_ms: float | None = None
    predicted_ms: float | None = None
    size_bytes: int | None = None
    cached: bool = False
    feasible: bool = False
    chosen: bool = False
    error: str | None = None


class BudgetFitLine(_Row):
    """``p50 = exp(intercept) · MACs^slope`` (power) or ``intercept + slope · MACs`` (linear) for one format."""

    pair: str
    kind: str = "power"
    intercept: float
    slope: float
    rms_log_residual: float
    max_rel_residual: float


class BudgetAttempt(_Row):
    """The final artifact of one attempt, measured on the target after training."""

    candidate: str
    artifact: str
    p50_ms: float | None = None
    p90_ms: float | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    ece: float | None = None
    accuracy_drop: float | None = None
    met: bool = False
    misses: list[str] = Field(default_factory=list)


class BudgetSummary(_Row):
    """Everything the budget section shows."""

    device: str
    batch_size: int
    budgets: list[str]
    margin: float
    teacher_p50_ms: float | None = None
    teacher_accuracy: float | None = None
    reason: str
    measured_now: int = 0
    probes: list[BudgetProbeRow]
    fits: list[BudgetFitLine]
    attempts: list[BudgetAttempt] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


def _fitted(fit: BudgetFitLine, macs: float) -> float:
    if fit.kind == "linear":
        return max(fit.intercept + fit.slope * macs, 1e-9)
    return math.exp(fit.intercept) * macs**fit.slope


def _points(fraction: float | None) -> str:
    return DASH if fraction is None else f"{100 * fraction:.2f}"


def latency_curve_plot(summary: BudgetSummary, path: Path) -> Path:
    """Measured p50 (points) and the fitted power law (line) against MACs, one colour per format; the latency
    budget as a horizontal line, the chosen candidate circled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pairs = list(dict.fromkeys(p.pair for p in summary.probes))
    fits = {f.pair: f for f in summary.fits}
    macs = [p.macs for p in summary.probes if p.measured_ms]
    for i, pair in enumerate(pairs):
        pts = sorted((p.macs, p.measured_ms) for p in summary.probes if p.pair == pair and p.measured_ms)
        if not pts:
            continue
        line = ax.plot([x for x, _ in pts], [y for _, y in pts], _MARKERS[i % len(_MARKERS)], label=pair)[0]
        fit = fits.get(pair)
        if fit is not None and macs:
            lo, hi = min(macs), max(macs)
            xs = [lo * (hi / lo) ** (k / 40) for k in range(41)] if hi > lo else [lo]
            ys = [_fitted(fit, x) for x in xs]
            ax.plot(xs, ys, "-" if fit.kind == "power" else "--", color=line.get_color(), alpha=0.6)
    for p in summary.probes:
        if p.chosen and p.measured_ms:
            ax.plot([p.macs], [p.measured_ms], "o", ms=14, mfc="none", mec="black", label=f"chosen: {p.candidate}")
    for b in summary.budgets:
        if b.startswith("p50 <= "):
            ax.axhline(float(b.split()[2]), color="red", ls="--", lw=1, label=b)
    if macs:
        _log_x(ax, engineering=True, span=max(macs) / max(1, min(macs)))
    ax.set_yscale("log")
    from matplotlib import ticker

    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("MACs per image")
    ax.set_ylabel(f"p50 latency (ms, batch {summary.batch_size})")
    ax.set_title(f"Untrained candidates on {summary.device}: latency vs MACs")
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return _save(fig, path)


def budget_sections(summary: BudgetSummary, *, curve: str | None = None) -> list[Section]:
    """The budget section (choice, attempts, candidates, fits) for the Markdown and HTML report."""
    paragraphs = [
        f"Target: {', '.join(summary.budgets)} on **{summary.device}** at batch {summary.batch_size} "
        f"(choice made with a {100 * summary.margin:g} % noise margin; {summary.measured_now} probe(s) measured in "
        f"this run, the rest from the latency cache).",
        f"Chosen: {summary.reason}.",
    ]
    if summary.teacher_p50_ms is not None:
        paragraphs.append(f"Teacher (fastest FP32 artifact) p50 on this device: {fmt_ms(summary.teacher_p50_ms)} ms.")
    out = [
        Section(
            "Compress to a budget",
            paragraphs=paragraphs,
            headers=[
                "Attempt",
                "Artifact",
                "p50 ms",
                "p90 ms",
                "Size",
                "Accuracy",
                "Drop vs teacher (pt)",
                "ECE",
                "Met",
                "Missed",
            ],  # fmt: skip
            rows=[
                [
                    a.candidate,
                    a.artifact,
                    fmt_ms(a.p50_ms),
                    fmt_ms(a.p90_ms),
                    fmt_bytes(a.size_bytes),
                    fmt_pct(a.accuracy),
                    _points(a.accuracy_drop),
                    fmt_pct(a.ece),
                    "yes" if a.met else "no",
                    "; ".join(a.misses) or DASH,
                ]  # fmt: skip
                for a in summary.attempts
            ],
            bullets=list(summary.notes),
            images=[("latency vs MACs on the target", curve)] if curve else [],
        ),
        Section(
            "Budget candidates (untrained, measured on the target)",
            headers=[
                "Candidate",
                "MACs",
                "of teacher",
                "Format",
                "Measured p50 ms",
                "Predicted p50 ms",
                "Size",
                "Feasible",
                "Source",
            ],  # fmt: skip
            rows=[
                [
                    ("▶ " if p.chosen else "") + p.candidate,
                    fmt_count(p.macs),
                    fmt_pct(p.mac_ratio, 1),
                    p.pair,
                    fmt_ms(p.measured_ms) if p.error is None else f"failed: {p.error[:80]}",
                    fmt_ms(p.predicted_ms),
                    fmt_bytes(p.size_bytes),
                    "yes" if p.feasible else "no",
                    "cache" if p.cached else "measured",
                ]  # fmt: skip
                for p in summary.probes
            ],
        ),
        Section(
            "Latency fits (power: p50 ms = e^a · MACs^b; linear: p50 ms = a + b · MMACs; the better fit is kept)",
            headers=["Format", "Fit", "a", "b", "RMS log residual", "Max |relative residual|"],
            rows=[
                [
                    f.pair,
                    f.kind,
                    f"{f.intercept:.4g}",
                    f"{f.slope:.4g}" if f.kind == "power" else f"{f.slope * 1e6:.4g}",
                    f"{f.rms_log_residual:.3f}",
                    fmt_pct(f.max_rel_residual, 1),
                ]  # fmt: skip
                for f in summary.fits
            ],
        ),
    ]
    return out
