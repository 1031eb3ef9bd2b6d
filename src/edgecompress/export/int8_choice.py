"""Choosing INT8 settings: quantize with each calibration method (and a float head), score each, keep the best.

Rule (issue): accuracy first, ECE second, on the validation split the pipeline passes, scored with
:func:`edgecompress.calibration.compute_metrics` (the house's one ECE). Without labels the score is fidelity to FP32:
top-1 agreement first, then mean |p_int8 - p_fp32| of the FP32 top-1 class's probability.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from edgecompress.calibration.metrics import compute_metrics, softmax
from edgecompress.errors import QuantizationError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
T = TypeVar("T")
Scorer = Callable[[np.ndarray], dict[str, float]]


def metrics_of(outputs: np.ndarray, labels: np.ndarray, *, probabilities: bool = False) -> dict[str, float]:
    """Accuracy, ECE, NLL (fractions) of a model's outputs: logits, or probabilities when the graph ends in softmax.

    Probabilities from a quantized graph may not sum to 1 exactly: they are clipped and renormalized first.
    """
    out = np.asarray(outputs, dtype=np.float64)
    if probabilities:
        p = np.clip(out, 0.0, None)
        p = p / np.maximum(p.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        m = compute_metrics(None, labels, probs=p)
    else:
        m = compute_metrics(out, labels)
    return {key: m[key] for key in ("accuracy", "ece", "nll")}


def label_scorer(labels: np.ndarray, *, probabilities: bool = False) -> Scorer:
    """Score candidate outputs on labelled validation data (accuracy, ece, nll)."""
    return lambda outputs: metrics_of(outputs, labels, probabilities=probabilities)


def fidelity_scorer(reference_logits: np.ndarray) -> Scorer:
    """Score candidate logits by agreement with FP32 logits; 'ece' holds the mean top-1 probability gap."""
    ref_p = softmax(reference_logits, axis=1)
    ref_top = ref_p.argmax(axis=1)

    def score(logits: np.ndarray) -> dict[str, float]:
        p = softmax(logits, axis=1)
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
