"""The export contract: names, dynamic axes, example input and the tolerance each precision must meet.

Modelled on optimum's ``OnnxConfig``: one object says what the exported graph looks like, and parity is judged
against it, never against ad-hoc numbers scattered in exporters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact's outputs must be to PyTorch's on the parity batch.

    Passes when ``max|y - y_ref| <= atol + rtol * max|y_ref|`` and top-1 agreement ``>= min_top1_agreement``.
    The relative term is on the batch's largest logit so near-zero logits do not demand impossible precision.
    """

    atol: float
    rtol: float
    min_top1_agreement: float

    def bound(self, reference: np.ndarray) -> float:
        return float(self.atol + self.rtol * float(np.max(np.abs(reference))) if reference.size else self.atol)

    def check(self, max_abs_diff: float, top1_agreement: float, reference: np.ndarray) -> tuple[bool, str]:
        """Return (passed, one-line reason)."""
        bound = self.bound(reference)
        if not np.isfinite(max_abs_diff) or max_abs_diff > bound:
            return False, f"max |diff| {max_abs_diff:.3g} exceeds {bound:.3g}"
        if top1_agreement < self.min_top1_agreement:
            return False, f"top-1 agreement {top1_agreement:.3f} below {self.min_top1_agreement:.3f}"
        return True, f"max |diff| {max_abs_diff:.3g} <= {bound:.3g}, top-1 agreement {top1_agreement:.3f}"


# fp32: 1e-4 abs on logits. fp16/bf16: ~1e-2 (bf16 keeps 8 mantissa bits, so looser).
# int8: parity only catches a broken graph (agreement >= 0.85 on real inputs, a loose abs bound); whether the
# quantized model is good enough is decided by the accuracy gate on the whole val split (export.max_accuracy_drop).
# A fixed high agreement bar would fail good INT8 models of low-accuracy students, whose many near-ties flip.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-5, min_top1_agreement=0.99),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_top1_agreement=0.98),
    "bf16": Tolerance(atol=2e-2, rtol=2e-2, min_top1_agreement=0.97),
    "int8": Tolerance(atol=5e-2, rtol=0.25, min_top1_agreement=0.85),
}

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
            input_shape=tuple(input_shape),
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
