"""Did distillation pay? The distilled student against the same student trained on labels alone, with an error bar.

Both students are judged on the same val images, so the comparison is paired: with c_d, c_s ∈ {0, 1} the per-image
correctness of the distilled and the scratch student, the difference of accuracies is d̄ = mean(c_d − c_s) and its
standard error SE = sd(c_d − c_s) / √n (the paired-proportion, McNemar-style error: it counts only the images where
the two students disagree). A difference within ``z`` standard errors of zero (z = 1.96, about 95 %) is "no
significant difference", and then the distilled student ships: at equal accuracy it is the one that tracks its
teacher (its top-1 agreement with the teacher is reported beside). Scratch ships only when it is significantly better.
The error covers the val sample, not the training seed; ``docs/results.md`` gives the seed-to-seed spread measured
on the demo.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Z_95 = 1.96


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same n images, with its paired standard error (fractions)."""

    difference: float
    stderr: float
    n: int

    @property
    def z(self) -> float:
        """The difference in standard errors (inf when every image agrees and the accuracies still differ)."""
        if self.stderr > 0:
            return self.difference / self.stderr
        return 0.0 if self.difference == 0 else math.copysign(math.inf, self.difference)

    def text(self) -> str:
        """``+1.23 ± 0.31 points (n = 6000)``."""
        return f"{100 * self.difference:+.2f} ± {100 * self.stderr:.2f} points (n = {self.n})"


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedDifference:
    """The paired difference of two 0/1 correctness vectors over the same images."""
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need two correctness vectors of one non-zero length, got {a.shape} and {b.shape}")
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return PairedDifference(difference=float(d.mean()), stderr=se, n=int(d.size))


@dataclass(frozen=True)
class Verdict:
    """Which student ships and why, from the paired val comparison (and the test comparison, reported only)."""

    shipped: Literal["distilled", "scratch"]
    significant: bool
    difference: float  # distilled minus scratch val accuracy (fraction)
    stderr: float
    n: int
    reason: str
    test_difference: float | None = None
    test_stderr: float | None = None
    test_n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_shipping(
    val: PairedDifference, test: PairedDifference | None = None, *, z: float = Z_95, fidelity: float | None = None
) -> Verdict:
    """Ship scratch only when it is significantly better on val; otherwise the distilled student.

    Args:
        val: distilled minus scratch on val.
        test: the same on test (reported, never used to decide).
        z: the significance threshold in standard errors.
        fidelity: the distilled student's top-1 agreement with its teacher, for the reason line.
    """
    significant = abs(val.z) > z
    tracks = f"; it agrees with its teacher on {100 * fidelity:.1f} % of test images" if fidelity is not None else ""
    if significant and val.difference < 0:
        shipped: Literal["distilled", "scratch"] = "scratch"
        reason = f"the scratch student is significantly better on val ({val.text()} for distillation): scratch ships"
    elif significant:
        shipped = "distilled"
        reason = f"distillation pays: {val.text()} on val over the same student trained on labels alone"
    else:
        shipped = "distilled"
        reason = f"no significant difference on val ({val.text()}): the distilled student ships{tracks}"
    return Verdict(
        shipped=shipped,
        significant=significant,
        difference=val.difference,
        stderr=val.stderr,
        n=val.n,
        reason=reason,
        test_difference=None if test is None else test.difference,
        test_stderr=None if test is None else test.stderr,
        test_n=None if test is None else test.n,
    )


__all__ = ["Z_95", "PairedDifference", "Verdict", "decide_shipping", "paired_difference"]
