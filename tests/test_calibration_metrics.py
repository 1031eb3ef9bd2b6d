"""Calibration metrics: cross-checked against torchmetrics and direct formulas; input validation; lean, vendorable."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.calibration.metrics import (
    compute_metrics,
    compute_metrics_from_probs,
    log_softmax,
    reliability_bins,
    softmax,
)
from edgecompress.errors import CalibrationError

torch = pytest.importorskip("torch")
tm_cls = pytest.importorskip("torchmetrics.functional.classification")

METRICS_FILE = Path(__file__).resolve().parents[1] / "src" / "edgecompress" / "calibration" / "metrics.py"
KEYS = {"accuracy", "ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier"}


def _random_problem(seed: int, n: int = 600, k: int = 7, scale: float = 2.5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, scale, size=(n, k))
    labels = rng.integers(0, k, size=n)
    # make accuracy non-trivial: a share of labels agree with the argmax
    agree = rng.random(n) < 0.6
    labels[agree] = logits[agree].argmax(axis=1)
    # round probabilities through float32 so torchmetrics (which works in float32) sees exactly the same values
    probs = softmax(logits).astype(np.float32).astype(np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    return logits, probs, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [15, 10])
def test_ece_and_mce_match_torchmetrics(seed: int, n_bins: int) -> None:
    _, probs, labels = _random_problem(seed)
    ours = compute_metrics_from_probs(probs, labels, n_bins=n_bins)
    p = torch.tensor(probs, dtype=torch.float32)
    y = torch.tensor(labels)
    k = probs.shape[1]
    ece = tm_cls.multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="l1").item()
    mce = tm_cls.multiclass_calibration_error(p, y, num_classes=k, n_bins=n_bins, norm="max").item()
    assert ours["ece"] == pytest.approx(ece, abs=1e-6)
    assert ours["mce"] == pytest.approx(mce, abs=1e-6)
    assert ours["ece"] > 0.01  # not a degenerate comparison of two zeros


def test_classwise_ece_matches_per_class_binary_calibration_error() -> None:
    _, probs, labels = _random_problem(3, k=5)
    ours = compute_metrics_from_probs(probs, labels)["classwise_ece"]
    per_class = [
        tm_cls.binary_calibration_error(
            torch.tensor(probs[:, c], dtype=torch.float32), torch.tensor((labels == c).astype(np.int64)), n_bins=15
        ).item()
        for c in range(probs.shape[1])
    ]
    assert ours == pytest.approx(float(np.mean(per_class)), abs=1e-6)


def test_accuracy_nll_brier_match_direct_formulas() -> None:
    logits, _, labels = _random_problem(4, n=200, k=4)
    m = compute_metrics(logits, labels)
    assert set(m) == KEYS
    nll = brier = hits = 0.0
    for z, y in zip(logits, labels, strict=True):
        denom = sum(math.exp(v) for v in z)
        p = [math.exp(v) / denom for v in z]
        nll -= math.log(p[y])
        brier += sum((pk - (1.0 if k == y else 0.0)) ** 2 for k, pk in enumerate(p))
        hits += float(int(np.argmax(z)) == y)
    n = len(labels)
    assert m["nll"] == pytest.approx(nll / n, rel=1e-10)
    assert m["brier"] == pytest.approx(brier / n, rel=1e-10)
    assert m["accuracy"] == pytest.approx(hits / n)
    assert all(isinstance(v, float) for v in m.values())


def test_probs_path_equals_logits_path() -> None:
    logits, _, labels = _random_problem(5)
    a = compute_metrics(logits, labels)
    b = compute_metrics(None, labels, probs=softmax(logits))
    for key in KEYS:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


def test_adaptive_ece_hand_example_and_sanity() -> None:
    # K=2, top-label confidences 0.6, 0.7, 0.8, 0.9; correct, wrong, correct, correct.
    probs = np.array([[0.6, 0.4], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1])
    m = compute_metrics_from_probs(probs, labels, n_bins=2)
    # equal-mass bins {0.6, 0.7}: acc 0.5, conf 0.65; {0.8, 0.9}: acc 1.0, conf 0.85 -> 0.5*0.15 + 0.5*0.15
    assert m["adaptive_ece"] == pytest.approx(0.15)
    # equal-width bins [0, .5) empty, [.5, 1]: acc 0.75, conf 0.75 -> 0
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)

    # a calibrated source (labels drawn from softmax(z)) has small adaptive ECE; sharpened logits a large one
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, size=(4000, 5))
    p = softmax(z)
    y = (p.cumsum(axis=1) < rng.random((4000, 1))).sum(axis=1).clip(max=4)
    calibrated = compute_metrics(z, y)["adaptive_ece"]
    sharpened = compute_metrics(3.0 * z, y)["adaptive_ece"]
    assert calibrated < 0.03
    assert sharpened > 0.15


def test_softmax_is_stable_and_consistent() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4 + 1.0]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.exp(log_softmax(z)), p, atol=1e-15)
    assert np.all(np.isfinite(log_softmax(z)))
    m = compute_metrics(z, np.array([0, 2]))
    assert m["nll"] == pytest.approx(-float(log_softmax(z)[1, 2]) / 2)


def test_reliability_bins_agree_with_metrics() -> None:
    logits, _, labels = _random_problem(6)
    bins = reliability_bins(logits, labels, 15)
    assert bins["edges"].shape == (16,)
    assert bins["accuracy"].shape == bins["confidence"].shape == bins["counts"].shape == (15,)
    assert int(bins["counts"].sum()) == len(labels)
    m = compute_metrics(logits, labels)
    assert bins["ece"] == pytest.approx(m["ece"])
    assert bins["accuracy_mean"] == pytest.approx(m["accuracy"])
    filled = bins["counts"] > 0
    lo, hi = bins["edges"][:-1][filled], bins["edges"][1:][filled]
    assert np.all(bins["confidence"][filled] >= lo) and np.all(bins["confidence"][filled] <= hi)
    # auto-detection reads probabilities as probabilities
    assert reliability_bins(softmax(logits), labels, 15)["ece"] == pytest.approx(m["ece"])


@pytest.mark.parametrize(
    ("logits", "labels", "needle"),
    [
        (np.zeros((4,)), np.zeros(4, dtype=int), "2-D"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        (np.zeros((4, 1)), np.zeros(4, dtype=int), "class column"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]), "NaN"),
        (np.ones((3, 3)) * 2, np.array([0, 1]), "shape"),
        (np.ones((3, 3)) * 2, np.array([0, 1, 3]), "only 3 classes"),
        (np.ones((3, 3)) * 2, np.array([0, -1, 1]), "range"),
        (np.ones((2, 3)) * 2, np.array([0.5, 1.0]), "whole numbers"),
        (np.full((2, 4), 0.25), np.array([0, 1]), "look like probabilities"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(logits, labels, needle) -> None:
    with pytest.raises(CalibrationError, match=needle) as info:
        compute_metrics(logits, labels)
    assert "fix:" in str(info.value)
    assert "\n" not in str(info.value)


def test_probs_argument_validation() -> None:
    with pytest.raises(CalibrationError, match="exactly one"):
        compute_metrics(None, np.array([0]))
    with pytest.raises(CalibrationError, match="exactly one"):
        compute_metrics(np.zeros((1, 2)), np.array([0]), probs=np.array([[0.5, 0.5]]))
    with pytest.raises(CalibrationError, match="not probabilities"):
        compute_metrics_from_probs(np.array([[2.0, -1.0]]), np.array([0]))
    with pytest.raises(CalibrationError, match="n_bins"):
        compute_metrics(np.array([[2.0, -1.0]]), np.array([0]), n_bins=0)
    # integer-valued float labels are accepted
    assert compute_metrics(np.array([[2.0, -1.0]]), np.array([0.0]))["accuracy"] == 1.0


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)  # noqa: S603 - fixed argv


def test_metrics_module_runs_vendored_without_edgecompress_or_torch() -> None:
    code = f"""
import importlib.util, sys
sys.modules["edgecompress"] = None  # any import of the package fails
spec = importlib.util.spec_from_file_location("vendored_metrics", {str(METRICS_FILE)!r})
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
import numpy as np
m = mod.compute_metrics(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0]))
assert abs(m["accuracy"] - 0.5) < 1e-12, m
try:
    mod.compute_metrics(np.zeros((2, 2)), np.array([0, 5]))
except ValueError as exc:
    assert "fix:" in str(exc)
else:
    raise SystemExit("no error")
assert "torch" not in sys.modules
print("ok")
"""
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def test_import_calibration_stays_light() -> None:
    code = """
import sys
import edgecompress.calibration as cal
assert "torch" not in sys.modules and "matplotlib" not in sys.modules
cal.compute_metrics, cal.fit_temperature, cal.CalibrationConfig, cal.reliability_bins
assert "torch" not in sys.modules and "matplotlib" not in sys.modules, "metrics/temperature/config import torch"
cal.fold_temperature
assert "torch" in sys.modules
print("ok")
"""
    res = _run(code)
    assert res.returncode == 0, res.stderr
