"""MbLS: golden values on a hand-computed example, gradients, and the selection-on-val fine-tune."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecompress.calibration.config import MbLSConfig
from edgecompress.calibration.metrics import compute_metrics
from edgecompress.errors import CalibrationError

torch = pytest.importorskip("torch")
nn = torch.nn

from edgecompress.calibration.mbls import MbLSLoss, margin_penalty, mbls_finetune  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


LOGITS = [[0.0, 12.0, 1.0], [2.0, 0.0, 15.0]]
LABELS = [1, 0]
# Row 1: max 12, gaps (12, 0, 11) -> relu(gap - 10) = (2, 0, 1) -> 3.
# Row 2: max 15, gaps (13, 15, 0) -> (3, 5, 0) -> 8.
MARGIN_GOLDEN = (3.0 + 8.0) / 2  # 5.5


def _ce_by_hand() -> float:
    total = 0.0
    for z, y in zip(LOGITS, LABELS, strict=True):
        total += math.log(sum(math.exp(v) for v in z)) - z[y]
    return total / len(LABELS)


def test_margin_penalty_golden_value() -> None:
    z = torch.tensor(LOGITS, dtype=torch.float64)
    assert margin_penalty(z, 10.0).item() == pytest.approx(MARGIN_GOLDEN, abs=1e-12)
    assert margin_penalty(z, 20.0).item() == 0.0
    # m = 0: every gap counts in full. Row 1: 12 + 0 + 11 = 23; row 2: 13 + 15 + 0 = 28
    assert margin_penalty(z, 0.0).item() == pytest.approx((23 + 28) / 2)


def test_mbls_loss_golden_value_and_terms() -> None:
    z = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(LABELS)
    loss_fn = MbLSLoss()  # m = 10, λ = 0.1
    loss = loss_fn(z, y)
    ce = _ce_by_hand()
    assert loss.item() == pytest.approx(ce + 0.1 * MARGIN_GOLDEN, abs=1e-10)
    assert set(loss_fn.terms) == {"ce", "margin", "loss"}
    assert loss_fn.terms["ce"].item() == pytest.approx(ce, abs=1e-10)
    assert loss_fn.terms["margin"].item() == pytest.approx(MARGIN_GOLDEN, abs=1e-12)
    assert not loss_fn.terms["loss"].requires_grad
    terms = loss_fn(z, y, return_terms=True)
    assert terms["loss"].requires_grad
    assert terms["loss"].item() == pytest.approx(loss.item())
    weighted = MbLSLoss(margin=10.0, weight=2.0)(z, y)
    assert weighted.item() == pytest.approx(ce + 2.0 * MARGIN_GOLDEN, abs=1e-10)


def test_margin_gradient_by_hand() -> None:
    # Row 1 only: penalty = relu(12 - 0 - 10) + relu(12 - 1 - 10) = (z1 - z0 - 10) + (z1 - z2 - 10)
    # d/dz = (-1, +2, -1)
    z = torch.tensor([LOGITS[0]], dtype=torch.float64, requires_grad=True)
    margin_penalty(z, 10.0).backward()
    assert z.grad.tolist() == [[-1.0, 2.0, -1.0]]


def test_margin_penalty_matches_loop_on_random_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(16, 5, generator=gen, dtype=torch.float64) * 8
    expected = np.mean([sum(max(0.0, max(row) - v - 3.0) for v in row) for row in z.tolist()])
    assert margin_penalty(z, 3.0).item() == pytest.approx(expected, rel=1e-12)


def test_loss_rejects_bad_hyperparameters() -> None:
    with pytest.raises(CalibrationError, match="margin"):
        MbLSLoss(margin=0.0)
    with pytest.raises(CalibrationError, match="weight"):
        MbLSLoss(weight=-1.0)


def _tiny_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(160, 1, 6, 6)).astype(np.float32)
    w = rng.normal(size=(36, 3))
    y = (x.reshape(160, -1) @ w).argmax(axis=1).astype(np.int64)
    return x[:112], y[:112], x[112:], y[112:]


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    )


@torch.no_grad()
def _val_nll(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    return compute_metrics(model(torch.from_numpy(x)).double().numpy(), y)["nll"]


def test_finetune_never_raises_val_nll_and_leaves_input_alone() -> None:
    tx, ty, vx, vy = _tiny_problem()
    model = _tiny_model()
    with torch.no_grad():  # an over-confident starting point: large logits
        model[-1].weight.mul_(8.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nll0 = _val_nll(model, vx, vy)
    cfg = MbLSConfig(margin=2.0, weight=0.5, finetune_epochs=3, lr=1e-2, batch_size=32)
    tuned, history = mbls_finetune(model, tx, ty, vx, vy, cfg, seed=0)

    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"input model changed: {k}"
    epochs = history["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2, 3]
    assert epochs[0]["val_nll"] == pytest.approx(nll0, rel=1e-9)
    assert history["best_val_nll"] == min(e["val_nll"] for e in epochs)
    assert history["best_val_nll"] <= nll0
    assert _val_nll(tuned, vx, vy) == pytest.approx(history["best_val_nll"], rel=1e-9)
    assert not tuned.training
    for e in epochs[1:]:
        assert math.isfinite(e["train_loss"])
        assert e["train_loss"] == pytest.approx(e["train_ce"] + 0.5 * e["train_margin"], rel=1e-6)


def test_finetune_is_reproducible_with_a_seed() -> None:
    tx, ty, vx, vy = _tiny_problem(1)
    cfg = MbLSConfig(finetune_epochs=1, lr=1e-2, batch_size=16)
    _, h1 = mbls_finetune(_tiny_model(), tx, ty, vx, vy, cfg, seed=3)
    _, h2 = mbls_finetune(_tiny_model(), tx, ty, vx, vy, cfg, seed=3)
    assert h1["epochs"] == h2["epochs"]


def test_finetune_rejects_mismatched_data() -> None:
    tx, ty, vx, vy = _tiny_problem()
    with pytest.raises(CalibrationError, match="labels"):
        mbls_finetune(_tiny_model(), tx, ty[:-1], vx, vy, MbLSConfig(), seed=0)
    with pytest.raises(CalibrationError, match="non-empty"):
        mbls_finetune(_tiny_model(), tx, ty, vx[:0], vy[:0], MbLSConfig(), seed=0)


def test_finetune_keeps_epoch_zero_when_training_hurts() -> None:
    tx, ty, vx, vy = _tiny_problem(2)
    model = _tiny_model()
    # first fit the model a little with plain Adam so that a wild fine-tune can only make the val NLL worse
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(tx)), torch.from_numpy(ty)).backward()
        opt.step()
    cfg = MbLSConfig(margin=0.5, weight=5.0, finetune_epochs=2, lr=0.5, batch_size=16)
    tuned, history = mbls_finetune(model, tx, ty, vx, vy, cfg, seed=0)
    assert history["epochs"][0]["train_loss"] is None
    assert all(e["val_nll"] > history["epochs"][0]["val_nll"] for e in history["epochs"][1:])
    assert history["best_epoch"] == 0
    model.eval()
    x = torch.from_numpy(vx)
    with torch.no_grad():
        torch.testing.assert_close(tuned(x), model(x))
