"""OpenVINO IR export: FP32, FP16 (compressed weights) and INT8 (NNCF post-training quantization).

All three start from the checked ONNX file so every format shares one traced graph. Metadata goes into ``rt_info``
under ``edgecompress``. What the export *produced* is recorded (weight storage type, quantization); what precision the
CPU plugin *executes* (bf16 on AMX/AVX512-BF16 CPUs unless told otherwise) is recorded by the runtime at load time.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress.errors import ExportError, QuantizationError
from edgecompress.export.int8_layers import openvino_names
from edgecompress.export.onnx_export import _first_line, _quiet

log = logging.getLogger(__name__)

RT_INFO_ROOT = "edgecompress"
# NNCF has no KL-entropy estimator; 'entropy' maps to its histogram-based range search and info says so.
NNCF_RANGE = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}


def _ov() -> Any:
    return _lazy.require("openvino", "OpenVINO export")


def read_onnx(onnx_path: Path) -> Any:
    """Convert an ONNX file to an in-memory ``ov.Model``, keeping the ONNX ``metadata_props`` in rt_info."""
    from edgecompress.export.onnx_export import read_metadata

    ov = _ov()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise ExportError(
            f"openvino export failed at step 'convert_model': {_first_line(exc)}", "check the ONNX"
        ) from exc
    set_metadata(model, read_metadata(onnx_path))
    return model


def set_metadata(model: Any, metadata: dict[str, str]) -> None:
    """Write string metadata into ``rt_info[edgecompress][key]``."""
    for key, value in metadata.items():
        model.set_rt_info(str(value), [RT_INFO_ROOT, str(key)])


def read_metadata(xml_path: Path | str) -> dict[str, str]:
    """The ``rt_info[edgecompress]`` entries of an IR file."""
    ov = _ov()
    model = ov.Core().read_model(str(xml_path))
    if not model.has_rt_info([RT_INFO_ROOT]):
        return {}
    section = model.get_rt_info([RT_INFO_ROOT])
    entries = section.astype(dict) if hasattr(section, "astype") else dict(section)
    return {str(k): (v.astype(str) if hasattr(v, "astype") else str(v)) for k, v in entries.items()}


def save_ir(model: Any, xml_path: Path, *, compress_to_fp16: bool) -> list[Path]:
    """Save ``.xml`` + ``.bin``; returns both paths. The caller gives a fresh folder (the wrapper makes it atomic)."""
    ov = _ov()
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
    except Exception as exc:
        raise ExportError(
            f"openvino export failed at step 'save_model': {_first_line(exc)}", "check disk space"
        ) from exc
    return [xml_path, xml_path.with_suffix(".bin")]


def export_ir(onnx_path: Path, xml_path: Path, *, precision: str, metadata: dict[str, str] | None = None) -> dict:
    """FP32 or FP16 IR from the ONNX file. FP16 stores weights as f16 (``compress_to_fp16``); IO stays f32."""
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"openvino export: export_ir makes fp32/fp16, not {precision}", "use quantize_ir for int8")
    model = read_onnx(onnx_path)
    produced = {"weights": "f16" if precision == "fp16" else "f32", "io": "f32"}
    set_metadata(model, {**(metadata or {}), "edgecompress.weights_precision": produced["weights"]})
    save_ir(model, xml_path, compress_to_fp16=precision == "fp16")
    return {"produced": produced, "openvino_version": _ov().get_version()}


def _find_head(model: Any) -> list[str]:
    """Friendly name of the last MatMul before the Result (the classifier head)."""
    matmuls = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"]
    return matmuls[-1:]


def quantize_ir(
    onnx_path: Path,
    xml_path: Path,
    calib_x: np.ndarray,
    *,
    method: str = "minmax",
    keep_head_float: bool = False,
    fast_bias_correction: bool = False,
    metadata: dict[str, str] | None = None,
    ignore_onnx_nodes: Sequence[str] = (),
) -> dict[str, Any]:
    """INT8 IR with ``nncf.quantize(model, nncf.Dataset(calib, transform))`` (performance preset, symmetric weights).

    Bias correction is NNCF's full ``BiasCorrection`` by default, not its fast variant: on the Fashion-MNIST demo
    student the fast one lost 0.83 points of test accuracy against FP32 and the full one none (+0.09), for about 0.4 s
    more quantization time (docs/performance.md).

    Range estimators: ``minmax`` -> NNCF MINMAX, ``percentile`` -> MEAN_QUANTILE; NNCF has no KL-entropy estimator,
    so ``entropy`` uses its HISTOGRAM range search and ``info["calibration_method"]`` records that.
    ``keep_head_float`` puts the last MatMul in the ignored scope; ``ignore_onnx_nodes`` adds the OpenVINO ops made
    from those ONNX nodes (mixed precision, :mod:`edgecompress.export.int8_recovery`).

    Raises:
        QuantizationError: naming step 'nncf.quantize' and the cause.
    """
    if calib_x is None or len(calib_x) == 0:
        raise QuantizationError("OpenVINO INT8 needs calibration samples, got none", "pass calib_x")
    nncf = _lazy.require("nncf", "OpenVINO INT8 quantization")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = read_onnx(onnx_path)
    estimator = NNCF_RANGE.get(method, "missing")
    if estimator == "missing":
        raise QuantizationError(f"unknown INT8 calibration method '{method}'", f"use one of {', '.join(NNCF_RANGE)}")
    advanced = AdvancedQuantizationParameters()
    if estimator is not None:
        advanced = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, estimator)
        )
    heads = _find_head(model)
    floats, missing = openvino_names(model, ignore_onnx_nodes)
    names = list(dict.fromkeys([*(heads if keep_head_float else []), *floats]))
    ignored = nncf.IgnoredScope(names=names, validate=False) if names else None
    samples = [np.ascontiguousarray(calib_x[i : i + 1], dtype=np.float32) for i in range(len(calib_x))]
    try:
        with _quiet():
            qmodel = nncf.quantize(
                model,
                nncf.Dataset(samples, lambda item: item),
                subset_size=len(samples),
                ignored_scope=ignored,
                fast_bias_correction=fast_bias_correction,
                advanced_parameters=advanced,
            )
    except Exception as exc:
        raise QuantizationError(
            f"openvino int8 failed at step 'nncf.quantize' (method {method}): {_first_line(exc)}",
            "try another int8_calibration method or keep_head_float: true",
        ) from exc
    used = f"{method} (nncf {estimator})"
    set_metadata(qmodel, {**(metadata or {}), "edgecompress.int8_calibration": used})
    save_ir(qmodel, xml_path, compress_to_fp16=False)
    return {
        "calibration_method": used,
        "excluded_nodes": names,
        **({"unmatched_onnx_nodes": missing} if missing else {}),
        "head_nodes": heads,
        "bias_correction": "fast" if fast_bias_correction else "full",
        "produced": {"weights": "i8", "activations": "u8/i8 FakeQuantize", "io": "f32"},
        "calib_samples": len(samples),
        "openvino_version": _ov().get_version(),
        "nncf_version": getattr(nncf, "__version__", None),
    }


def rescale_ir(xml_path: Path, out_xml: Path, factor: float, output_name: str = "logits") -> list[Path]:
    """Copy an IR with its output multiplied by ``factor`` (a Multiply inserted before the Result)."""
    ov = _ov()
    from openvino import opset13 as ops

    model = ov.Core().read_model(str(xml_path))
    result = model.get_results()[0]
    source = result.input(0).get_source_output()
    names = set(source.get_names()) or {output_name}
    mul = ops.multiply(source, ops.constant(np.array(factor, dtype=np.float32)))
    source.get_tensor().set_names(set())
    mul.output(0).get_tensor().set_names(names)
    result.input(0).replace_source_output(mul.output(0))
    model.validate_nodes_and_infer_types()
    model.set_rt_info(repr(float(factor)), [RT_INFO_ROOT, "edgecompress.output_scale"])
    return save_ir(model, out_xml, compress_to_fp16=False)
