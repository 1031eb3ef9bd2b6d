"""Mobile formats: ORT format (ONNX Runtime Mobile) and ExecuTorch ``.pte`` with the XNNPACK delegate."""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress._io import atomic_path, atomic_write_bytes
from edgecompress.errors import ExportError, QuantizationError
from edgecompress.export.contract import ExportContract
from edgecompress.export.onnx_export import _first_line, _with_output_head, eval_mode

log = logging.getLogger(__name__)


def convert_to_ort(onnx_path: Path, ort_path: Path, *, optimization_style: str = "Fixed") -> dict[str, Any]:
    """Convert an ONNX file to ORT format with ``python -m onnxruntime.tools.convert_onnx_models_to_ort``.

    Runs in a subprocess (argument list, no shell) so the converter's global state and prints stay out of this
    process. 'Fixed' bakes in the CPU graph optimizations (the right style for the CPU EP).

    Raises:
        ExportError: naming step 'convert_onnx_models_to_ort' and the converter's last stderr line.
    """
    with tempfile.TemporaryDirectory(prefix="ec-ort-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(onnx_path.read_bytes())
        out_dir = Path(tmp) / "out"
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(src),
            "--output_dir",
            str(out_dir),
            "--optimization_style",
            optimization_style,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603
        produced = sorted(out_dir.glob("*.ort"))
        if proc.returncode != 0 or not produced:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportError(
                f"ort export failed at step 'convert_onnx_models_to_ort' (exit {proc.returncode}): {tail[0][:300]}",
                "check that the ONNX model loads in onnxruntime",
            )
        atomic_write_bytes(ort_path, produced[0].read_bytes())
    return {"optimization_style": optimization_style}


def _et_modules() -> tuple[Any, Any]:
    _lazy.require("executorch", "ExecuTorch export")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return XnnpackPartitioner, to_edge_transform_and_lower


def export_executorch(
    model: Any,
    contract: ExportContract,
    pte_path: Path,
    *,
    precision: str = "fp32",
    calib_x: np.ndarray | None = None,
) -> dict[str, Any]:
    """ExecuTorch program lowered to XNNPACK; INT8 by PT2E static quantization with ``XNNPACKQuantizer``.

    INT8 config: symmetric per-channel weights, per-tensor activations (``get_symmetric_quantization_config``),
    observers calibrated on ``calib_x``. With a bounded dynamic batch the program is exported from an example at the
    maximum batch (a known ExecuTorch quirk: a smaller example can specialize the batch dimension).

    Raises:
        MissingExtraError: executorch is not installed (``pip install 'edgecompress[mobile]'``).
        ExportError / QuantizationError: naming the failed step.
    """
    partitioner_cls, lower = _et_modules()
    import torch

    model = _with_output_head(model, contract)
    example = torch.from_numpy(contract.max_batch_input())
    shapes = None
    if contract.dynamic_batch:
        shapes = ({0: torch.export.Dim(contract.batch_axis_name, min=1, max=max(contract.max_batch, 2))},)
    step = "torch.export"
    info: dict[str, Any] = {"backend": "xnnpack", "export_batch": int(example.shape[0])}
    try:
        with eval_mode(model), torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=shapes)
            if precision == "int8":
                step = "pt2e quantization"
                program = _quantize_pt2e(program, contract, calib_x, shapes)
                assert calib_x is not None  # _quantize_pt2e raised QuantizationError otherwise
                info.update({"quantizer": "XNNPACKQuantizer", "per_channel": True, "calib_samples": int(len(calib_x))})
            step = "to_edge_transform_and_lower"
            lowered = lower(program, partitioner=[partitioner_cls()]).to_executorch()
    except QuantizationError:
        raise
    except Exception as exc:
        raise ExportError(
            f"executorch {precision} failed at step '{step}': {_first_line(exc)}",
            "check that every op has an ExecuTorch kernel (see executorch's supported ops)",
        ) from exc
    with atomic_path(pte_path) as tmp:
        tmp.write_bytes(lowered.buffer)
    return info


def _quantize_pt2e(program: Any, contract: ExportContract, calib_x: np.ndarray | None, shapes: Any) -> Any:
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calib_x is None or len(calib_x) == 0:
        raise QuantizationError("ExecuTorch INT8 needs calibration samples, got none", "pass calib_x")
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    batch = min(32, contract.max_batch if contract.dynamic_batch else 1)  # the program's shape guards bound it
    for i in range(0, len(calib_x), batch):
        prepared(torch.from_numpy(np.ascontiguousarray(calib_x[i : i + batch], dtype=np.float32)))
    converted = convert_pt2e(prepared)
    example = torch.from_numpy(contract.max_batch_input())
    return torch.export.export(converted, (example,), dynamic_shapes=shapes)
