"""Calibration metrics in pure numpy (no torch), so the on-device agent and app bundles can vendor this file.

Notation: z = logits [N, K], p = softmax(z), y = labels [N], conf_i = max_k p_ik, pred_i = argmax_k p_ik.

* accuracy      = mean_i 1[pred_i = y_i]
* ece           = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|, 15 equal-width bins of the top-label confidence
                  (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017; Naeini et al., AAAI 2015)
* adaptive_ece  = the same sum over equal-mass bins (each holds ≈ N/n_bins samples; Nixon et al., CVPRW 2019)
* classwise_ece = (1/K) Σ_k Σ_b |B_kb|/N · |mean_{B_kb} 1[y = k] − mean_{B_kb} p_k|  (Kull et al., NeurIPS 2019)
* mce           = max_b |acc(B_b) − conf(B_b)| over non-empty equal-width bins
* nll           = −mean_i log p_{i, y_i}
* brier         = mean_i Σ_k (p_ik − 1[y_i = k])²   (multi-class Brier score, range [0, 2])

All values are fractions, not percent. Bin ``b`` of equal-width binning holds confidences in
``[b/n_bins, (b+1)/n_bins)``; the last bin also holds confidence 1.0.

This module imports nothing from edgecompress except the error type, and falls back to a local copy of it, so it can
be copied alone next to a deployed model.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

try:
    from edgecompress.errors import CalibrationError
except ImportError:  # vendored copy: keep the same one-line "problem — fix: fix" message

    class CalibrationError(ValueError):  # type: ignore[no-redef]
        def __init__(self, problem: str, fix: str | None = None) -> None:
            super().__init__(f"{problem} — fix: {fix}" if fix else problem)


__all__ = [
    "CalibrationError",
    "compute_metrics",
    "compute_metrics_from_probs",
    "log_softmax",
    "looks_like_probabilities",
    "reliability_bins",
    "softmax",
]

_PROB_ATOL = 1e-3


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax (subtracts the row maximum first); float64 result."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; float64 result whose rows sum to 1."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def looks_like_probabilities(values: np.ndarray, atol: float = _PROB_ATOL) -> bool:
    """True when every row of a 2-D array lies in [0, 1] and sums to 1 (within ``atol``): probabilities, not logits."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.size == 0 or not np.all(np.isfinite(v)):
        return False
    if v.min() < -atol or v.max() > 1 + atol:
        return False
    return bool(np.all(np.abs(v.sum(axis=1) - 1.0) <= atol))


def _check(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a [N, K] score array and [N] labels; return float64 scores and int64 labels."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise CalibrationError(
            f"{what} must be a 2-D array [N, K], got shape {scores.shape}",
            "pass one row of class scores per sample (flatten extra dimensions first)",
        )
    n, k = scores.shape
    if n == 0:
        raise CalibrationError(f"{what} is empty (0 samples)", "pass at least one sample")
    if k < 2:
        raise CalibrationError(f"{what} has {k} class column(s)", "calibration metrics need K >= 2 classes")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise CalibrationError(f"{what} has dtype {scores.dtype}", "pass a real-valued float array")
    scores = scores.astype(np.float64, copy=False)
    if not np.all(np.isfinite(scores)):
        bad = int((~np.isfinite(scores)).any(axis=1).sum())
        raise CalibrationError(
            f"{what} contains NaN or Inf in {bad} of {n} rows", "check the model's outputs (diverged training?)"
        )
    if labels.ndim != 1 or labels.shape[0] != n:
        raise CalibrationError(
            f"labels have shape {labels.shape} but {what} has {n} rows",
            "pass one integer class index per sample, shape [N]",
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if (
            np.issubdtype(labels.dtype, np.floating)
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))
        ):
            labels = labels.astype(np.int64)
        else:
            raise CalibrationError(
                f"labels have dtype {labels.dtype} and are not whole numbers",
                "pass integer class indices (not one-hot vectors or probabilities)",
            )
    labels = labels.astype(np.int64, copy=False)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise CalibrationError(
            f"labels range over [{lo}, {hi}] but there are only {k} classes (valid: 0..{k - 1})",
            "check that the labels and the model's classes match",
        )
    return scores, labels


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = _check(probs, labels, "probs")
    if not looks_like_probabilities(p):
        raise CalibrationError(
            "probs are not probabilities (rows must lie in [0, 1] and sum to 1)",
            "pass logits as the first argument instead, or apply softmax first",
        )
    return np.clip(p, 0.0, 1.0), y


def _check_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z, y = _check(logits, labels, "logits")
    if looks_like_probabilities(z):
        raise CalibrationError(
            "the logits look like probabilities (every row lies in [0, 1] and sums to 1)",
            "pass the model's raw logits, or pass probabilities with probs= (compute_metrics(None, labels, probs=p))",
        )
    return z, y


def _equal_width_stats(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """Per-bin counts, mean accuracy and mean confidence for equal-width bins over [0, 1]."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_acc = np.bincount(idx, weights=hit, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(counts > 0, sum_acc / counts, 0.0)
        mean_conf = np.where(counts > 0, sum_conf / counts, 0.0)
    return edges, counts, acc, mean_conf


def _ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[float, float]:
    """(ECE, MCE) with equal-width bins."""
    _, counts, acc, mean_conf = _equal_width_stats(conf, hit, n_bins)
    gap = np.abs(acc - mean_conf)
    ece = float(np.sum(gap * counts) / conf.shape[0])
    mce = float(gap[counts > 0].max()) if np.any(counts > 0) else 0.0
    return ece, mce


def _adaptive_ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    """ECE over equal-mass bins: samples sorted by confidence and split into n_bins groups of near-equal size."""
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, conf.shape[0])):
        if chunk.size:
            total += chunk.size * abs(float(hit[chunk].mean()) - float(conf[chunk].mean()))
    return total / conf.shape[0]


def _classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    n, k = probs.shape
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), labels] = 1.0
    total = 0.0
    for c in range(k):
        _, counts, freq, mean_p = _equal_width_stats(probs[:, c], onehot[:, c], n_bins)
        total += float(np.sum(np.abs(freq - mean_p) * counts) / n)
    return total / k


def _metrics(probs: np.ndarray, log_p_true: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, float]:
    n = labels.shape[0]
    conf = probs.max(axis=1)
    hit = (probs.argmax(axis=1) == labels).astype(np.float64)
    ece, mce = _ece(conf, hit, n_bins)
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), labels] = 1.0
    return {
        "accuracy": float(hit.mean()),
        "ece": ece,
        "adaptive_ece": _adaptive_ece(conf, hit, n_bins),
        "classwise_ece": _classwise_ece(probs, labels, n_bins),
        "mce": mce,
        "nll": float(-log_p_true.mean()),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
    }


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise CalibrationError(f"n_bins={n_bins!r} is not a positive integer", "use n_bins=15 (the standard ECE)")
    return int(n_bins)


def compute_metrics(
    logits: np.ndarray | None,
    labels: np.ndarray,
    *,
    n_bins: int = 15,
    probs: np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy and calibration metrics of a classifier's outputs (definitions in the module docstring).

    Args:
        logits: Raw scores [N, K] (softmax is applied here). Pass ``None`` and give ``probs`` for probabilities.
        labels: Integer class indices [N].
        n_bins: Number of confidence bins for ECE, adaptive ECE, classwise ECE and MCE.
        probs: Probabilities [N, K] instead of logits (rows in [0, 1] summing to 1), e.g. from ``WithProbabilities``.

    Returns:
        ``{"accuracy", "ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier"}`` as floats (fractions).

    Raises:
        CalibrationError: Bad shapes, NaN/Inf, labels out of range, probabilities passed as logits, or both/neither
            of ``logits`` and ``probs`` given.
    """
    n_bins = _check_bins(n_bins)
    if (logits is None) == (probs is None):
        raise CalibrationError(
            "compute_metrics needs exactly one of logits and probs",
            "call compute_metrics(logits, labels) or compute_metrics(None, labels, probs=p)",
        )
    if probs is not None:
        p, y = _check_probs(probs, labels)
        log_p_true = np.log(np.maximum(p[np.arange(y.shape[0]), y], np.finfo(np.float64).tiny))
        return _metrics(p, log_p_true, y, n_bins)
    assert logits is not None  # exactly one of logits/probs is given (checked above)
    z, y = _check_logits(logits, labels)
    log_p = log_softmax(z)
    return _metrics(np.exp(log_p), log_p[np.arange(y.shape[0]), y], y, n_bins)


def compute_metrics_from_probs(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> dict[str, float]:
    """:func:`compute_metrics` for probabilities [N, K] (e.g. outputs of an exported ``WithProbabilities`` model)."""
    return compute_metrics(None, labels, n_bins=n_bins, probs=probs)


def reliability_bins(
    probs_or_logits: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    *,
    kind: Literal["auto", "logits", "probs"] = "auto",
) -> dict[str, Any]:
    """Per-bin statistics of top-label confidence for reliability diagrams (equal-width bins).

    Args:
        probs_or_logits: Logits or probabilities [N, K].
        labels: Integer class indices [N].
        n_bins: Number of equal-width bins over [0, 1].
        kind: ``"auto"`` treats rows that lie in [0, 1] and sum to 1 as probabilities, anything else as logits.

    Returns:
        ``edges`` [n_bins+1], ``accuracy``, ``confidence`` (mean per bin; 0 where empty), ``counts`` [n_bins] arrays,
        the per-sample ``conf`` [N] and ``correct`` [N] arrays, and scalar ``ece``, ``mce``, ``accuracy_mean``,
        ``confidence_mean``.
    """
    n_bins = _check_bins(n_bins)
    if kind == "probs" or (kind == "auto" and looks_like_probabilities(np.asarray(probs_or_logits))):
        p, y = _check_probs(probs_or_logits, labels)
    elif kind in ("logits", "auto"):
        z, y = _check(probs_or_logits, labels, "logits")
        p = softmax(z)
    else:
        raise CalibrationError(f"kind={kind!r} is not one of 'auto', 'logits', 'probs'", "use kind='auto'")
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    edges, counts, acc, mean_conf = _equal_width_stats(conf, hit, n_bins)
    ece, mce = _ece(conf, hit, n_bins)
    return {
        "edges": edges,
        "accuracy": acc,
        "confidence": mean_conf,
        "counts": counts.astype(np.int64),
        "conf": conf,
        "correct": hit.astype(bool),
        "ece": ece,
        "mce": mce,
        "accuracy_mean": float(hit.mean()),
        "confidence_mean": float(conf.mean()),
    }
