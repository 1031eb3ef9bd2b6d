"""Folding T into the graph: the folded model outputs model(x) / T, by a scaled Linear or an explicit division."""

from __future__ import annotations

import pytest

from edgecompress.errors import CalibrationError

torch = pytest.importorskip("torch")
nn = torch.nn

from edgecompress.calibration.fold import TemperatureDivide, WithProbabilities, fold_temperature  # noqa: E402

SHAPE = (3, 8, 8)
T = 2.7


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.features(x))


class ConvHead(nn.Module):
    """No Linear at all: a 1x1 conv classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 5, 1))

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


class LinearThenNorm(nn.Module):
    """The last layer is a BatchNorm1d after the Linear: scaling the Linear does not scale the output."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        return self.net(x)


class GateDefinedLast(nn.Module):
    """The last Linear in module order is a gate used before the head (squeeze-excitation style)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, 5)
        self.gate = nn.Linear(6, 6)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(h * torch.sigmoid(self.gate(h)))


def _trained_bn(model: nn.Module) -> nn.Module:
    # give BatchNorm non-trivial running statistics, then evaluate
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *SHAPE) * 2 + 0.5)
    return model.eval()


def _inputs() -> torch.Tensor:
    return torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(42))


def _assert_divides(folded: nn.Module, model: nn.Module) -> None:
    x = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(folded.eval()(x), model.eval()(x) / T, rtol=1e-5, atol=1e-5)


def test_cnn_with_final_linear_is_folded_into_the_weights() -> None:
    torch.manual_seed(0)
    model = _trained_bn(SmallCNN())
    w, b = model.fc.weight.clone(), model.fc.bias.clone()
    folded = fold_temperature(model, T, input_shape=SHAPE)
    assert not isinstance(folded, TemperatureDivide)
    assert type(folded) is SmallCNN
    torch.testing.assert_close(folded.fc.weight, w / T)
    torch.testing.assert_close(folded.fc.bias, b / T)
    assert torch.equal(model.fc.weight, w), "the input model must not change"
    _assert_divides(folded, model)


def test_model_without_linear_falls_back_to_division() -> None:
    torch.manual_seed(1)
    model = ConvHead().eval()
    folded = fold_temperature(model, T, input_shape=SHAPE)
    assert isinstance(folded, TemperatureDivide)
    assert float(folded.temperature) == pytest.approx(T)
    _assert_divides(folded, model)


def test_linear_followed_by_norm_falls_back_to_division() -> None:
    torch.manual_seed(2)
    model = _trained_bn(LinearThenNorm())
    folded = fold_temperature(model, T, input_shape=SHAPE)
    assert isinstance(folded, TemperatureDivide)
    _assert_divides(folded, model)


def test_linear_that_is_not_last_is_skipped_for_the_real_head() -> None:
    torch.manual_seed(3)
    model = GateDefinedLast().eval()
    folded = fold_temperature(model, T, input_shape=SHAPE)
    assert not isinstance(folded, TemperatureDivide)
    torch.testing.assert_close(folded.gate.weight, model.gate.weight)  # the gate is untouched
    torch.testing.assert_close(folded.head.weight, model.head.weight / T)
    _assert_divides(folded, model)


def test_without_input_shape_divides_explicitly() -> None:
    torch.manual_seed(4)
    model = SmallCNN().eval()
    folded = fold_temperature(model, T)
    assert isinstance(folded, TemperatureDivide)
    _assert_divides(folded, model)


def test_train_mode_is_preserved_and_t_one_is_a_copy() -> None:
    model = SmallCNN().train()
    folded = fold_temperature(model, T, input_shape=SHAPE)
    assert model.training and folded.training
    same = fold_temperature(model, 1.0, input_shape=SHAPE)
    assert same is not model
    assert torch.equal(same.fc.weight, model.fc.weight)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "warm"])
def test_bad_temperature_is_refused(bad) -> None:
    with pytest.raises(CalibrationError, match="temperature"):
        fold_temperature(SmallCNN(), bad, input_shape=SHAPE)


def test_bad_input_shape_is_refused() -> None:
    with pytest.raises(CalibrationError, match="input_shape"):
        fold_temperature(SmallCNN(), T, input_shape=(8, 8))  # type: ignore[arg-type]


def test_with_probabilities_sums_to_one_and_matches_softmax() -> None:
    torch.manual_seed(5)
    model = _trained_bn(SmallCNN())
    calibrated = WithProbabilities(fold_temperature(model, T, input_shape=SHAPE)).eval()
    x = _inputs()
    with torch.no_grad():
        probs = calibrated(x)
        ref = torch.softmax(model(x) / T, dim=1)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(x.shape[0]))
    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs, ref, rtol=1e-5, atol=1e-6)
