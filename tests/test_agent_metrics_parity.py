"""The agent's metrics copy (it ships alone) agrees with edgecompress.calibration.compute_metrics bit for bit.

One ECE binning rule in the house: bin ``b`` holds ``[b/n_bins, (b+1)/n_bins)``. Confidences that land exactly on a
bin edge are where two binnings part ways, so the data below puts many samples exactly there, plus ties in the logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.calibration import compute_metrics
from edgecompress.devices.agent import classification_metrics

N_BINS = 15


def _conf(logits: np.ndarray) -> np.ndarray:
    """Top-label confidence computed exactly as both implementations compute it."""
    z = logits - logits.max(axis=1, keepdims=True)
    return np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True))).max(axis=1)


def _on_edge(edge: float, k: int) -> np.ndarray | None:
    """A row of ``k`` logits whose softmax confidence is exactly ``edge`` (found by nudging one logit by ulps)."""
    rest = (1.0 - edge) / (k - 1)
    row = np.full(k, np.log(rest))
    row[0] = np.log(edge)
    for _ in range(400):
        c = _conf(row[None])[0]
        if c == edge:
            return row
        row[0] = np.nextafter(row[0], np.inf if c < edge else -np.inf)
    return None


def _boundary_rows(rng: np.random.Generator, k: int, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = [_on_edge(float(e), k) for e in edges if e > 1.0 / k + 1e-9 and e < 1.0]
    rows = [r for r in rows if r is not None]
    out = np.array(rows)
    return out[rng.permutation(len(out))]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("k", [2, 5, 10])
def test_agent_metrics_equal_calibration_metrics_bit_for_bit(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, 1.0, N_BINS + 1)
    boundary = np.repeat(_boundary_rows(rng, k, N_BINS), 3, axis=0)
    hits = np.isin(_conf(boundary), edges)
    assert hits.mean() > 0.5, "the data must really put confidences on bin edges"
    random = rng.normal(size=(300, k)) * rng.uniform(0.3, 4.0)
    ties = rng.integers(-2, 3, size=(100, k)).astype(np.float64)  # integer logits: many tied maxima
    uniform = np.zeros((7, k))  # every class tied: confidence 1/k
    logits = np.concatenate([boundary, random, ties, uniform])
    labels = rng.integers(0, k, len(logits))
    want = compute_metrics(logits, labels, n_bins=N_BINS)
    got = classification_metrics(logits, labels, n_bins=N_BINS)
    for key in ("accuracy", "ece", "nll", "brier"):
        assert got[key] == want[key], (key, got[key], want[key])  # exact: same binning, same operations


def test_a_confidence_on_an_edge_falls_in_the_upper_bin() -> None:
    """One sample exactly on edge 8/15 (correct), one at confidence 0.574 (wrong): the edge sample shares bin 8."""
    edge = float(np.linspace(0.0, 1.0, N_BINS + 1)[8])
    row = _on_edge(edge, 2)
    assert row is not None and _conf(row[None])[0] == edge
    logits = np.stack([row, np.array([0.0, 0.3])])
    labels = np.array([0, 0])
    want = compute_metrics(logits, labels, n_bins=N_BINS)
    got = classification_metrics(logits, labels, n_bins=N_BINS)
    assert got["ece"] == want["ece"] and got["accuracy"] == want["accuracy"] == 0.5
    mean_conf = (edge + _conf(logits[1:])[0]) / 2
    assert want["ece"] == pytest.approx(abs(0.5 - mean_conf), abs=1e-12)  # one bin holding both samples
