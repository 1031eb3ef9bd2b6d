"""The registry of distillation losses (light: the built-in losses are imported on the first look-up).

A new loss is one file: a :class:`~edgecompress.distill.losses.DistillLoss` subclass decorated with
``@LOSSES.register("name")``; list the file's module in the config's ``plugins`` and name it in ``distill.loss.kind``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecompress._registry import Registry

if TYPE_CHECKING:
    from edgecompress.distill.losses import DistillLoss

LOSSES: Registry[type[DistillLoss]] = Registry(
    "loss",
    ("edgecompress.distill.losses",),
    builtin_names=("ce", "kd", "dist", "bdkd"),
    field_name="distill.loss.kind",
)

__all__ = ["LOSSES"]
