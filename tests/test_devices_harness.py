"""The latency harness and the agent's compact metrics, as pure functions on known inputs."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from edgecompress.devices import agent
from edgecompress.devices.agent import PowerSampler, classification_metrics, environment, measure, summarize_times


def test_percentiles_after_clipping_on_a_known_array() -> None:
    t = np.concatenate([np.arange(1.0, 101.0), [10_000.0]])
    s = summarize_times(t, k=5.0, floor=0.0)
    # median 51, MAD 25 -> band 5*1.4826*25 = 185.3: only the 10 s spike goes
    assert s["n_clipped"] == 1 and s["n"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    assert s["std"] == pytest.approx(np.std(np.arange(1.0, 101.0), ddof=1))
    assert "MAD" in s["clip"]


def test_floor_keeps_an_ordinary_tail_of_a_tight_distribution() -> None:
    t = np.array([1.00] * 50 + [1.01] * 40 + [1.03] * 9 + [5.0])
    s = summarize_times(t, k=5.0, floor=0.05)
    assert s["n_clipped"] == 1  # MAD is 0 here; the 5 % floor keeps 1.03 and drops the 5x spike
    assert s["max"] == pytest.approx(1.03)


def test_constant_times_are_not_clipped() -> None:
    s = summarize_times([2.0] * 10)
    assert s["n_clipped"] == 0 and s["std"] == 0.0 and s["p99"] == 2.0


def test_empty_times_are_refused() -> None:
    with pytest.raises(ValueError):
        summarize_times([])


class CountingRuntime:
    """A harness test double: counts calls (the harness logic, not a model, is under test)."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def load(self, path, *, threads=None) -> None:  # pragma: no cover - not used
        pass

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.zeros((len(x), 2), np.float32)

    def info(self) -> dict:
        return {}


def test_measure_honours_warmup_min_iters_and_repeats() -> None:
    rt = CountingRuntime()
    m = measure(rt, np.zeros((4, 1), np.float32), warmup=3, min_time_s=0.0, min_iters=5, repeats=2)
    assert rt.calls == 3 + m["iterations"]
    assert m["iterations"] == 10 and m["repeats"] == 2 and len(m["repeats_p50"]) == 2
    assert m["batch"] == 4 and m["throughput"] == pytest.approx(4 / (m["mean"] / 1e3))
    assert m["peak_rss_mb"] > 0 and m["energy_mj_per_inference"] is None


def test_measure_stops_at_max_iters() -> None:
    rt = CountingRuntime()
    m = measure(rt, np.zeros((1, 1), np.float32), warmup=0, min_time_s=60.0, min_iters=1, max_iters=7, repeats=1)
    assert m["iterations"] == 7


def _reference_metrics(logits: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    edges = np.linspace(0, 1, n_bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    onehot = np.eye(logits.shape[1])[y]
    return {
        "accuracy": (pred == y).mean(),
        "ece": ece,
        "nll": -np.log(p[np.arange(len(y)), y]).mean(),
        "brier": ((p - onehot) ** 2).sum(1).mean(),
    }


def test_metrics_match_a_direct_computation() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(200, 7)) * 3
    y = rng.integers(0, 7, 200)
    got, want = classification_metrics(logits, y), _reference_metrics(logits, y)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_metrics_on_a_hand_example() -> None:
    logits = np.array([[math.log(3.0), 0.0], [0.0, 0.0]])  # p = (0.75, 0.25) and (0.5, 0.5)
    m = classification_metrics(logits, np.array([0, 1]))
    assert m["accuracy"] == 0.5  # argmax of a tie is class 0
    assert m["nll"] == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2)
    assert m["brier"] == pytest.approx((2 * 0.25**2 + 2 * 0.5**2) / 2)
    assert m["ece"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.5)


def test_metrics_agree_with_the_calibration_package() -> None:
    calibration = pytest.importorskip("edgecompress.calibration", reason="calibration package not built yet")
    rng = np.random.default_rng(2)
    logits, y = rng.normal(size=(300, 5)) * 2, rng.integers(0, 5, 300)
    full, mine = calibration.compute_metrics(logits, y), classification_metrics(logits, y)
    for key in ("accuracy", "ece", "nll", "brier"):
        assert mine[key] == pytest.approx(full[key], rel=1e-6, abs=1e-9), key


@pytest.mark.parametrize(
    ("line", "mw"),
    [
        ("RAM 2448/7620MB (lfb 2x4MB) CPU [5%@729,3%@729] VDD_IN 5123mW/5100mW VDD_CPU_GPU_CV 700mW/690mW", 5123),
        ("RAM 1500/3964MB CPU [2%@102] GPU 0%@76 POM_5V_IN 2345/2400 POM_5V_GPU 0/0 POM_5V_CPU 388/400", 2345),
        ("RAM 1500/3964MB CPU [2%@102] no power rails here", None),
    ],
)
def test_tegrastats_lines_are_parsed(line: str, mw: float | None) -> None:
    assert PowerSampler.parse_line(line) == mw


def test_environment_record() -> None:
    env = environment({"runtime": "x"}, threads=2)
    for key in ("cpu", "cores", "os", "python", "numpy", "threads", "runtime"):
        assert key in env
    assert env["threads"] == 2 and env["cores"] >= 1


def test_agent_is_standalone() -> None:
    """agent.py is copied to devices without edgecompress: it must import only stdlib, numpy and runtimes."""
    tree = ast.parse(Path(agent.__file__).read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "edgecompress" not in names
    assert names - {"__future__", "numpy", "torch", "cuda"} <= set(__import__("sys").stdlib_module_names)
