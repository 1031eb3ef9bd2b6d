"""Put temperature scaling inside the model graph, so exported models output calibrated logits (or probabilities).

softmax(z / T) with z = W·h + b equals softmax(W′·h + b′) for W′ = W / T, b′ = b / T: scaling the final linear layer
by 1/T folds T into the weights at no run-time cost (Guo et al., ICML 2017). When the layer that produces the logits
cannot be found or the fold cannot be verified, the model is wrapped in :class:`TemperatureDivide` instead.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import Tensor, nn

from edgecompress.errors import CalibrationError

log = logging.getLogger(__name__)

_VERIFY_RTOL = 1e-4
_VERIFY_ATOL = 1e-5
_MAX_CANDIDATES = 4  # Linear layers tried, from the last in module order backwards


class TemperatureDivide(nn.Module):
    """``model(x) / T``: temperature scaling as an explicit division (T kept as a buffer, so it is exported)."""

    temperature: Tensor  # buffer registered in __init__

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.6g}"


class WithProbabilities(nn.Module):
    """``softmax(model(x))`` over the last dimension, so an exported model outputs probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=-1)


def _linear_candidates(model: nn.Module, limit: int = _MAX_CANDIDATES) -> list[str]:
    """Names of the Linear layers, last in module order first (the usual place of the classifier head)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[::-1][:limit]


def _scaled_copy(model: nn.Module, name: str, t: float) -> nn.Module:
    folded = copy.deepcopy(model)
    linear = folded.get_submodule(name)
    assert isinstance(linear, nn.Linear)  # name comes from _linear_candidates
    with torch.no_grad():
        linear.weight.mul_(1.0 / t)
        if linear.bias is not None:
            linear.bias.mul_(1.0 / t)
    return folded


def _reference_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> list[Tensor]:
    ref: Tensor | None = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((3, *input_shape), generator=gen, dtype=torch.float32)
    # two scales: a fold that only happens to agree at one input scale (a non-homogeneous path) is caught
    return [x.to(device=device, dtype=dtype), (4.0 * x).to(device=device, dtype=dtype)]


@torch.no_grad()
def _fold_matches(folded: nn.Module, inputs: list[Tensor], wanted: list[Tensor]) -> bool:
    folded.eval()
    for x, want in zip(inputs, wanted, strict=True):
        got = folded(x)
        if not isinstance(got, Tensor) or got.shape != want.shape:
            return False
        if not torch.allclose(got, want, rtol=_VERIFY_RTOL, atol=_VERIFY_ATOL * max(1.0, float(want.abs().max()))):
            return False
    return True


def fold_temperature(
    model: nn.Module, temperature: float, *, input_shape: tuple[int, int, int] | None = None
) -> nn.Module:
    """Return a copy of ``model`` whose output is ``model(x) / T``, with T folded into the final linear layer.

    The Linear layers are tried from the last in module order backwards (at most four): its weight and bias are
    scaled by 1/T in a deep copy, and the copy is kept when it passes a check on random inputs of ``input_shape``
    (``folded(x) == model(x) / T``). When there is no Linear, no candidate passes (e.g. the logits go through a
    BatchNorm after the Linear, or its weight is shared), or ``input_shape`` is not given (nothing to verify on), the
    copy is wrapped in :class:`TemperatureDivide`, which divides explicitly. Either way the input model is untouched,
    and the result is in the input model's train/eval mode. Formula: softmax(z / T) (Guo et al., ICML 2017).

    Args:
        model: Classifier returning logits [N, K].
        temperature: T > 0 from :func:`~edgecompress.calibration.temperature.fit_temperature`.
        input_shape: (C, H, W) of one input, used to verify the fold.

    Returns:
        The calibrated copy.

    Raises:
        CalibrationError: T is not a finite number > 0, or ``input_shape`` is malformed.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise CalibrationError(
            f"temperature T={temperature!r} must be a finite number > 0", "fit it with fit_temperature"
        )
    if input_shape is not None and (
        len(tuple(input_shape)) != 3 or any(not isinstance(d, int) or d < 1 for d in input_shape)
    ):
        raise CalibrationError(f"input_shape={input_shape!r} is not (C, H, W) of positive ints", "e.g. (3, 32, 32)")

    was_training = model.training
    if t == 1.0:
        return copy.deepcopy(model)
    candidates = _linear_candidates(model)
    if candidates and input_shape is not None:
        inputs = _reference_inputs(model, tuple(input_shape))
        try:
            model.eval()
            with torch.no_grad():
                wanted = [model(x) / t for x in inputs]
            for name in candidates:
                folded = _scaled_copy(model, name, t)
                if _fold_matches(folded, inputs, wanted):
                    folded.train(was_training)
                    log.info("folded T=%.4f into the Linear '%s'", t, name)
                    return folded
            log.info("scaling Linear %s by 1/T did not give model(x)/T; dividing explicitly", candidates)
        except Exception as exc:  # noqa: BLE001 - a model that fails on a random input cannot be verified
            log.warning("could not verify the temperature fold on a random input (%s); dividing explicitly", exc)
        finally:
            model.train(was_training)
    elif not candidates:
        log.info("no nn.Linear in the model; applying T=%.4f as an explicit division", t)
    else:
        log.info("no input_shape to verify a fold; applying T=%.4f as an explicit division", t)
    wrapped = TemperatureDivide(copy.deepcopy(model), t)
    wrapped.train(was_training)
    return wrapped
