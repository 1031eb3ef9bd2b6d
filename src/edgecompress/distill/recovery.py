"""When a training run has gone wrong, and the state it goes back to (``train.max_recoveries``).

An epoch has gone wrong when its loss became NaN/Inf, when its val NLL exploded — above ``NLL_EXPLOSION`` times the
best val NLL so far (the untrained model's included) *and* above the NLL of a uniform guess, log K — or when its val
accuracy is at chance although the last good state was clearly above chance (a pruned or partly trained network
that collapsed). "At chance" is :func:`at_chance`: ``gates.near_chance`` widened to two standard errors above the
accuracy of a constant guess on a val split of ``n`` samples — 1/K, or the share of the most frequent val class
(``majority``) when that is higher, since a network that predicts one class for everything scores exactly that.
"Clearly above chance" (:func:`left_chance`) is ``CLEAR_SIGMAS`` (4) standard errors above that guess: the gap
keeps noise from passing for learning and then for a collapse (measured before: a plain CNN on its plateau
predicted one digit, 14.8 % of a 270-sample val split, and its next epoch's 14.4 % was taken for a fall to chance
three times over, each time lowering the rate that it needed to leave the plateau). A network that has not yet
left chance is not "recovered": a plain network on its initial plateau also predicts one class for everything,
and a lower rate would only keep it there longer (the quality gate stops a student that ends at chance). The
trainer then restores the last good state — the latest epoch that passed and was clearly above chance, or the
untrained model — multiplies the learning rate by ``LR_FACTOR`` and trains on from there, at most
``max_recoveries`` times; each recovery is an event in the result.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from edgecompress.distill.gates import chance_threshold

LR_FACTOR = 0.3  # learning-rate multiplier per recovery
NLL_EXPLOSION = 3.0  # val NLL above this multiple of the best so far (and above log K) = exploded
CLEAR_SIGMAS = 4.0  # standard errors above a constant guess for a state to count as having left chance


def majority_share(labels: torch.Tensor) -> float:
    """The share of the most frequent label: the accuracy of predicting that one class for every sample."""
    return float(torch.bincount(labels.flatten().long()).max()) / max(1, labels.numel()) if labels.numel() else 0.0


def at_chance(accuracy: float, num_classes: int, n: int, majority: float = 0.0, *, sigmas: float = 2.0) -> bool:
    """``accuracy`` on ``n`` val samples is at chance: below ``gates.chance_threshold`` or within ``sigmas`` standard
    errors above a constant guess — 1/K or ``majority`` (the most frequent class's share), the higher (NaN counts as
    at chance)."""
    p = max(1.0 / num_classes, majority)
    return not accuracy >= max(chance_threshold(num_classes), p + sigmas * math.sqrt(p * (1 - p) / max(1, n)))


def left_chance(accuracy: float, num_classes: int, n: int, majority: float = 0.0) -> bool:
    """``accuracy`` is *clearly* above chance: ``CLEAR_SIGMAS`` standard errors above a constant guess (see
    :func:`at_chance`). Only such a state is a restore point, and only a fall from one is a collapse: the gap to the
    two-sigma "at chance" keeps a network wandering on its plateau (15.7 % then 10.6 % on 216 digits, measured) from
    counting as one that learned and then collapsed."""
    return not at_chance(accuracy, num_classes, n, majority, sigmas=CLEAR_SIGMAS)


def epoch_problem(
    val_accuracy: float,
    val_nll: float,
    *,
    best_nll: float,
    start_accuracy: float,
    num_classes: int,
    n: int,
    majority: float = 0.0,
) -> str | None:
    """What went wrong in an epoch, or None when the epoch is good.

    Args:
        val_accuracy: the epoch's val accuracy.
        val_nll: the epoch's val NLL.
        best_nll: the lowest val NLL of the good epochs so far and of the untrained model.
        start_accuracy: val accuracy of the last good state (where this stretch of training started).
        num_classes: K.
        n: val samples.
        majority: the share of the most frequent val class (see :func:`at_chance`).
    """
    uniform = math.log(num_classes)
    if not math.isfinite(val_nll):
        return f"val NLL is {val_nll}"
    if val_nll > NLL_EXPLOSION * best_nll and val_nll > uniform:
        return f"val NLL {val_nll:.4g} exploded (best {best_nll:.4g}, uniform guess {uniform:.3g})"
    if at_chance(val_accuracy, num_classes, n, majority) and left_chance(start_accuracy, num_classes, n, majority):
        return (
            f"val accuracy {100 * val_accuracy:.1f} % fell to chance ({100 / num_classes:.1f} %) "
            f"from {100 * start_accuracy:.1f} %"
        )
    return None


def cpu_clone(obj: Any) -> Any:
    """A deep copy with every tensor detached, on the CPU (model/optimizer state for a restore point)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_clone(v) for v in obj)
    return obj


__all__ = [
    "CLEAR_SIGMAS",
    "LR_FACTOR",
    "NLL_EXPLOSION",
    "at_chance",
    "cpu_clone",
    "epoch_problem",
    "left_chance",
    "majority_share",
]
