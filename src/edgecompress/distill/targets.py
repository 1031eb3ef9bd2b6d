"""The loss of one training batch: its rows, their augmentation, the KD teacher's targets (``distill.trainer``).

The teacher's targets come from one of three places, chosen once per run by the trainer:

* a **cache** of its logits per training sample, computed once — without augmentation the teacher sees each sample
  unchanged every epoch (and in eval mode it is a pure function of its input), and with ``teacher_targets: clean``
  the targets are those of the un-augmented images by definition;
* a **runner** called on every augmented batch — the teacher's frozen ONNX Runtime graph or its bf16 copy
  (``distill.fast_eval``, ``distill.teacher_precision``);
* the **eager** teacher under ``inference_mode`` (``fast=False``, or no runner could be built).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgecompress.distill.fast_eval import Runner, in_layout
from edgecompress.distill.inputs import Inputs
from edgecompress.distill.steps import Augment


@dataclass
class TeacherTargets:
    """The KD teacher's logits for a batch of training rows; None without a teacher."""

    teacher: nn.Module | None
    runner: Runner | None = None  # on every augmented batch (frozen graph, or bf16)
    cache: Tensor | None = None  # row i for training sample i, on the training device

    def __call__(self, idx: Tensor, xb: Tensor) -> Tensor | None:
        """Targets of rows ``idx`` of the train split, whose (augmented) images on the device are ``xb``."""
        if self.cache is not None:
            return self.cache[idx.to(self.cache.device)]
        if self.runner is not None:  # the teacher sees this augmented batch
            return self.runner(xb).to(xb.device)
        if self.teacher is None:
            return None
        with torch.inference_mode():
            zt = self.teacher(xb)
        return zt.clone()


@dataclass
class BatchLoss:
    """The loss terms of a batch of training indices (``"loss"`` is optimized): a ``train_state.LossOfBatch``."""

    x: Inputs
    y: Tensor
    augment: Augment | None
    targets: TeacherTargets
    loss_fn: nn.Module
    layout: torch.memory_format  # the student's input layout (``fast_eval.in_layout``)
    device: torch.device

    def __call__(self, model: nn.Module, idx: Tensor, aug_gen: torch.Generator) -> dict[str, Tensor]:
        xb, yb = self.x.take(idx), self.y[idx].to(self.device)
        if self.augment is not None:
            xb = self.augment(xb, aug_gen)
        xb = xb.to(self.device)
        zt = self.targets(idx, xb)
        return self.loss_fn(model(in_layout(xb, self.layout)), zt, yb)


__all__ = ["BatchLoss", "TeacherTargets"]
