"""Build a model from a :class:`ModelSpec`, and count its parameters and multiply-accumulates."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from edgecompress.errors import ModelError
from edgecompress.models.config import ModelSpec

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def build_model(spec: ModelSpec, *, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """Instantiate the architecture of ``spec`` (built-in family or ``"pkg.mod:fn"`` factory), randomly initialized.

    Args:
        spec: family + params, or factory + params.
        in_channels: image channels (1 gray, 3 RGB).
        num_classes: logits per sample.
        input_size: (H, W) of the input.

    Returns:
        An ``nn.Module`` mapping ``[N, C, H, W]`` to logits ``[N, num_classes]``.
    """
    from torch import nn

    if spec.family is not None:
        from edgecompress.models.families import build_family

        return build_family(
            spec.family, dict(spec.params), in_channels=in_channels, num_classes=num_classes, input_size=input_size
        )
    mod_name, _, fn_name = str(spec.factory).partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelError(
            f"model factory {spec.factory!r}: cannot import module {mod_name!r} ({exc})",
            "install the package or put its folder on PYTHONPATH",
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelError(f"model factory {spec.factory!r}: {mod_name} has no function {fn_name!r}", "check the name")
    try:
        model = fn(num_classes=num_classes, in_channels=in_channels, **spec.params)
    except TypeError as exc:
        raise ModelError(
            f"model factory {spec.factory!r} rejected its arguments ({exc})",
            "it must accept num_classes=, in_channels= and the keys in model.params",
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model factory {spec.factory!r} returned {type(model).__name__}, not an nn.Module", "return one"
        )
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on a batch of 1 (torch-pruning's op counter, on a zero input)."""
    import torch

    from edgecompress._lazy import require

    tp = require("torch_pruning", "counting MACs")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape, device=device))
    return int(macs)
