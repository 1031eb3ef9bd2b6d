"""Cut a smaller student from a model by structured channel pruning (torch-pruning) to a target MAC ratio.

Method: DepGraph structured pruning (Fang et al., CVPR 2023, "DepGraph: Towards Any Structural Pruning") with
magnitude importance, I(g) = mean over the coupled group g of ||W_c||_p (L1/L2 norm of each channel's weights),
removing the lowest-scoring channels. Global pruning is off, so every layer loses the same fraction ``r`` of its
channels and keeps some; ``r`` is found by bisection so that MACs(pruned) <= mac_ratio * MACs(original) with the
smallest such ``r``. The final classifier is ignored so the number of classes stays.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING

from edgecompress.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

_IMPORTANCE = ("l1", "l2", "fpgm", "lamp")
_TOLERANCE = 0.01  # stop the search once MACs are within 1 % below the target


def _importance(tp, name: str):  # noqa: ANN001, ANN202 (torch_pruning types)
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    return tp.importance.LAMPImportance(p=2)


def final_linear(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` registered in ``model`` (the classifier that pruning must leave alone)."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError("the model has no nn.Linear classifier to keep", "end the model with an nn.Linear layer")
    return linears[-1]


def max_ratio(model: nn.Module, round_to: int | None = None) -> float:
    """The largest uniform per-layer ratio that leaves every prunable layer ``round_to`` (or 1) channels.

    torch-pruning keeps ``int(C * (1 - r))`` of ``C`` channels and skips a layer it would empty, so beyond this ratio
    the smallest layers would stop shrinking and MACs would no longer fall monotonically with ``r``.
    """
    from torch import nn

    head = final_linear(model)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    widths += [m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    if not widths:
        raise ModelError("the model has no prunable Conv2d/Linear layer besides the classifier", "prune a CNN")
    keep = round_to or 1
    if min(widths) < keep:
        raise ModelError(
            f"round_to {round_to} is larger than the narrowest layer ({min(widths)} channels)",
            "lower round_to or leave it unset",
        )
    return 1.0 - (keep + 0.5) / min(widths)  # +0.5: int(C * (1 - r)) >= keep despite float rounding


def prune_once(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    ratio: float,
    *,
    round_to: int | None = None,
    importance: str = "l2",
) -> nn.Module:
    """A pruned deep copy with ``ratio`` of every prunable layer's channels removed (global pruning off)."""
    import torch

    from edgecompress._lazy import require

    tp = require("torch_pruning", "structured pruning")
    pruned = copy.deepcopy(model).cpu().eval()  # eval: tracing must not touch BatchNorm running statistics
    if ratio <= 0:
        return pruned
    example = torch.zeros(1, *input_shape)
    pruner = tp.pruner.BasePruner(
        pruned,
        example,
        importance=_importance(tp, importance),
        pruning_ratio=float(ratio),
        max_pruning_ratio=1.0,
        global_pruning=False,
        iterative_steps=1,
        ignored_layers=[final_linear(pruned)],
        round_to=round_to,
    )
    with torch.no_grad():
        pruner.step()
    return pruned


def prune_to_ratio(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    mac_ratio: float,
    *,
    round_to: int | None = None,
    importance: str = "l2",
    steps: int = 14,
) -> nn.Module:
    """A structurally pruned copy of ``model`` with at most ``mac_ratio`` of its MACs (``model`` is untouched).

    Args:
        model: the model to cut from (e.g. the teacher); its final ``nn.Linear`` keeps all classes.
        input_shape: (C, H, W) of one input.
        mac_ratio: target MACs as a fraction of the original's, in (0, 1].
        round_to: keep channel counts multiples of this (e.g. 8 for tensor cores / SIMD), or None.
        importance: channel score: "l1", "l2" (magnitude), "fpgm" or "lamp".
        steps: bisection iterations on the per-layer pruning ratio.

    Returns:
        The pruned model (same training/eval mode as ``model``), with MACs <= mac_ratio * original MACs.
    """
    from edgecompress.models.build import count_macs

    if not isinstance(mac_ratio, (int, float)) or not 0 < mac_ratio <= 1:
        raise ModelError(f"mac_ratio must be in (0, 1], got {mac_ratio!r}", "e.g. 0.25 keeps a quarter of the MACs")
    if importance not in _IMPORTANCE:
        raise ModelError(f"unknown pruning importance {importance!r}", f"use one of: {', '.join(_IMPORTANCE)}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ModelError(f"round_to must be a positive int or None, got {round_to!r}", "e.g. round_to: 8")
    base = count_macs(model, input_shape)
    target = mac_ratio * base
    was_training = model.training

    def attempt(r: float) -> tuple[nn.Module, int]:
        try:
            pruned = prune_once(model, input_shape, r, round_to=round_to, importance=importance)
        except ModelError:
            raise
        except Exception as exc:  # torch-pruning cannot trace some custom models
            raise ModelError(
                f"structured pruning failed at ratio {r:.3f}: {type(exc).__name__}: {exc}",
                "use a model built from standard Conv/BN/Linear layers, or give the student architecture explicitly",
            ) from None
        return pruned, count_macs(pruned, input_shape)

    if mac_ratio >= 1:
        best, macs = attempt(0.0)
    else:
        r_max = max_ratio(model, round_to)
        best, macs = attempt(r_max)
        if macs > target:
            raise ModelError(
                f"cannot reach {mac_ratio:.3g} of the MACs by channel pruning: the floor is {macs / base:.3g} "
                f"({macs} of {base} MACs)",
                "raise the MAC ratio, or give the student architecture explicitly",
            )
        lo, hi = 0.0, r_max  # macs(lo) > target >= macs(hi)
        for _ in range(steps):
            mid = (lo + hi) / 2
            cand, cand_macs = attempt(mid)
            if cand_macs <= target:
                hi, best, macs = mid, cand, cand_macs
                if cand_macs >= (1 - _TOLERANCE) * target:  # close enough below the target
                    break
            else:
                lo = mid
        log.info("pruned to %.4f of MACs (target %.4f) with per-layer ratio %.4f", macs / base, mac_ratio, hi)
    best.train(was_training)
    return best
