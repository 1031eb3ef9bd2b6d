"""Fit latency against MACs per format, judge each (candidate, format) against the budgets, pick the largest.

The fit is least squares per (format, precision), of a power law ``log p50 = a + b · log MACs`` and of a line
``p50 = a + b · MACs``; the one with the smaller relative residuals is kept and reported with them. Small CNNs on a
CPU usually follow the power law (a fixed per-call cost dominates the smallest ones, which a line through the large
ones misses); larger, compute-bound ones follow the line. The
choice uses each candidate's own measured p50 (the fit is the curve in the report and the prediction checked by
``benchmarks/budget.py``): a candidate meets the latency budget when ``p50 × (1 + margin) <= latency_ms``.
"""

from __future__ import annotations

import math
from collections import defaultdict

from edgecompress.budget.config import TargetConfig
from edgecompress.budget.records import Candidate, Choice, LatencyFit, Probe
from edgecompress.errors import ConfigError


class BudgetError(ConfigError):
    """No candidate meets the budget (raised before any student is trained)."""

    kind = "budget"


def _least_squares(pts: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of y = a + b·x, or None when the x values do not vary."""
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if n < 2 or sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - slope * mx, slope


def _fit_one(fmt: str, prec: str, pts: list[tuple[int, float]], kind: str) -> LatencyFit | None:
    if kind == "power":
        ab = _least_squares([(math.log(max(m, 1)), math.log(t)) for m, t in pts])
    else:
        ab = _least_squares([(float(m), t) for m, t in pts])
    if ab is None:
        return None
    fit = LatencyFit(format=fmt, precision=prec, kind=kind, intercept=ab[0], slope=ab[1], points=len(pts),  # type: ignore[arg-type]
                     rms_log_residual=0.0, max_rel_residual=0.0)  # fmt: skip
    logs = [math.log(t / fit.predict(m)) for m, t in pts]
    return fit.model_copy(update={"rms_log_residual": math.sqrt(sum(r * r for r in logs) / len(logs)),
                                  "max_rel_residual": max(abs(math.exp(r) - 1) for r in logs)})  # fmt: skip


def fit_latency(cands: list[Candidate]) -> list[LatencyFit]:
    """One fit per (format, precision) with at least two measured candidates of distinct MACs: the power law or the
    line, whichever has the smaller RMS of log(measured / fitted) (ties: the power law)."""
    points: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for cand in cands:
        for p in cand.probes:
            if p.ok and p.p50_ms and p.p50_ms > 0:
                points[p.format, p.precision].append((cand.macs, p.p50_ms))
    fits = []
    for (fmt, prec), pts in points.items():
        tried = [f for f in (_fit_one(fmt, prec, pts, k) for k in ("power", "linear")) if f is not None]
        if tried:
            fits.append(min(tried, key=lambda f: f.rms_log_residual - (1e-9 if f.kind == "power" else 0.0)))
    return fits


def with_predictions(cands: list[Candidate], fits: list[LatencyFit]) -> list[Candidate]:
    """The candidates with each probe's ``predicted_ms`` from its format's fit."""
    by_pair = {f"{f.format}:{f.precision}": f for f in fits}
    out = []
    for cand in cands:
        probes = [
            p.model_copy(update={"predicted_ms": by_pair[p.pair].predict(cand.macs) if p.pair in by_pair else None})
            for p in cand.probes
        ]
        out.append(cand.model_copy(update={"probes": probes}))
    return out


def teacher_reference(cands: list[Candidate]) -> float | None:
    """The teacher's p50 for ``speedup``: its fastest FP32 artifact (else its fastest of any precision)."""
    teacher = next((c for c in cands if c.name == "teacher"), None)
    if teacher is None:
        return None
    ok = [p for p in teacher.probes if p.ok and p.p50_ms]
    fp32 = [p for p in ok if p.precision == "fp32"] or ok
    return min(p.p50_ms for p in fp32) if fp32 else None  # type: ignore[type-var]


def misses(probe: Probe, target: TargetConfig, teacher_ms: float | None, *, margin: float | None = None) -> list[str]:
    """The budgets one measured probe (or final artifact) misses, one line each; [] when it meets them all."""
    m = target.margin if margin is None else margin
    if not probe.ok or probe.p50_ms is None:
        return [f"not measured ({probe.error or 'no latency'})"]
    out = []
    guarded = probe.p50_ms * (1 + m)
    if target.latency_ms is not None and guarded > target.latency_ms:
        out.append(f"p50 {probe.p50_ms:.4g} ms (×{1 + m:g} margin = {guarded:.4g}) > {target.latency_ms:g} ms")
    if target.size_kb is not None and probe.size_bytes is not None and probe.size_bytes > target.size_kb * 1024:
        out.append(f"size {probe.size_bytes / 1024:.4g} KiB > {target.size_kb:g} KiB")
    if target.speedup is not None:
        if teacher_ms is None:
            out.append("speed-up unknown (the teacher was not measured)")
        elif teacher_ms / guarded < target.speedup:
            out.append(f"speed-up {teacher_ms / guarded:.3g}× (with margin) < {target.speedup:g}×")
    return out


def feasible(cands: list[Candidate], target: TargetConfig) -> list[tuple[Candidate, Probe]]:
    """Every (student candidate, probe) that meets every budget, largest MACs first, then fastest."""
    teacher_ms = teacher_reference(cands)
    out = [(c, p) for c in cands if c.name != "teacher" for p in c.probes if not misses(p, target, teacher_ms)]
    return sorted(out, key=lambda cp: (-cp[0].macs, cp[1].p50_ms or 0.0))


def choose(cands: list[Candidate], target: TargetConfig) -> tuple[Choice, list[tuple[Candidate, Probe]]]:
    """The largest feasible candidate and format, and the feasible list (for stepping down after a miss).

    Raises:
        BudgetError: no candidate meets the budget; the message gives the fastest candidate's measured latency.
    """
    ranked = feasible(cands, target)
    if not ranked:
        raise impossible(cands, target)
    cand, probe = ranked[0]
    return choice_of(cand, probe, target, len(ranked)), ranked


def choice_of(cand: Candidate, probe: Probe, target: TargetConfig, n_feasible: int) -> Choice:
    budgets = ", ".join(budget_text(target))
    reason = (
        f"the largest of {n_feasible} feasible (candidate, format) pairs: {cand.macs:,} MACs "
        f"({100 * cand.mac_ratio:.3g} % of the teacher) in {probe.pair}, measured p50 {probe.p50_ms:.4g} ms untrained "
        f"on {target.device} at batch {target.batch_size}, meets {budgets} with a {100 * target.margin:g} % margin"
    )
    return Choice(candidate=cand.name, pair=probe.pair, target_ratio=cand.target_ratio, p50_ms=probe.p50_ms,
                  reason=reason)  # fmt: skip


def budget_text(target: TargetConfig) -> list[str]:
    out = []
    if target.latency_ms is not None:
        out.append(f"p50 <= {target.latency_ms:g} ms")
    if target.size_kb is not None:
        out.append(f"size <= {target.size_kb:g} KiB")
    if target.speedup is not None:
        out.append(f"speed-up >= {target.speedup:g}×")
    return out


def impossible(cands: list[Candidate], target: TargetConfig) -> BudgetError:
    """The one-line error of a budget no candidate meets, with the fastest candidate's measured latency."""
    measured = [(c, p) for c in cands if c.name != "teacher" for p in c.probes if p.ok and p.p50_ms is not None]
    budgets = ", ".join(budget_text(target))
    if not measured:
        errors = sorted({p.error or "?" for c in cands for p in c.probes if not p.ok})
        return BudgetError(
            f"no candidate could be measured on {target.device} ({'; '.join(errors)[:300]})",
            "check the device profile and target.formats (the device must accept them)",
        )
    cand, probe = min(measured, key=lambda cp: cp[1].p50_ms)  # type: ignore[arg-type,return-value]
    p50 = probe.p50_ms or 0.0  # measured pairs only: ``ok`` probes always carry a p50
    fastest = f"{p50:.4g} ms ({cand.name}, {100 * cand.mac_ratio:.3g} % of the teacher's MACs, {probe.pair})"
    smallest = min((p.size_bytes for _, p in measured if p.size_bytes), default=None)
    size = f", smallest artifact {smallest / 1024:.4g} KiB" if smallest and target.size_kb is not None else ""
    return BudgetError(
        f"no candidate meets {budgets} on {target.device} at batch {target.batch_size}: the fastest measured p50 is "
        f"{fastest}{size}, before the {100 * target.margin:g} % margin",
        f"relax the budget (latency_ms >= {p50 * (1 + target.margin):.3g}), lower target.min_ratio "
        "(smaller candidates), or consider more formats (target.formats)",
    )
