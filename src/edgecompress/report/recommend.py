"""Recommend one artifact per device: the fastest that keeps accuracy and calibration within bounds."""

from __future__ import annotations

from typing import Any, Literal

from edgecompress.measurements import UNSTABLE_CV, BenchRow


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms"


def recommend(
    rows: list[BenchRow],
    *,
    reference_accuracy: float,
    max_accuracy_drop: float = 0.01,
    max_ece: float | None = None,
    by: Literal["auto", "throughput"] = "auto",
    reference_label: str = "reference",
    batch: int | None = None,
) -> list[dict[str, Any]]:
    """Per device, the fastest artifact whose accuracy and ECE meet the bounds, with the reason.

    An artifact qualifies when ``accuracy >= reference_accuracy - max_accuracy_drop`` (fractions: 0.01 is one
    percentage point) and, if ``max_ece`` is given, ``ece <= max_ece``; unmeasured accuracy (or ECE when bounded)
    disqualifies. "Fastest" is the lowest p50 latency at the largest batch size that every qualifying artifact on the
    device was measured at (``by="auto"``); when they share no batch size, or with ``by="throughput"``, the highest
    throughput (at each artifact's largest batch). Failed runs (``ok: false``) never qualify. The reason says which
    measure decided, and says so when the latencies it compared were unstable (run-to-run spread above
    ``measurements.UNSTABLE_CV``): such a ranking is flagged, not reported as fact.

    Args:
        rows: device x artifact benchmark rows.
        reference_accuracy: accuracy to compare against (usually the calibrated student or the FP32 artifact).
        max_accuracy_drop: largest allowed accuracy drop, as a fraction.
        max_ece: largest allowed expected calibration error, as a fraction; None for no bound.
        by: "auto" (p50 at the largest common batch, else throughput) or "throughput".
        reference_label: what the reference is, for the reason text (e.g. "FP32 student on the same 2000 images").
        batch: rank by p50 at this batch size instead of the largest common one, where every qualifying artifact
            was measured at it (a run with a ``target:`` ranks at the target's batch size).

    Returns:
        One dict per device, in order of first appearance: ``device``, ``artifact`` (None when nothing qualifies),
        ``reason``, ``metric`` ("p50_ms" / "throughput" / None), ``value``, ``batch``.
    """
    floor = reference_accuracy - max_accuracy_drop
    bounds = (
        f"accuracy ≥ {100 * floor:.2f}% ({reference_label} {100 * reference_accuracy:.2f}% − "
        f"{100 * max_accuracy_drop:.2f} pp)"
    )
    if max_ece is not None:
        bounds += f", ECE ≤ {100 * max_ece:.2f}%"
    devices = list(dict.fromkeys(r.device for r in rows))
    out = []
    for device in devices:
        drows = [r for r in rows if r.device == device]
        ok, rejected = [], []
        for row in drows:
            why = _disqualify(row, floor, max_ece)
            if why:
                rejected.append(f"{row.artifact}: {why}")
            else:
                ok.append(row)
        if not ok:
            out.append(
                {
                    "device": device,
                    "artifact": None,
                    "reason": f"no artifact meets the bounds ({bounds}) — " + "; ".join(rejected),
                    "metric": None,
                    "value": None,
                    "batch": None,
                }
            )
            continue
        out.append(_pick(device, ok, bounds, by, batch))
    return out


def _disqualify(row: BenchRow, floor: float, max_ece: float | None) -> str | None:
    acc, ece = row.accuracy, row.ece
    if row.failure:
        return f"run failed ({row.failure[:80]})"
    if acc is None:
        return "accuracy not measured"
    if acc < floor:
        return f"accuracy {100 * acc:.2f}% too low"
    if max_ece is not None:
        if ece is None:
            return "ECE not measured"
        if ece > max_ece:
            return f"ECE {100 * ece:.2f}% too high"
    if not row.latency_ms and row.throughput_at() is None:
        return "speed not measured"
    return None


def _pick(device: str, ok: list[BenchRow], bounds: str, by: str, prefer: int | None) -> dict[str, Any]:
    common = set.intersection(*(set(r.latency_ms) for r in ok)) if by == "auto" else set()
    batch: int | None
    value: float
    if common:
        at = prefer if prefer in common else max(common)
        ranked = sorted(ok, key=lambda r: r.latency_ms[at].p50)
        batch, metric, value = at, "p50_ms", ranked[0].latency_ms[at].p50
        speed = f"lowest p50 latency at batch {at}: {_fmt_ms(value)}"
        if len(ranked) > 1:
            speed += f" (next: {ranked[1].artifact} {_fmt_ms(ranked[1].latency_ms[at].p50)})"
    else:
        with_tp = [(r, tp) for r in ok if (tp := r.throughput_at()) is not None]
        if not with_tp:
            return {
                "device": device,
                "artifact": None,
                "reason": f"artifacts meet the bounds ({bounds}) but share no batch size and have no throughput "
                "to compare",
                "metric": None,
                "value": None,
                "batch": None,
            }
        ranked_tp = sorted(with_tp, key=lambda rt: -rt[1])
        ranked = [r for r, _ in ranked_tp]
        batch, metric, value = None, "throughput", ranked_tp[0][1]
        speed = f"highest throughput: {value:.4g} samples/s"
        if len(ranked_tp) > 1:
            speed += f" (next: {ranked_tp[1][0].artifact} {ranked_tp[1][1]:.4g}/s)"
    best = ranked[0]
    acc, ece = best.accuracy or 0.0, best.ece
    quality = f"accuracy {100 * acc:.2f}%" + (f", ECE {100 * ece:.2f}%" if ece is not None else ", ECE not measured")
    reason = f"{speed} among {len(ok)} artifact(s) meeting {bounds}; {quality}"
    shaky = [r.artifact for r in ranked[:2] if r.unstable]
    if shaky:
        reason += (
            f"; latency unstable (run-to-run p50 spread above {100 * UNSTABLE_CV:.0f} %) for "
            f"{', '.join(shaky)}: the ranking may not hold, rerun on a quiet device"
        )
    return {
        "device": device,
        "artifact": best.artifact,
        "reason": reason,
        "metric": metric,
        "value": value,
        "batch": batch,
    }
