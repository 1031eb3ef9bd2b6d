"""Quantization-aware training with distillation from the FP32 model, the last step of accuracy-aware INT8.

The model is fine-tuned a few hundred steps with the INT8 grid simulated where the runtimes put it (PyTorch
fake-quant, straight-through rounding): every Conv / Linear weight per output channel, symmetric int8 (scale
``max|w| / 127``), and every Conv / Linear input per tensor, 8-bit unsigned over a learned range ``[lo, hi]``
(initialized to the calibration min / max; the rounding noise and the clipping both reach ``lo`` and ``hi``, as in
LSQ, Esser et al., ICLR 2020, and PACT, Choi et al., 2018). The loss is KL(p_FP32 ‖ p_student) at T = 1 on the
calibration images (no labels needed; val is never trained on). BatchNorm keeps its statistics (eval mode): per-
channel weight quantization does not see BN's per-channel scale, so the grid trained on is the folded one.

What comes out is a float model whose trained activation ranges are explicit clamps before each layer (an ONNX
``Clip``), so the runtimes' own post-training quantizers (ONNX Runtime MinMax, NNCF) land on the ranges QAT chose,
and whose weights sit where QAT left them. Nothing here depends on a runtime: one algorithm for every backend.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgecompress.export.onnx_export import eval_mode

log = logging.getLogger(__name__)

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight (a parametrization)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12) / 127.0
        scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
        return _round_ste(w / scale).clamp(-127, 127) * scale


class ActivationFakeQuant(nn.Module):
    """Per-tensor unsigned 8-bit fake quantization over a learned ``[lo, hi]`` (which always contains 0)."""

    def __init__(self, lo: float, hi: float) -> None:
        super().__init__()
        self.lo = nn.Parameter(torch.tensor(min(float(lo), 0.0)))
        self.hi = nn.Parameter(torch.tensor(max(float(hi), 1e-6)))

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.clamp(self.lo, max=0.0)
        return lo, torch.maximum(self.hi, lo + 1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds()
        scale = (hi - lo) / 255.0
        xc = torch.minimum(torch.maximum(x, lo), hi)
        return _round_ste((xc - lo) / scale) * scale + lo


@dataclass
class QatResult:
    """The fine-tuned float model (trained ranges as clamps) and what training did."""

    model: nn.Module
    steps: int
    seconds: float
    kl_start: float
    kl_end: float
    clipped_layers: int

    def summary(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": round(self.seconds, 2), "kl_start": self.kl_start,
                "kl_end": self.kl_end, "clipped_layers": self.clipped_layers}  # fmt: skip


def _input_ranges(model: nn.Module, layers: list[nn.Module], x: np.ndarray, batch: int) -> list[tuple[float, float]]:
    lo = [float("inf")] * len(layers)
    hi = [float("-inf")] * len(layers)

    def observe(i: int) -> Any:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            lo[i], hi[i] = min(lo[i], float(args[0].min())), max(hi[i], float(args[0].max()))

        return hook

    handles = [m.register_forward_pre_hook(observe(i)) for i, m in enumerate(layers)]
    try:
        with eval_mode(model), torch.no_grad():
            for i in range(0, len(x), batch):
                model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch])))
    finally:
        for h in handles:
            h.remove()
    return list(zip(lo, hi, strict=True))


def _quant_hook(quant: ActivationFakeQuant) -> Any:
    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (quant(args[0]), *args[1:])

    return hook


def _clamp_hook(lo: float, hi: float) -> Any:
    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (torch.clamp(args[0], lo, hi), *args[1:])

    return hook


def qat_distill(
    model: nn.Module, x: np.ndarray, *, steps: int = 300, batch_size: int = 32, lr: float = 1e-4, seed: int = 0
) -> QatResult:
    """Fine-tune a copy of ``model`` under simulated INT8 against its own FP32 outputs on ``x``.

    Args:
        model: the FP32 classifier (temperature already folded); it is not changed.
        x: the training images, float32 NCHW (the calibration split).
        steps: optimizer steps.
        batch_size: images per step, drawn with replacement (seeded).
        lr: Adam's learning rate for the weights; the ranges learn 10x faster.
        seed: seeds the batches.

    Returns:
        The float model with the trained ranges as clamps before its layers, and the KL at the start and the end.
    """
    from torch.nn.utils import parametrize

    start = time.perf_counter()
    student = copy.deepcopy(model).float().requires_grad_(True)
    layers: list[nn.Module] = [m for m in student.modules() if isinstance(m, LAYERS)]
    ranges = _input_ranges(student, layers, x, batch_size)
    quants = [ActivationFakeQuant(lo, hi) for lo, hi in ranges]
    handles = [m.register_forward_pre_hook(_quant_hook(q)) for m, q in zip(layers, quants, strict=True)]
    for m in layers:
        parametrize.register_parametrization(m, "weight", WeightFakeQuant())
    with eval_mode(model), torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        target = torch.cat([F.log_softmax(model(xt[i : i + 256]), 1) for i in range(0, len(xt), 256)])
    weights = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam([{"params": weights, "lr": lr},
                            {"params": [p for q in quants for p in q.parameters()], "lr": 10 * lr}])  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    kls: list[float] = []
    student.eval()  # BatchNorm statistics and dropout stay as trained
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(xt), (min(batch_size, len(xt)),), generator=gen)
            logp = F.log_softmax(student(xt[idx]), 1)
            loss = F.kl_div(logp, target[idx], log_target=True, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            kls.append(loss.item())
    finally:
        for h in handles:
            h.remove()
        for m in layers:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    clipped = 0
    for m, q, (lo0, hi0) in zip(layers, quants, ranges, strict=True):
        lo, hi = (float(v.detach()) for v in q.bounds())
        if lo > lo0 + 1e-6 or hi < hi0 - 1e-6:
            clipped += 1
        m.register_forward_pre_hook(_clamp_hook(lo, hi))
    n = max(1, min(10, len(kls) // 10))
    res = QatResult(student.eval(), steps, time.perf_counter() - start, float(np.mean(kls[:n])),
                    float(np.mean(kls[-n:])), clipped)  # fmt: skip
    log.info("QAT: %d steps in %.1fs, KL to FP32 %.4g -> %.4g, %d layer inputs clipped", steps, res.seconds,
             res.kl_start, res.kl_end, clipped)  # fmt: skip
    return res
