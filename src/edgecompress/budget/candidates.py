"""Candidate students: cut from the teacher by structured pruning at geometric MAC ratios, widths rounded.

Latency does not depend on trained weights, only on the architecture a candidate has; the candidates cut here from
the teacher are the very architectures the distill stage cuts again with the same ``prune_ratio`` and ``round_to``
(:func:`edgecompress.models.prune_search` is deterministic in the architecture).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import TYPE_CHECKING

from edgecompress.budget.records import Candidate
from edgecompress.errors import ModelError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


def widths(model: nn.Module) -> list[int]:
    """Output channels / features of every Conv and Linear layer, in registration order (the architecture's cut)."""
    from torch import nn

    out = []
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            out.append(int(module.out_channels))
        elif isinstance(module, nn.Linear):
            out.append(int(module.out_features))
    return out


def architecture_hash(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """A hash of the teacher's architecture: its module types, parameter names and shapes, and the input shape."""
    state = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    kinds = [type(m).__name__ for m in model.modules()]
    text = json.dumps({"state": state, "modules": kinds, "input": list(input_shape)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cut_candidates(
    teacher: nn.Module, input_shape: tuple[int, int, int], ratios: list[float], *, round_to: int | None
) -> tuple[list[tuple[Candidate, nn.Module]], list[str]]:
    """The teacher (ratio 1) and one pruned copy per MAC ratio, largest first; duplicates by widths dropped, and
    ratios that reach their MACs only by breaking ``round_to`` in some layer skipped.

    Returns:
        ``(candidate record, model)`` pairs and warnings (a ratio pruning cannot reach is skipped with one line).
    """
    from edgecompress.models import count_macs, count_params, prune_search

    base = count_macs(teacher, input_shape)
    out: list[tuple[Candidate, nn.Module]] = []
    notes: list[str] = []
    teacher_rec = Candidate(
        name="teacher",
        target_ratio=1.0,
        mac_ratio=1.0,
        macs=int(base),
        params=int(count_params(teacher)),
        widths=widths(teacher),
    )
    out.append((teacher_rec, copy.deepcopy(teacher).eval()))  # exporting sets eval mode: the run's teacher stays as is
    seen = {tuple(teacher_rec.widths)}
    for ratio in sorted(ratios, reverse=True):
        try:
            res = prune_search(teacher, input_shape, ratio, round_to=round_to)
        except ModelError as exc:
            notes.append(f"candidate at {ratio:.3g} of the MACs skipped: {exc.problem}")
            continue
        if res.relaxed:  # a layer below one multiple of round_to: off the kernels' block sizes, not a candidate
            notes.append(f"candidate at {ratio:.3g} of the MACs skipped: {res.warning()}")
            continue
        w = widths(res.model)
        if tuple(w) in seen:  # a nearby ratio reached the same architecture
            continue
        seen.add(tuple(w))
        rec = Candidate(
            name=f"c{res.mac_ratio:.3g}",
            target_ratio=float(ratio),
            mac_ratio=float(res.mac_ratio),
            macs=int(res.macs),
            params=int(count_params(res.model)),
            widths=w,
        )
        out.append((rec, res.model.eval()))
        log.info("candidate %s: %.4f of the MACs, widths %s", rec.name, rec.mac_ratio, w)
    if len(out) < 2:
        raise ModelError(
            "no candidate student could be cut from the teacher at the target's MAC ratios",
            "raise target.min_ratio / target.max_ratio, or lower target.round_to",
        )
    return out, notes
