"""Per-layer INT8 sensitivity: each quantized layer's local error on calibration data, most sensitive first.

For every compute node the QDQ graph runs in INT8 (:func:`edgecompress.export.int8_layers.quantized_layers`), its
output is computed twice from the float model's own input to it: exactly (float input, float weights) and as the INT8
graph computes it locally (that input quantized with the graph's scale and zero point, the weights dequantized from
the graph's INT8 values). The error is the noise-to-signal ratio ``Σ||y − y_q||² / Σ||y||²`` over the calibration
images — a layer fed by an outlier channel, a depthwise conv with a wide range or a hard-swish tail scores high.
Errors upstream are left out on purpose: the ranking says where the 8-bit grid hurts, not where its damage lands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress.export.int8_layers import GraphIndex, quantized_layers
from edgecompress.export.recovery_types import LayerSensitivity

log = logging.getLogger(__name__)


@dataclass
class _Layer:
    """What recomputing one layer needs: its input tensor's name and quantization, both weights, bias, attributes."""

    name: str
    op_type: str
    x_name: str
    x_scale: float
    x_zero: int
    x_range: tuple[int, int]
    weight: np.ndarray
    weight_q: np.ndarray
    bias: np.ndarray | None
    attrs: dict[str, Any]


def _dequantize(index: GraphIndex, dq: Any) -> np.ndarray:
    """The float value of a constant ``DequantizeLinear`` (per-tensor or per-axis)."""
    q = index.array(dq.input[0]).astype(np.float64)
    scale = index.array(dq.input[1]).astype(np.float64)
    zero = index.array(dq.input[2]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    if scale.ndim == 1 and q.ndim > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _layers(qdq: Any, floats: Any) -> list[_Layer]:
    """The INT8 layers of ``qdq`` with what :func:`rank_layers` needs, matched by name to the float graph."""
    from onnx import helper

    qi, fi = GraphIndex(qdq), GraphIndex(floats)
    out = []
    for name in quantized_layers(qdq):
        node, fnode = qi.nodes[name], fi.nodes.get(name)
        dq_x = qi.producer[node.input[0]]
        q_x = qi.producer.get(dq_x.input[0])
        if fnode is None or q_x is None or q_x.op_type != "QuantizeLinear" or not fi.is_constant(fnode.input[1]):
            log.debug("sensitivity: %s has no float twin or no activation quantizer; not ranked", name)
            continue
        zero = qi.array(q_x.input[2]) if len(q_x.input) > 2 and q_x.input[2] else np.zeros((), np.uint8)
        info = np.iinfo(zero.dtype)
        bias = fi.array(fnode.input[2]) if len(fnode.input) > 2 and fnode.input[2] in fi.initializers else None
        out.append(
            _Layer(
                name=name,
                op_type=node.op_type,
                x_name=q_x.input[0],
                x_scale=float(qi.array(q_x.input[1])),
                x_zero=int(zero),
                x_range=(int(info.min), int(info.max)),
                weight=fi.array(fnode.input[1]).astype(np.float32),
                weight_q=_dequantize(qi, qi.producer[node.input[1]]),
                bias=None if bias is None else bias.astype(np.float32),
                attrs={a.name: helper.get_attribute_value(a) for a in fnode.attribute},
            )
        )
    return out


def _quantize(x: np.ndarray, layer: _Layer) -> np.ndarray:
    lo, hi = layer.x_range
    q = np.clip(np.rint(x / layer.x_scale) + layer.x_zero, lo, hi)
    return ((q - layer.x_zero) * layer.x_scale).astype(np.float32)


def _apply(layer: _Layer, x: np.ndarray, w: np.ndarray) -> Any:
    """The layer's output (torch tensor) for input ``x`` and weight ``w``, with its ONNX attributes."""
    import torch
    import torch.nn.functional as F

    xt, wt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(w))
    b = None if layer.bias is None else torch.from_numpy(layer.bias)
    a = layer.attrs
    if layer.op_type == "Conv":
        pads = list(a.get("pads", [0] * (2 * (wt.ndim - 2))))
        half = len(pads) // 2
        if pads[:half] != pads[half:]:  # ONNX [begin..., end...]; F.pad wants the last axis first
            xt = F.pad(xt, [p for i in reversed(range(half)) for p in (pads[i], pads[i + half])])
            pads = [0] * len(pads)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[wt.ndim - 2]
        return conv(xt, wt, b, a.get("strides", 1), pads[:half] or 0, a.get("dilations", 1), a.get("group", 1))
    if layer.op_type == "Gemm":
        xt = xt.T if a.get("transA", 0) else xt
        y = float(a.get("alpha", 1.0)) * (xt @ (wt.T if a.get("transB", 0) else wt))
        return y + float(a.get("beta", 1.0)) * b if b is not None else y
    return xt @ wt  # MatMul with a constant weight


def _with_outputs(proto: Any, names: list[str]) -> bytes:
    """``proto`` serialized with ``names`` added to its graph outputs (intermediate tensors to read back)."""
    import onnx

    extra = onnx.ModelProto()
    extra.CopyFrom(proto)
    present = {o.name for o in extra.graph.output}
    for name in names:
        if name not in present:
            extra.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
            present.add(name)
    return extra.SerializeToString()


def rank_layers(qdq_path: Path, float_path: Path, x: np.ndarray, *, batch: int = 8) -> list[LayerSensitivity]:
    """The INT8 layers of ``qdq_path`` ranked by local error on ``x`` (the float graph ``float_path`` it was made from).

    Args:
        qdq_path: a QDQ INT8 ONNX made by :func:`edgecompress.export.onnx_export.quantize_int8`.
        float_path: the float graph that was quantized (after ``quant_pre_process``: node names must match).
        x: calibration images, float32 NCHW (64 are plenty).
        batch: images run at a time (bounds the memory of the intermediate tensors read back).

    Returns:
        One entry per ranked layer, the largest error first.
    """
    onnx = _lazy.require("onnx", "INT8 sensitivity")
    from edgecompress.export.onnx_export import ort_session

    floats = onnx.load(str(float_path))
    layers = _layers(onnx.load(str(qdq_path)), floats)
    if not layers:
        return []
    inputs = {i.name for i in floats.graph.input}
    wanted = sorted({layer.x_name for layer in layers if layer.x_name not in inputs})
    sess = ort_session(_with_outputs(floats, wanted))
    names = [o.name for o in sess.get_outputs()]
    noise = {layer.name: 0.0 for layer in layers}
    signal = dict(noise)
    for i in range(0, len(x), batch):
        xb = np.ascontiguousarray(x[i : i + batch], dtype=np.float32)
        values = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: xb}), strict=True))
        for layer in layers:
            xin = xb if layer.x_name in inputs else np.asarray(values[layer.x_name], np.float32)
            y = _apply(layer, xin, layer.weight)
            yq = _apply(layer, _quantize(xin, layer), layer.weight_q)
            noise[layer.name] += float(((y - yq) ** 2).sum())
            signal[layer.name] += float((y**2).sum())
    ranked = [
        LayerSensitivity(
            name=layer.name, op_type=layer.op_type, error=noise[layer.name] / max(signal[layer.name], 1e-30)
        )
        for layer in layers
    ]
    return sorted(ranked, key=lambda r: -r.error)
