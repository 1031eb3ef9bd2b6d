"""Whether an exported artifact ships: its accuracy on val decides; parity with PyTorch is a broken-graph diagnostic.

The rule, per ``(format, precision)`` and independent of every other format:

* **Accuracy gate** (when val is given): the artifact, run through its own runtime, may lose at most
  ``export.max_accuracy_drop`` of top-1 accuracy on val against the PyTorch model on the same val split. An artifact
  that keeps the FP32 accuracy is never rejected for its parity numbers.
* **Parity diagnostic**: on a fixed batch, ``max|y − y_torch|`` relative to the spread (standard deviation) of the
  PyTorch logits, and top-1 agreement, against the precision's bounds (:data:`contract.TOLERANCES`). Outside them is
  recorded (``info["parity"]``) and fails the artifact only when accuracy also says it is broken, when top-1
  agreement is below :data:`contract.BROKEN_GRAPH_AGREEMENT` (the graph computes something else), when outputs are
  not finite or have the wrong shape, or when there is no val split to ask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecompress.errors import ExportError
from edgecompress.export.contract import BROKEN_GRAPH_AGREEMENT, Tolerance

_FIXES = {
    "int8": "try keep_head_float: true, another int8_calibration method, more calib_samples, or drop this format",
    "fp16": "use this format's fp32 artifact, or drop this format",
    "fp32": "the exported graph computes something else than PyTorch: inspect it, or drop this format",
}


@dataclass(frozen=True)
class Parity:
    """The parity diagnostic of one artifact on the parity batch."""

    max_abs_diff: float
    rel_diff: float
    top1_agreement: float
    within: bool
    reason: str
    judged_precision: str


def parity_diagnostic(y: np.ndarray, reference: np.ndarray, tolerance: Tolerance, judged_precision: str) -> Parity:
    """Compare artifact outputs ``y`` with PyTorch's ``reference`` on the same batch.

    Raises:
        ExportError: the shapes differ or the outputs are not finite (a broken graph, whatever its accuracy).
    """
    if y.shape != reference.shape:
        raise ExportError(f"output shape {y.shape} differs from PyTorch {reference.shape}", "check the export")
    if not np.all(np.isfinite(y)):
        bad = int((~np.isfinite(y)).any(axis=1).sum()) if y.ndim == 2 else int((~np.isfinite(y)).sum())
        raise ExportError(f"outputs NaN or Inf on {bad} of {len(y)} parity inputs", "inspect the exported graph")
    diff = float(np.max(np.abs(y - reference))) if y.size else 0.0
    agree = float(np.mean(y.argmax(1) == reference.argmax(1))) if y.size else 1.0
    within, reason = tolerance.check(diff, agree, reference)
    return Parity(diff, tolerance.relative_diff(diff, reference), agree, within, reason, judged_precision)


def _points(fraction: float) -> str:
    return f"{100 * fraction:.1f}"


def judge(
    name: str,
    precision: str,
    parity: Parity,
    val_accuracy: float | None,
    fp32_val_accuracy: float | None,
    max_accuracy_drop: float,
) -> str | None:
    """The one-line failure (``"problem — fix: ..."``) of an artifact, or None when it ships.

    Args:
        name: ``"<format>-<precision>"``.
        precision: the artifact's stated precision (chooses the fix offered).
        parity: its parity diagnostic.
        val_accuracy, fp32_val_accuracy: the artifact's and the PyTorch model's top-1 accuracy on val (fractions),
            both None without val.
        max_accuracy_drop: ``export.max_accuracy_drop`` (a fraction; 0.01 is one point).
    """
    diagnostic = f"parity ({parity.judged_precision} diagnostic): {parity.reason}"
    if parity.top1_agreement < BROKEN_GRAPH_AGREEMENT:
        return str(
            ExportError(
                f"{name}: top-1 agreement with PyTorch {parity.top1_agreement:.2f} on the parity inputs is below "
                f"{BROKEN_GRAPH_AGREEMENT}: the exported graph computes something else; {diagnostic}",
                "inspect the exported graph, or drop this format",
            )
        )
    if val_accuracy is None or fp32_val_accuracy is None:
        if parity.within:
            return None
        return str(
            ExportError(
                f"{name}: {diagnostic}, and no val split to judge its accuracy",
                "give val data (val_x, val_y) so that accuracy decides, or inspect the exported graph",
            )
        )
    drop = fp32_val_accuracy - val_accuracy
    if drop <= max_accuracy_drop + 1e-12:
        return None
    also = "" if parity.within else f"; {diagnostic}"
    return str(
        ExportError(
            f"{name}: val accuracy {_points(val_accuracy)} % vs FP32 {_points(fp32_val_accuracy)} % "
            f"(drop {_points(drop)} > {_points(max_accuracy_drop)} points){also}",
            _FIXES.get(precision, _FIXES["fp32"]),
        )
    )
