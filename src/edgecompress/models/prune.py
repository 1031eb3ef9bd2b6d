"""Cut a smaller student from a model by structured channel pruning (torch-pruning) to a target MAC ratio.

Method: DepGraph structured pruning (Fang et al., CVPR 2023, "DepGraph: Towards Any Structural Pruning") with
magnitude importance, I(g) = mean over the coupled group g of ||W_c||_p (L1/L2 norm of each channel's weights),
removing the lowest-scoring channels. Global pruning is off: every layer loses the same fraction ``r`` of its
channels. MACs are not monotone in ``r`` (torch-pruning leaves a layer alone that ``r`` would empty, and grouped
convs prune whole groups), so ``r`` is searched on a grid and refined around the best point: the result is the
feasible model (MACs <= target) with the most MACs found.

The classifier — the Linear/Conv layers nearest to the output in the autograd graph, not the last one registered —
is left alone so the number of classes stays. Grouped and depthwise convs, SE blocks, residual adds and
flatten→Linear are coupled by torch-pruning's dependency graph. ``round_to`` is met in every layer when the target
allows it; when it does not, layers too narrow for one multiple keep the channels the ratio gives (never 0), and
the result lists them (:meth:`PruneResult.warning`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgecompress.errors import ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

_IMPORTANCE = ("l1", "l2", "fpgm", "lamp")
_TOLERANCE = 0.01  # stop the search once MACs are within 1 % below the target
_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99)
_FLATTEN_FIX = (
    "flatten with torch.flatten(x, 1) or nn.Flatten() instead of a hard-coded x.view(-1, C*H*W) (the weights stay "
    "the same), or give the student architecture explicitly (distill.student.model)"
)


def _importance(tp, name: str):  # noqa: ANN001, ANN202 (torch_pruning types)
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    return tp.importance.LAMPImportance(p=2)


def _logits(out: Any) -> torch.Tensor:
    import torch

    if isinstance(out, torch.Tensor):
        return out
    kind = type(out).__name__
    raise ModelError(
        f"the model returns a {kind}, not a logits tensor",
        "set teacher.output (or model.output) to the index or key of the logits, e.g. output: 0",
    )


def _device(model: nn.Module) -> torch.device:
    import torch

    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def find_classifier(model: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Names of the classifier layers: the Linear/Conv layers nearest to the output in the autograd graph.

    Found by walking the graph of one forward pass backward from the logits (breadth first) to the first level that
    reaches a Linear or Conv parameter; registration order plays no part, and an SE block's Linear, deeper in the
    graph, is never taken for the classifier.

    Raises:
        ModelError: the output is not a tensor, or depends on no Linear/Conv layer.
    """
    import torch
    from torch import nn

    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            for p in module.parameters(recurse=False):
                owner[id(p)] = name
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = _logits(model(torch.zeros(1, *input_shape, device=_device(model))))
        frontier, seen = [out.grad_fn], set()
        while frontier:
            found: list[str] = []
            nxt: list[torch.autograd.graph.Node | None] = []
            for fn in frontier:
                if fn is None or fn in seen:
                    continue
                seen.add(fn)
                var = getattr(fn, "variable", None)
                if var is not None:
                    name = owner.get(id(var))
                    if name is not None and name not in found:
                        found.append(name)
                    continue
                nxt.extend(f for f, _ in fn.next_functions if f is not None)
            if found:
                return found
            frontier = nxt
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    raise ModelError("the model's output depends on no Linear or Conv layer", "end the model with an nn.Linear")


def _pruner_class(tp: Any) -> Any:  # tp: the torch_pruning module (untyped); returns a BasePruner subclass
    class _Pruner(tp.pruner.BasePruner):
        """BasePruner whose ``round_to`` counts the channels of grouped convs per group and never empties a layer.

        torch-pruning 1.6 rounds a grouped layer's per-group count against its total channels; here the kept count
        per group is rounded to ``round_to / gcd(round_to, groups)``. Where rounding down would keep nothing,
        ``relax=False`` keeps one multiple (``round_to`` met, fewer channels cut) and ``relax=True`` keeps the count
        the ratio gives, at least 1 (``round_to`` not met there: recorded in ``relaxed``).
        """

        relax: bool = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.relaxed: list[tuple[int, int]] = []
            self._groups_of: dict[int, int] = {}
            self._last_module: Any = None
            super().__init__(*args, **kwargs)
            dg = self.DG
            for attr in ("get_out_channels", "get_in_channels"):
                fn = getattr(dg, attr)
                setattr(dg, attr, self._remember(fn))

        def _remember(self, fn):  # noqa: ANN001, ANN202
            def wrapped(module):  # noqa: ANN001, ANN202
                self._last_module = module
                return fn(module)

            return wrapped

        def _get_channel_groups(self, group) -> int:  # noqa: ANN001
            n = super()._get_channel_groups(group)
            self._groups_of[id(group[0].dep.target.module)] = n
            return n

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            import math

            groups = max(1, self._groups_of.get(id(self._last_module), 1))
            per_group = current_channels // groups
            kept = per_group - n_pruned
            step = max(1, round_to // math.gcd(round_to, groups))
            rounded = kept - kept % step
            if rounded <= 0 and not self.relax:
                rounded = min(step, per_group)
            elif rounded <= 0:  # fewer than one multiple: keep what the ratio keeps (at least one per group)
                rounded = max(kept, 1)
                self.relaxed.append((current_channels, rounded * groups))
            return max(per_group - rounded, 0)

    return _Pruner


def _check_forward(original: nn.Module, pruned: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """Run the pruned copy once; a failure is named by the first layer that did not complete (a hard-coded view)."""
    import torch

    completed: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, n=n: completed.append(n))
        for n, m in pruned.named_modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            pruned(torch.zeros(2, *input_shape))
        return
    except RuntimeError as exc:
        detail = str(exc).splitlines()[0][:120]
    finally:
        for h in hooks:
            h.remove()
    order: list[str] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, _o, n=n: order.append(n))
        for n, m in original.named_modules()
        if not list(m.children())
    ]
    was_training = original.training
    try:
        with torch.no_grad():
            original.eval()(torch.zeros(2, *input_shape, device=_device(original)))
    finally:
        for h in hooks:
            h.remove()
        original.train(was_training)
    layer = next((n for n in order if n not in completed), "?")
    raise ModelError(
        f"pruning breaks the model's forward before layer {layer!r} ({detail}): the forward reshapes with a size "
        "pruning cannot change",
        _FLATTEN_FIX,
    )


def _bracket(feasible: Any, start: int) -> tuple[float, float] | None:
    """(infeasible ratio or 0, feasible ratio), neighbours on the grid, searched from ``_GRID[start]``.

    The first feasible point is looked for upward from ``start``, then downward (MACs are not monotone in the ratio:
    a high ratio can leave small layers whole); from there the walk goes down while the lower point is feasible too.
    """
    order = [*range(start, len(_GRID)), *range(start - 1, -1, -1)]
    i = next((j for j in order if feasible(_GRID[j])), None)
    if i is None:
        return None
    while i > 0 and feasible(_GRID[i - 1]):
        i -= 1
    return (_GRID[i - 1] if i > 0 else 0.0), _GRID[i]


@dataclass
class PruneResult:
    """A pruned model and how it was reached."""

    model: Any  # nn.Module
    ratio: float  # the per-layer channel ratio used
    macs: int
    base_macs: int
    round_to: int | None = None
    relaxed: list[tuple[int, int]] = field(default_factory=list)  # (channels, kept) where round_to could not be met

    @property
    def mac_ratio(self) -> float:
        """MACs of the pruned model over the original's."""
        return self.macs / max(1, self.base_macs)

    def warning(self) -> str | None:
        """One line for the run's warnings when ``round_to`` was not met in some layers, else None."""
        if not self.relaxed:
            return None
        shown = ", ".join(f"{c}->{k}" for c, k in self.relaxed[:6]) + (" ..." if len(self.relaxed) > 6 else "")
        return (
            f"round_to {self.round_to} was not met in {len(self.relaxed)} layer(s) to reach {self.mac_ratio:.3g} of "
            f"the MACs (channels -> kept: {shown}); a larger MAC ratio keeps every layer a multiple of {self.round_to}"
        )


def prune_once(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    ratio: float,
    *,
    round_to: int | None = None,
    importance: str = "l2",
    classifier: list[str] | None = None,
    relax: bool = False,
) -> tuple[nn.Module, list[tuple[int, int]]]:
    """A pruned deep copy with ``ratio`` of every prunable layer's channels removed, and the relaxed roundings.

    Args:
        model: the model to cut from (untouched).
        input_shape: (C, H, W) of one input.
        ratio: fraction of each layer's channels to remove.
        round_to: keep channel counts multiples of this where the layer can.
        importance: "l1", "l2", "fpgm" or "lamp".
        classifier: names of the layers to keep whole (default: :func:`find_classifier`).
        relax: where ``round_to`` would empty a layer, keep fewer channels than ``round_to`` (else keep one multiple).

    Raises:
        ModelError: the model cannot be traced, or the pruned forward fails (named layer and fix).
    """
    import torch

    from edgecompress._lazy import require

    tp = require("torch_pruning", "structured pruning")
    pruned = copy.deepcopy(model).cpu().eval()  # eval: tracing must not touch BatchNorm running statistics
    if ratio <= 0:
        return pruned, []
    names = classifier if classifier is not None else find_classifier(pruned, input_shape)
    try:
        pruner = _pruner_class(tp)(
            pruned,
            torch.zeros(1, *input_shape),
            importance=_importance(tp, importance),
            pruning_ratio=float(ratio),
            max_pruning_ratio=1.0,
            global_pruning=False,
            iterative_steps=1,
            ignored_layers=[pruned.get_submodule(n) for n in names],
            round_to=round_to,
        )
        pruner.relax = relax
        with torch.no_grad():
            pruner.step()
    except ModelError:
        raise
    except Exception as exc:  # torch-pruning cannot trace some custom models
        raise ModelError(
            f"structured pruning failed at ratio {ratio:.3f}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
            "use standard Conv/BN/Linear layers and torch.flatten, or give the student architecture explicitly",
        ) from None
    _check_forward(model, pruned, input_shape)
    return pruned, list(pruner.relaxed)


def prune_search(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    mac_ratio: float,
    *,
    round_to: int | None = None,
    importance: str = "l2",
    refine_steps: int = 10,
) -> PruneResult:
    """Search the per-layer ratio whose pruned copy has the most MACs at or below ``mac_ratio`` of the original's.

    Grid points (0.1 … 0.99) are walked from the ratio a uniform cut would need to a feasible point beside an
    infeasible one (every point when none above is feasible: MACs are not monotone in the ratio); that bracket is
    then bisected, keeping the feasible point with the most MACs, until within 1 % of the target or until a finer
    step would change no layer.

    Raises:
        ModelError: bad arguments; a model that cannot be pruned (TorchScript, a hard-coded view, no classifier);
            a target below every reachable point (the message gives the smallest reachable MAC ratio).
    """
    from edgecompress.models.build import count_macs
    from edgecompress.models.teacher import is_prunable

    if isinstance(mac_ratio, bool) or not isinstance(mac_ratio, (int, float)) or not 0 < mac_ratio <= 1:
        raise ModelError(f"mac_ratio must be in (0, 1], got {mac_ratio!r}", "e.g. 0.25 keeps a quarter of the MACs")
    if importance not in _IMPORTANCE:
        raise ModelError(f"unknown pruning importance {importance!r}", f"use one of: {', '.join(_IMPORTANCE)}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ModelError(f"round_to must be a positive int or None, got {round_to!r}", "e.g. round_to: 8")
    if not is_prunable(model):
        raise ModelError(
            "the teacher is a TorchScript or torch.export program, which cannot be pruned into a student",
            "give the student architecture (distill.student.model: a family or a trusted factory)",
        )
    base = count_macs(model, input_shape)
    names = find_classifier(model, input_shape)
    target = mac_ratio * base
    tried: dict[tuple[float, bool], PruneResult] = {}

    def attempt(r: float, relax: bool) -> PruneResult:
        if (r, relax) not in tried:
            pruned, relaxed = prune_once(
                model, input_shape, r, round_to=round_to, importance=importance, classifier=names, relax=relax
            )
            tried[r, relax] = PruneResult(pruned, r, count_macs(pruned, input_shape), base, round_to, relaxed)
        return tried[r, relax]

    def close(res: PruneResult) -> bool:
        return (1 - _TOLERANCE) * target <= res.macs <= target

    if mac_ratio >= 1:
        return attempt(0.0, False)
    # start near the ratio a uniform cut would need (MACs ~ (1 - r)^2), walk the grid to a feasible point
    # next to an infeasible one, then bisect that bracket; round_to is kept everywhere first, and only when that
    # cannot reach the target may narrow layers fall below it
    start = min(range(len(_GRID)), key=lambda i: abs(_GRID[i] - (1 - mac_ratio**0.5)))
    bracket: tuple[float, float] | None = None
    for relax in (False, True) if round_to and round_to > 1 else (False,):
        bracket = _bracket(lambda r, rel=relax: attempt(r, rel).macs <= target, start)
        if bracket is not None:
            break
    if bracket is None:
        floor = min(tried.values(), key=lambda res: res.macs)
        raise ModelError(
            f"cannot reach {mac_ratio:.3g} of the MACs by channel pruning: the smallest reachable is "
            f"{floor.mac_ratio:.3g} ({floor.macs} of {base} MACs, per-layer ratio {floor.ratio:.3g})",
            f"raise the MAC ratio to at least {floor.mac_ratio:.3g}, or give the student architecture explicitly",
        )
    lo, hi = bracket
    best = attempt(hi, relax)
    widest = max((getattr(m, "out_channels", 0) or getattr(m, "out_features", 0)) for m in model.modules()) or 1
    for _ in range(refine_steps):
        if close(best) or hi - lo < 0.25 / widest:  # finer steps change no layer's channel count
            break
        mid = (lo + hi) / 2
        res = attempt(mid, relax)
        if res.macs <= target:
            hi = mid
            best = max(best, res, key=lambda x: x.macs)
        else:
            lo = mid
    if best.relaxed:
        log.warning("%s", best.warning())
    log.info("pruned to %.4f of MACs (target %.4f) with per-layer ratio %.4f", best.mac_ratio, mac_ratio, best.ratio)
    return best


def prune_to_ratio(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    mac_ratio: float,
    *,
    round_to: int | None = None,
    importance: str = "l2",
) -> nn.Module:
    """A structurally pruned copy of ``model`` with at most ``mac_ratio`` of its MACs (``model`` is untouched).

    Args:
        model: the model to cut from (e.g. the teacher); its classifier keeps all classes.
        input_shape: (C, H, W) of one input.
        mac_ratio: target MACs as a fraction of the original's, in (0, 1].
        round_to: keep channel counts multiples of this (e.g. 8 for tensor cores / SIMD) where a layer can.
        importance: channel score: "l1", "l2" (magnitude), "fpgm" or "lamp".

    Returns:
        The pruned model (same training/eval mode as ``model``), with MACs <= mac_ratio * original MACs.
        :func:`prune_search` returns the same with the ratio reached and the relaxed roundings.
    """
    was_training = model.training
    best = prune_search(model, input_shape, mac_ratio, round_to=round_to, importance=importance).model
    best.train(was_training)
    return best
