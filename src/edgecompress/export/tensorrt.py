"""TensorRT at export time: build recipe, entropy calibration cache, and the engine where TensorRT and a GPU are here.

TensorRT engines are bound to the GPU, the TensorRT version and the platform that built them, so export writes what
the target needs to build one (ONNX + calibration cache + recipe). The engine builder and the engine/device
compatibility check live once, in the shipped agent (``edgecompress.devices.agent.build_engine`` /
``check_engine_compat``), which builds on the device; :func:`build_engine_here` calls the same builder here.

Calibration cache format (what :func:`write_calibration_cache` writes and TensorRT's ``IInt8EntropyCalibrator2``
reads back through ``read_calibration_cache``)::

    TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2
    <tensor name>: <8 lowercase hex digits>
    ...

``NV_TENSORRT_VERSION`` is ``major*10000 + minor*100 + patch`` for TensorRT >= 10 (e.g. ``100300`` for 10.3.0);
each hex string is the big-endian IEEE-754 bit pattern of the float32 *scale* = amax / 127, where amax is the
activation range of that tensor. Tensor names are the ONNX tensor names (TensorRT's ONNX parser keeps them). A
TensorRT whose version differs from the header ignores the cache and recalibrates.
"""

from __future__ import annotations

import logging
import shlex
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress._io import atomic_write_text
from edgecompress.errors import ExportError, MissingExtraError
from edgecompress.export.contract import ExportContract

log = logging.getLogger(__name__)

DEFAULT_TRT_VERSION = "10.0.0"
CACHE_ALGORITHM = "EntropyCalibration2"


def trt_version_number(version: str) -> int:
    """``"10.3.0"`` -> ``100300`` (the integer TensorRT writes into calibration cache headers)."""
    nums = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    major, minor, patch = (nums + [0, 0, 0])[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def make_recipe(
    onnx_name: str,
    contract: ExportContract,
    *,
    precision: str,
    calibration_cache: str | None = None,
    opt_batch: int = 1,
    workspace_mb: int = 1024,
    engine_name: str | None = None,
) -> dict[str, Any]:
    """The build recipe: what ``devices.agent.TensorRTRuntime`` reads and the equivalent ``trtexec`` command.

    Keys: ``precision``, ``onnx``, ``calibration_cache``, ``input_name``, ``min_shape``/``opt_shape``/``max_shape``
    (``[N,C,H,W]``), ``workspace_mb``, ``engine``, ``trtexec`` (argument list) and ``trtexec_command`` (one line).
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ExportError(f"tensorrt recipe: unknown precision '{precision}'", "use fp32, fp16 or int8")
    if precision == "int8" and not calibration_cache:
        raise ExportError("tensorrt recipe: int8 needs a calibration cache", "pass calibration_cache")
    chw = list(contract.input_shape)
    max_b = contract.max_batch if contract.dynamic_batch else 1
    shapes = {"min_shape": [1, *chw], "opt_shape": [min(opt_batch, max_b), *chw], "max_shape": [max_b, *chw]}
    engine = engine_name or f"{Path(onnx_name).stem}.{precision}.engine"
    name = contract.input_name
    argv = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine}", f"--memPoolSize=workspace:{workspace_mb}M"]
    if contract.dynamic_batch:
        for flag, key in (("--minShapes", "min_shape"), ("--optShapes", "opt_shape"), ("--maxShapes", "max_shape")):
            argv.append(f"{flag}={name}:{'x'.join(str(d) for d in shapes[key])}")
    if precision in ("fp16", "int8"):
        argv.append("--fp16")  # layers TensorRT keeps out of INT8 run in FP16 rather than FP32
    if precision == "int8":
        argv += ["--int8", f"--calib={calibration_cache}"]
    return {
        "format": "tensorrt",
        "precision": precision,
        "onnx": onnx_name,
        "calibration_cache": calibration_cache,
        "input_name": name,
        **shapes,
        "workspace_mb": workspace_mb,
        "engine": engine,
        "trtexec": argv,
        "trtexec_command": shlex.join(argv),
    }


def compute_activation_ranges(onnx_path: Path, calib_x: np.ndarray, *, method: str = "entropy") -> dict[str, float]:
    """amax per activation tensor from ONNX Runtime's calibrator (entropy = KL-optimal threshold, as TensorRT's).

    Returns ``{tensor_name: amax}`` for the graph input and every Conv/Gemm/Relu/... output ORT calibrates.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgecompress.export.onnx_export import ORT_METHODS, ArrayReader, _quiet

    onnx = _lazy.require("onnx", "TensorRT calibration cache")
    proto = onnx.load(str(onnx_path))
    with tempfile.TemporaryDirectory(prefix="ec-trt-") as tmp, _quiet():
        calibrator = create_calibrator(
            str(onnx_path),
            op_types_to_calibrate=None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]),
        )
        calibrator.collect_data(ArrayReader(calib_x, proto.graph.input[0].name))
        data = calibrator.compute_data()
    ranges: dict[str, float] = {}
    for name, rng in data.data.items():
        lo, hi = (np.asarray(v, dtype=np.float64) for v in rng.range_value)
        amax = float(max(np.max(np.abs(lo)), np.max(np.abs(hi))))
        if np.isfinite(amax):
            ranges[name] = amax
    return ranges


def write_calibration_cache(amax: dict[str, float], path: Path, *, trt_version: str | None = None) -> Path:
    """Write a TensorRT ``EntropyCalibration2`` text cache (format in the module docstring); scale = amax / 127.

    ``trt_version`` goes into the header (default :data:`DEFAULT_TRT_VERSION`; the engine is built on the target).
    """
    lines = [f"TRT-{trt_version_number(trt_version or DEFAULT_TRT_VERSION)}-{CACHE_ALGORITHM}"]
    for name, value in amax.items():
        scale = max(float(value), 1e-12) / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def parse_calibration_cache(path_or_text: Path | str) -> tuple[str, dict[str, float]]:
    """Parse a TensorRT text calibration cache into ``(header, {tensor: scale})``.

    Raises:
        ExportError: the header or a line is malformed.
    """
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else str(path_or_text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise ExportError("not a TensorRT calibration cache (no 'TRT-<version>-<algorithm>' header)", "regenerate it")
    scales: dict[str, float] = {}
    for ln in lines[1:]:
        name, sep, hexval = ln.rpartition(":")
        try:
            if not sep:
                raise ValueError(ln)
            scales[name.strip()] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
        except (ValueError, struct.error) as exc:
            raise ExportError(f"malformed calibration cache line {ln!r}", "regenerate the cache") from exc
    return lines[0], scales


def local_trt_version() -> str:
    """The installed TensorRT's version (for a calibration cache the engine built here will accept)."""
    return str(_lazy.require("tensorrt", "building TensorRT engines").__version__)


def build_engine_here(onnx_path: Path, recipe: dict[str, Any]) -> Path:
    """Build the engine on this machine with the agent's builder (the one builder; it ships to devices alone).

    Writes the engine named in the recipe and its sidecar ``<engine>.json`` next to ``onnx_path``.

    Raises:
        MissingExtraError: tensorrt is not installed.
        ExportError: TensorRT could not parse or build the ONNX (its one-line reason).
    """
    from edgecompress.devices import agent

    try:
        return agent.build_engine(Path(onnx_path), recipe, base_dir=Path(onnx_path).parent)
    except agent.RuntimeMissingError as exc:
        raise MissingExtraError("tensorrt", "tensorrt", "building TensorRT engines") from exc
    except agent.AgentError as exc:
        raise ExportError(f"tensorrt engine build: {exc.problem}", exc.fix) from exc
