"""Choosing how to quantize: try calibration methods (and a float head), score each, keep the best.

Rule (issue): accuracy first, ECE second, on the validation split the pipeline passes. Without labels the score is
fidelity to FP32: top-1 agreement first, then mean |p_int8 - p_fp32| of the top-1 probability.
ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| over 15 equal-width confidence bins (Guo et al., ICML 2017).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from edgecompress.errors import QuantizationError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
T = TypeVar("T")
Scorer = Callable[[np.ndarray], dict[str, float]]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy_ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Top-1 accuracy and 15-bin ECE (fractions) of ``logits`` against integer ``labels``."""
    p = _softmax(np.asarray(logits, dtype=np.float64))
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return {"accuracy": float(correct.mean()), "ece": float(ece)}


def label_scorer(labels: np.ndarray) -> Scorer:
    """Score candidate logits on labelled validation data (accuracy, ece)."""
    return lambda logits: accuracy_ece(logits, labels)


def fidelity_scorer(reference_logits: np.ndarray) -> Scorer:
    """Score candidate logits by agreement with FP32 logits; 'ece' holds the mean top-1 probability gap."""
    ref_p = _softmax(np.asarray(reference_logits, dtype=np.float64))
    ref_top = ref_p.argmax(axis=1)

    def score(logits: np.ndarray) -> dict[str, float]:
        p = _softmax(np.asarray(logits, dtype=np.float64))
        gap = np.abs(p[np.arange(len(p)), ref_top] - ref_p[np.arange(len(p)), ref_top])
        return {"accuracy": float(np.mean(p.argmax(axis=1) == ref_top)), "ece": float(gap.mean())}

    return score


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """a beats b: higher accuracy, or equal accuracy and lower ECE."""
    if not np.isclose(a["accuracy"], b["accuracy"], rtol=0.0, atol=1e-9):
        return a["accuracy"] > b["accuracy"]
    return a["ece"] < b["ece"] - 1e-12


def choose_int8(
    build: Callable[[str, bool], T],
    evaluate: Callable[[T], np.ndarray],
    scorer: Scorer,
    *,
    method: str = "auto",
    keep_head_float: str | bool = "auto",
    methods: Sequence[str] = METHODS,
) -> tuple[T, dict[str, Any]]:
    """Quantize with each candidate setting and keep the best by ``scorer``.

    Args:
        build: ``build(method, keep_head_float) -> candidate`` (e.g. a path to a quantized model).
        evaluate: ``evaluate(candidate) -> logits`` on the scoring data (through the artifact's runtime).
        scorer: logits -> ``{"accuracy", "ece"}``.
        method: a method name, or ``"auto"`` to try each of ``methods``.
        keep_head_float: bool, or ``"auto"``: after choosing the method with the head quantized, also try the head
            in float with that method and keep it only if it scores better.

    Returns:
        The chosen candidate and a record ``{"calibration_method", "keep_head_float", "score", "trials"}``.

    Raises:
        QuantizationError: every candidate failed to build.
    """
    tried_methods = list(methods) if method == "auto" else [method]
    head_first = False if keep_head_float == "auto" else bool(keep_head_float)
    trials: list[dict[str, Any]] = []
    best: tuple[T, dict[str, Any]] | None = None
    errors: list[str] = []

    def attempt(m: str, head: bool) -> None:
        nonlocal best
        try:
            cand = build(m, head)
            score = scorer(evaluate(cand)) if len(tried_methods) > 1 or keep_head_float == "auto" else {}
        except QuantizationError as exc:
            errors.append(str(exc))
            trials.append({"calibration_method": m, "keep_head_float": head, "error": str(exc)})
            return
        record = {"calibration_method": m, "keep_head_float": head, "score": score}
        trials.append(record)
        log.info("int8 candidate %s head_float=%s: %s", m, head, score)
        if best is None or (score and _better(score, best[1]["score"])):
            best = (cand, record)

    for m in tried_methods:
        attempt(m, head_first)
    if best is not None and keep_head_float == "auto":
        attempt(best[1]["calibration_method"], True)
    if best is None:
        raise QuantizationError(f"every INT8 calibration candidate failed: {'; '.join(errors)}", "see the log")
    return best[0], {**best[1], "trials": trials}


def check_accuracy_drop(fp32_accuracy: float, int8_accuracy: float, max_drop: float, name: str) -> float:
    """Fail loudly when an INT8 artifact loses more than ``max_drop`` (fraction) top-1 vs FP32; returns the drop.

    Raises:
        QuantizationError: naming the artifact, both accuracies and the bound.
    """
    drop = float(fp32_accuracy - int8_accuracy)
    if drop > max_drop + 1e-12:
        raise QuantizationError(
            f"{name}: INT8 accuracy {int8_accuracy:.4f} is {drop:.4f} below FP32 {fp32_accuracy:.4f} "
            f"(max_accuracy_drop {max_drop})",
            "try keep_head_float: true, another int8_calibration method, more calib_samples, or drop this format",
        )
    return drop
