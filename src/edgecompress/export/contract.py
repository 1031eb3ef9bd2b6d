"""The export contract: names, dynamic axes, example input and the tolerance each precision must meet.

Modelled on optimum's ``OnnxConfig``: one object says what the exported graph looks like, and parity is judged
against it, never against ad-hoc numbers scattered in exporters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """The parity diagnostic of one precision: how far an artifact may stray from PyTorch before its graph is suspect.

    Within bounds when ``max|y - y_ref| / std(y_ref) <= max_rel_diff`` and top-1 agreement ``>= min_top1_agreement``
    on the parity batch. The difference is judged relative to the spread of the FP32 logits (their standard
    deviation over the batch), not to the largest logit: a weak or temperature-calibrated model with small logits is
    judged like a confident one. A diagnostic, not a gate: whether an artifact ships is decided by its accuracy on
    val (``export.max_accuracy_drop``, see :mod:`edgecompress.export.gate`).
    """

    max_rel_diff: float
    min_top1_agreement: float

    @staticmethod
    def spread(reference: np.ndarray) -> float:
        """Standard deviation of the FP32 logits on the parity batch (the scale differences are judged on)."""
        return float(np.std(reference)) if reference.size else 0.0

    def relative_diff(self, max_abs_diff: float, reference: np.ndarray) -> float:
        """``max_abs_diff / spread`` (inf when the logits have no spread but differ; 0 when both are zero)."""
        spread = self.spread(reference)
        if spread > 0:
            return float(max_abs_diff / spread)
        return 0.0 if max_abs_diff == 0 else float("inf")

    def check(self, max_abs_diff: float, top1_agreement: float, reference: np.ndarray) -> tuple[bool, str]:
        """Return (within the diagnostic bounds, one-line reason with the numbers)."""
        rel = self.relative_diff(max_abs_diff, reference) if np.isfinite(max_abs_diff) else float("inf")
        what = f"max |diff| {max_abs_diff:.3g} = {rel:.3g} × std of FP32 logits"
        if not np.isfinite(rel) or rel > self.max_rel_diff:
            return False, f"{what} exceeds {self.max_rel_diff:g}"
        if top1_agreement < self.min_top1_agreement:
            return False, f"top-1 agreement {top1_agreement:.3f} below {self.min_top1_agreement:.3f}"
        return True, f"{what} <= {self.max_rel_diff:g}, top-1 agreement {top1_agreement:.3f}"


# Relative to the FP32 logits' standard deviation. fp32: 1e-3 (kernels reorder sums; a broken graph is off by O(1)).
# fp16/bf16: 10 and 8 mantissa bits, accumulated over a network. int8: noise as large as the logits' whole spread
# means a broken graph; anything below is for the accuracy gate on val to judge. The agreement bars follow the same
# logic: a fixed high bar fails good INT8 models of low-accuracy students, whose many near-ties flip.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel_diff=1e-3, min_top1_agreement=0.99),
    "fp16": Tolerance(max_rel_diff=3e-2, min_top1_agreement=0.98),
    "bf16": Tolerance(max_rel_diff=6e-2, min_top1_agreement=0.97),
    "int8": Tolerance(max_rel_diff=1.0, min_top1_agreement=0.85),
}

# Below this top-1 agreement with PyTorch on the parity inputs the graph computes something else: the artifact fails
# whatever its accuracy (a model near chance can keep its accuracy with a graph that ignores its input).
BROKEN_GRAPH_AGREEMENT = 0.5


# Order of loss of precision, for "the coarser of what was stored and what the runtime executes".
_COARSENESS = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3}
_RUNTIME_PRECISION = {"f32": "fp32", "fp32": "fp32", "f16": "fp16", "fp16": "fp16", "bf16": "bf16", "i8": "int8"}


def effective_precision(stored: str, runtime_precision: str | None) -> str:
    """The coarser of the artifact's precision and what the runtime reports executing (e.g. OpenVINO bf16)."""
    executed = _RUNTIME_PRECISION.get(str(runtime_precision).lower()) if runtime_precision else None
    if executed is None:
        return stored
    return max((stored, executed), key=lambda p: _COARSENESS.get(p, 0))


@dataclass(frozen=True)
class ExportContract:
    """What every exported graph must look like.

    Attributes:
        input_shape: ``(C, H, W)``.
        num_classes: size of the output's last axis.
        output_probabilities: the graph ends in softmax and its output is named ``probabilities``.
        dynamic_batch: the batch axis is dynamic and named ``batch``.
        max_batch: the largest batch (TensorRT profile max, ExecuTorch export batch).
        opset: ONNX opset.
        metadata: embedded in every artifact (temperature, labels, preprocessing, config hash, ...).
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    output_probabilities: bool = False
    dynamic_batch: bool = True
    max_batch: int = 64
    opset: int = 18
    metadata: dict[str, Any] = field(default_factory=dict)
    input_name: str = "input"
    batch_axis_name: str = "batch"

    @classmethod
    def from_config(
        cls, cfg: Any, *, input_shape: tuple[int, int, int], num_classes: int, metadata: dict[str, Any] | None = None
    ) -> ExportContract:
        """Build the contract from an ``ExportConfig`` (opset, dynamic batch, max batch, probabilities output)."""
        return cls(
            input_shape=cast("tuple[int, int, int]", tuple(input_shape)),  # callers may pass a list (JSON)
            num_classes=num_classes,
            output_probabilities=cfg.output_probabilities,
            dynamic_batch=cfg.dynamic_batch,
            max_batch=cfg.max_batch,
            opset=cfg.opset,
            metadata=dict(metadata or {}),
        )

    @property
    def input_names(self) -> list[str]:
        return [self.input_name]

    @property
    def output_names(self) -> list[str]:
        return ["probabilities" if self.output_probabilities else "logits"]

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """ONNX ``dynamic_axes`` built from the names (empty when the batch is static)."""
        if not self.dynamic_batch:
            return {}
        return {name: {0: self.batch_axis_name} for name in self.input_names + self.output_names}

    def example_input(self, batch: int = 1, *, seed: int = 0) -> np.ndarray:
        """A deterministic float32 NCHW example of shape ``(batch, C, H, W)``."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, *self.input_shape), dtype=np.float32)

    def max_batch_input(self, *, seed: int = 0) -> np.ndarray:
        """Example at the maximum batch (ExecuTorch exports bounded dynamic shapes from it)."""
        return self.example_input(self.max_batch if self.dynamic_batch else 1, seed=seed)

    def tolerance(self, precision: str) -> Tolerance:
        return TOLERANCES[precision]

    def string_metadata(self) -> dict[str, str]:
        """Contract fields plus ``metadata`` as strings (non-strings as JSON)."""
        out = {
            "edgecompress.input_name": self.input_name,
            "edgecompress.output_name": self.output_name,
            "edgecompress.input_shape": json.dumps([None if self.dynamic_batch else 1, *self.input_shape]),
            "edgecompress.num_classes": str(self.num_classes),
        }
        return {**out, **stringify_metadata(self.metadata)}


def stringify_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """Strings stay strings; everything else becomes JSON (ONNX metadata_props and OpenVINO rt_info hold strings)."""
    return {
        str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in metadata.items()
    }


def tool_versions() -> dict[str, str]:
    """Versions of the export toolchain that are installed (no heavy import: reads package metadata)."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in ("edgecompress", "torch", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "executorch"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
