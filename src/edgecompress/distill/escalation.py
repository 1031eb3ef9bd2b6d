"""What to try when the student misses the quality gate (``distill.on_gate_failure: escalate``, the default).

A student more than ``distill.max_accuracy_drop`` below its teacher on val is most often one of two things:
under-trained (its val accuracy was still rising at the last epoch) or too small (it had levelled off). So each next
attempt is chosen from the failed one: **more epochs** (x2) when it was still improving, else **the next larger
student** (MACs x2, pruned from the teacher; an explicitly given student cannot grow, so it gets more epochs). Every
attempt's cost is estimated before it starts (the first attempt's seconds, scaled by epochs and student MACs) and
none starts that would take the total past ``escalation_budget`` x the first attempt; then the run stops with every
attempt's numbers. Each attempt is a row in the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgecompress.distill.gates import escalate_ratio

STILL_IMPROVING = 0.002  # val accuracy gained over the last epoch (fraction) that counts as "still rising"


@dataclass
class Attempt:
    """One try at the student: what it was, what it reached, what it cost."""

    index: int
    prune_ratio: float | None
    epochs: int
    macs: int | None
    val_accuracy: float | None
    teacher_val_accuracy: float | None
    passed: bool
    seconds: float
    why: str  # "configured", "still improving at the last epoch: x2 epochs", ...
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NextAttempt:
    prune_ratio: float | None
    epochs: int
    why: str
    estimated_seconds: float


def still_improving(history: list[dict[str, Any]]) -> bool:
    """Whether val accuracy rose by at least :data:`STILL_IMPROVING` over the last epoch (and the last was best)."""
    accs = [float(h["val_accuracy"]) for h in history if isinstance(h.get("val_accuracy"), float)]
    if len(accs) < 2:
        return True
    return accs[-1] >= max(accs) and accs[-1] - accs[-2] >= STILL_IMPROVING


def next_attempt(
    last: Attempt, first: Attempt, spent: float, *, history: list[dict[str, Any]], budget: float
) -> NextAttempt | None:
    """The attempt after ``last`` failed, or None when none fits in ``budget`` x the first attempt's seconds.

    Args:
        last: the attempt that just failed.
        first: the run's first attempt (its seconds are the unit of the budget).
        spent: seconds of every attempt so far.
        history: ``last``'s per-epoch training history (val accuracy per epoch).
        budget: the cap on the total, in multiples of the first attempt.
    """
    unit = max(first.seconds, 1e-6)
    per_epoch = max(last.seconds, 1e-6) / max(1, last.epochs)
    grow = None if last.prune_ratio is None else escalate_ratio(last.prune_ratio)
    if still_improving(history) or grow is None or last.prune_ratio is None:
        why = (
            "still improving at its last epoch: twice the epochs"
            if still_improving(history)
            else "levelled off, but the student cannot grow (a given model, or half the teacher): twice the epochs"
        )
        plan = NextAttempt(last.prune_ratio, 2 * last.epochs, why, per_epoch * 2 * last.epochs)
    else:
        why = f"levelled off: the next larger student ({grow:g} of the teacher's MACs)"
        plan = NextAttempt(grow, last.epochs, why, per_epoch * last.epochs * grow / last.prune_ratio)
    if spent + plan.estimated_seconds > budget * unit + 1e-9:
        return None
    return plan


def attempts_line(attempts: list[Attempt]) -> str:
    """``0.08/4 ep: 88.1 %; 0.08/8 ep: 89.0 %`` — every attempt, for the one-line error."""
    parts = []
    for a in attempts:
        size = f"{a.prune_ratio:g} of the MACs" if a.prune_ratio is not None else "given model"
        acc = "—" if a.val_accuracy is None else f"{100 * a.val_accuracy:.2f} %"
        parts.append(f"{size}, {a.epochs} epochs: val {acc}")
    return "; ".join(parts)


__all__ = ["STILL_IMPROVING", "Attempt", "NextAttempt", "attempts_line", "next_attempt", "still_improving"]
