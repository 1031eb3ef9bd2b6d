"""Temperature scaling: recovers a known temperature, lowers NLL, keeps accuracy, refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.calibration.metrics import compute_metrics, softmax
from edgecompress.calibration.temperature import T_MAX, fit_temperature
from edgecompress.errors import CalibrationError

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _calibrated_source(seed: int, n: int = 20000, k: int = 10, scale: float = 2.0):
    """Logits z and labels drawn from softmax(z): z is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    u = rng.random((n, 1))
    y = (softmax(z).cumsum(axis=1) < u).sum(axis=1).clip(max=k - 1)
    return z, y


@pytest.mark.parametrize("t0", [0.5, 0.8, 1.0, 1.7, 2.5, 4.0])
def test_recovers_known_temperature(t0: float) -> None:
    # If z is calibrated, the model that outputs z·T0 is mis-calibrated by T0 (T0 > 1 over-confident); dividing its
    # logits by the fitted T must give back z, so T must come out as T0.
    z, y = _calibrated_source(seed=int(t0 * 10))
    t = fit_temperature(z * t0, y)
    assert t == pytest.approx(t0, rel=0.02)


def test_lowers_nll_and_ece_keeps_accuracy() -> None:
    z, y = _calibrated_source(seed=7, n=5000)
    over = 3.0 * z
    t = fit_temperature(over, y)
    before, after = compute_metrics(over, y), compute_metrics(over / t, y)
    assert after["nll"] < before["nll"]
    assert after["ece"] < before["ece"] / 3
    assert after["accuracy"] == before["accuracy"]


def test_accepts_float32_and_torch_tensors() -> None:
    z, y = _calibrated_source(seed=3, n=3000)
    t_np = fit_temperature((2.0 * z).astype(np.float32), y)
    t_torch = fit_temperature(torch.tensor(2.0 * z, dtype=torch.float32), torch.tensor(y))
    assert t_np == pytest.approx(t_torch, rel=1e-6)
    assert t_np == pytest.approx(2.0, rel=0.05)


def test_log_probabilities_are_valid_logits() -> None:
    z, y = _calibrated_source(seed=5, n=3000)
    log_p = np.log(softmax(2.0 * z))
    assert fit_temperature(log_p, y) == pytest.approx(fit_temperature(2.0 * z, y), rel=1e-4)


def test_refuses_probabilities() -> None:
    z, y = _calibrated_source(seed=1, n=500)
    with pytest.raises(CalibrationError, match="got probabilities") as info:
        fit_temperature(softmax(z), y)
    msg = str(info.value)
    assert "fix:" in msg and "raw logits" in msg


@pytest.mark.parametrize(
    ("logits", "labels", "needle"),
    [
        (np.zeros((0, 4)), np.zeros(0, dtype=np.int64), "empty"),
        (np.array([[np.nan, 1.0], [0.0, 1.0]]), np.array([0, 1]), "NaN"),
        (np.array([[np.inf, 1.0], [0.0, 1.0]]), np.array([0, 1]), "NaN or Inf"),
        (np.array([[3.0, 1.0], [0.0, 1.0]]), np.array([0, 2]), "classes"),
        (np.array([[3.0, 1.0], [0.0, 1.0]]), np.array([0]), "shape"),
    ],
)
def test_refuses_bad_input(logits, labels, needle) -> None:
    with pytest.raises(CalibrationError, match=needle):
        fit_temperature(logits, labels)


def test_perfectly_separated_logits_keep_t_one_with_a_warning(caplog) -> None:
    z = np.array([[5.0, 0.0], [0.0, 5.0], [6.0, 1.0], [1.0, 7.0]])
    y = np.array([0, 1, 0, 1])
    with caplog.at_level("WARNING"):
        t = fit_temperature(z, y)
    assert t == 1.0
    assert "no optimum" in caplog.text


def test_anti_informative_logits_hit_the_upper_bound(caplog) -> None:
    # the labels are always the lowest logit: NLL falls as T grows, the fit stops at the bound and says so
    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 4))
    y = z.argmin(axis=1)
    with caplog.at_level("WARNING"):
        t = fit_temperature(z, y)
    assert t == pytest.approx(T_MAX)
    assert "bound" in caplog.text
