"""The quality gate: a teacher near chance, or a student too far below its teacher, stops the run before export.

Accuracies are fractions in [0, 1] measured on the val split (the test split never selects or gates anything).
"Near chance" for ``K`` classes is below ``1/K + ½·(1/K)·(1 − 1/K)``: half a chance level above chance, which is
15 % for 10 classes (about 1.5/K for many classes) and 62.5 % for 2. Imports stay light (no torch).
"""

from __future__ import annotations

import math

from edgecompress.errors import ConfigError, TrainingError

ESCALATE_FACTOR = 2.0  # each escalation doubles the student's MACs ...
ESCALATE_MAX_RATIO = 0.5  # ... up to half the teacher's; beyond that compression is not worth a student


class QualityGateError(TrainingError):
    """A trained model fails the quality gate (near chance, or too far below its teacher); nothing is exported.

    ``accuracy`` and ``history`` (its val accuracy and per-epoch training history, when known) let the caller
    decide how to escalate.
    """

    kind = "quality_gate"

    def __init__(
        self,
        problem: str,
        fix: str | None = None,
        *,
        accuracy: float | None = None,
        history: list[dict[str, float]] | None = None,
    ) -> None:
        super().__init__(problem, fix)
        self.accuracy = accuracy
        self.history = list(history or [])


def chance_threshold(num_classes: int) -> float:
    """Val accuracy below which a ``num_classes``-way classifier counts as at chance (see the module docstring)."""
    if num_classes < 2:
        raise ConfigError(f"{num_classes} classes", "a classifier needs at least 2 classes")
    p = 1.0 / num_classes
    return p + 0.5 * p * (1.0 - p)


def near_chance(accuracy: float, num_classes: int) -> bool:
    """True when ``accuracy`` (a fraction) is below :func:`chance_threshold`."""
    return not accuracy >= chance_threshold(num_classes)  # NaN counts as at chance


def _fraction(value: float, what: str) -> float:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{what} = {value!r} is not a fraction in [0, 1]", f"give {what} as a fraction, e.g. 0.95")
    return float(value)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def check_teacher(
    val_accuracy: float, num_classes: int, *, claimed: float | None = None, tolerance: float = 0.05
) -> list[str]:
    """Check the teacher on val before it teaches.

    Args:
        val_accuracy: the teacher's accuracy on the val split.
        num_classes: number of classes K.
        claimed: the accuracy the user or the checkpoint's metadata claims, if any.
        tolerance: how far below ``claimed`` the measured accuracy may be before a warning.

    Returns:
        Warnings (one line each) for the report; empty when all is well.

    Raises:
        QualityGateError: the teacher is near chance — wrong class order, wrong normalization or a wrong checkpoint.
    """
    acc = _fraction(val_accuracy, "teacher val accuracy")
    if near_chance(acc, num_classes):
        raise QualityGateError(
            f"teacher val accuracy {_pct(acc)} on {num_classes} classes is near chance ({_pct(1 / num_classes)})",
            "check the class order (data.classes), the normalization (data.mean/std must match the teacher's "
            "training) and the checkpoint",
        )
    warnings = []
    if claimed is not None:
        claim = _fraction(claimed, "the teacher's claimed accuracy")
        if claim - acc > tolerance:
            warnings.append(
                f"teacher val accuracy {_pct(acc)} is {100 * (claim - acc):.1f} points below the claimed "
                f"{_pct(claim)}: check the class order (data.classes), the normalization (data.mean/std) and the "
                "checkpoint"
            )
    return warnings


def check_student(
    student_val_acc: float,
    teacher_val_acc: float,
    num_classes: int,
    *,
    max_drop: float,
    name: str = "student",
    prune_ratio: float | None = None,
) -> None:
    """Refuse a distilled model that is at chance or more than ``max_drop`` below its teacher on val.

    Args:
        student_val_acc: the distilled model's val accuracy.
        teacher_val_acc: the (original) teacher's val accuracy.
        num_classes: number of classes K.
        max_drop: allowed accuracy drop, a fraction (``distill.max_accuracy_drop``; 0.05 = 5 points).
        name: the model's name in the message (an assistant is gated before it teaches).
        prune_ratio: the model's MAC ratio, when it was pruned: the message then names the next larger one.

    Raises:
        QualityGateError: one line with both accuracies and what to try.
    """
    st = _fraction(student_val_acc, f"{name} val accuracy")
    te = _fraction(teacher_val_acc, "teacher val accuracy")
    drop = _fraction(max_drop, "max_accuracy_drop")
    at_chance = near_chance(st, num_classes)
    if not at_chance and te - st <= drop + 1e-12:
        return
    bigger = escalate_ratio(prune_ratio) if prune_ratio is not None else None
    size = f"raise distill.student.prune_ratio to {bigger:g}" if bigger else "raise distill.student.prune_ratio"
    why = (
        f"is at chance ({_pct(1 / num_classes)} for {num_classes} classes)"
        if at_chance
        else f"is {100 * (te - st):.1f} points below the teacher's {_pct(te)} (allowed: {100 * drop:.1f})"
    )
    raise QualityGateError(
        f"{name} val accuracy {_pct(st)} {why}; teacher {_pct(te)}",
        f"a bigger student ({size}), more epochs (distill.train.epochs), another loss (distill.loss.kind: dist "
        "or bdkd), or allow more (distill.max_accuracy_drop)",
    )


def escalate_ratio(
    ratio: float, *, factor: float = ESCALATE_FACTOR, max_ratio: float = ESCALATE_MAX_RATIO
) -> float | None:
    """The next larger student MAC ratio for ``distill.on_gate_failure: escalate``, or None when none is left.

    MACs double per step (``factor``), capped at ``max_ratio`` of the teacher: 0.05 → 0.1 → 0.2 → 0.4 → 0.5 → None.
    """
    if not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise ConfigError(f"prune ratio {ratio!r} is outside (0, 1]", "give the student's MACs relative to the teacher")
    if ratio >= max_ratio - 1e-12:
        return None
    return float(min(max_ratio, ratio * factor))


__all__ = ["QualityGateError", "chance_threshold", "check_student", "check_teacher", "escalate_ratio", "near_chance"]
