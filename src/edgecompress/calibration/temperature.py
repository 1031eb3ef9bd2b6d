"""Temperature scaling: one scalar T > 0 fit on held-out logits (torch is imported inside the function)."""

from __future__ import annotations

import logging
import math

import numpy as np

from edgecompress.calibration.metrics import _check, looks_like_probabilities
from edgecompress.errors import CalibrationError

log = logging.getLogger(__name__)

# Search range of T: outside it the fit is degenerate (e.g. perfectly separated validation logits drive T -> 0).
T_MIN = 1e-2
T_MAX = 1e2


def _nll(logits, labels, log_t):  # torch tensors; kept untyped so this module does not import torch at import time
    import torch.nn.functional as F

    return F.cross_entropy(logits / log_t.exp(), labels)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, max_iter: int = 100) -> float:
    """Fit the temperature T of temperature scaling by minimizing the NLL of softmax(z / T) on held-out data.

    q = softmax(z / T);  T* = argmin_T  −mean_i log q_{i, y_i}.  Optimized with LBFGS (strong-Wolfe line search) over
    log T, which keeps T > 0; the NLL is convex in 1/T, so the optimum is unique. Accuracy is unchanged (the argmax
    is invariant). Fit on a validation split, never the test split.

    Reference: C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.

    Args:
        logits: Raw logits [N, K] of a held-out split (not probabilities; log-probabilities are fine).
        labels: Integer class indices [N].
        max_iter: LBFGS iterations.

    Returns:
        T > 0, clipped to [0.01, 100] (a warning is logged when the optimum lies outside). When every sample is
        classified correctly the NLL has no minimum (it falls as T -> 0): a warning is logged and 1.0 returned.

    Raises:
        CalibrationError: Empty or NaN/Inf input, bad shapes or labels, or probabilities passed as logits.
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().numpy()  # accept a torch tensor too
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    z_np, y_np = _check(np.asarray(logits), np.asarray(labels), "logits")
    if looks_like_probabilities(z_np):
        raise CalibrationError(
            "fit_temperature got probabilities (every row lies in [0, 1] and sums to 1), not logits; "
            "temperature scaling divides logits, and fitting it on probabilities gives a meaningless T",
            "pass the model's raw logits (the output before softmax), or np.log(probs) if only probabilities exist",
        )
    if max_iter < 1:
        raise CalibrationError(f"max_iter={max_iter} must be >= 1", "use the default max_iter=100")

    top = z_np.max(axis=1)
    runner_up = np.partition(z_np, -2, axis=1)[:, -2]
    if np.all((z_np[np.arange(len(y_np)), y_np] == top) & (top > runner_up)):
        # every sample is right with a margin: the NLL keeps falling as T -> 0, so there is no finite optimum, and any
        # small T would make the deployed model absurdly over-confident on its first mistake
        log.warning(
            "temperature scaling has no optimum: all %d validation samples are classified correctly, so the NLL keeps "
            "falling as T -> 0; keeping T = 1 (use a larger or harder validation split to calibrate)",
            len(y_np),
        )
        return 1.0

    import torch

    z = torch.as_tensor(z_np, dtype=torch.float64)
    y = torch.as_tensor(y_np, dtype=torch.int64)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _nll(z, y, log_t)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    with torch.no_grad():
        nll_before = float(_nll(z, y, torch.zeros((), dtype=torch.float64)))
        raw = float(log_t)
        if not math.isfinite(raw):
            raw = 0.0
        t = min(max(math.exp(min(max(raw, -50.0), 50.0)), T_MIN), T_MAX)
        nll_after = float(_nll(z, y, torch.tensor(math.log(t), dtype=torch.float64)))
    if nll_after > nll_before + 1e-12:  # the optimizer failed (should not happen for this convex problem): keep T = 1
        log.warning("temperature fit did not lower the NLL (%.6f -> %.6f); keeping T = 1", nll_before, nll_after)
        return 1.0
    if t in (T_MIN, T_MAX):
        log.warning(
            "fitted temperature hit the bound %.3g (the validation logits are degenerate, e.g. perfectly separated); "
            "use a larger or harder validation split",
            t,
        )
    log.info("temperature T=%.4f: val NLL %.4f -> %.4f", t, nll_before, nll_after)
    return float(t)
