"""TensorRT: build recipe, entropy calibration cache, engine build on the target, engine/device compatibility.

TensorRT engines are bound to the GPU, the TensorRT version and the platform that built them, so export writes what
the target needs to build one (ONNX + calibration cache + recipe) and, where TensorRT and a GPU are present, the engine.

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

import json
import logging
import shlex
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress._io import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from edgecompress.errors import DeviceError, ExportError, MissingExtraError
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


def write_calibration_cache(amax: dict[str, float], path: Path, *, trt_version: str = DEFAULT_TRT_VERSION) -> Path:
    """Write a TensorRT ``EntropyCalibration2`` text cache (format in the module docstring); scale = amax / 127."""
    lines = [f"TRT-{trt_version_number(trt_version)}-{CACHE_ALGORITHM}"]
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


def _cuda_runtime() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise MissingExtraError("cuda-python", "tensorrt", "TensorRT INT8 calibration") from exc
    return cudart


def _entropy_calibrator(trt: Any, *, cache_path: Path | None, calib_x: np.ndarray | None, batch: int = 8) -> Any:
    """An ``IInt8EntropyCalibrator2`` that serves ``calib_x`` batches from GPU memory, or replays a cache file."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._batches = [] if calib_x is None else [calib_x[i : i + batch] for i in range(0, len(calib_x), batch)]
            self._batches = [b for b in self._batches if len(b) == batch] or self._batches[:1]
            self._i, self._dev, self._rt = 0, None, None

        def get_batch_size(self) -> int:
            return len(self._batches[0]) if self._batches else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._i >= len(self._batches):
                return None
            host = np.ascontiguousarray(self._batches[self._i], dtype=np.float32)
            if self._rt is None:
                self._rt = _cuda_runtime()
                err, self._dev = self._rt.cudaMalloc(host.nbytes)
                if int(err) != 0:
                    raise RuntimeError(f"cudaMalloc failed: {err}")
            kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._rt.cudaMemcpy(self._dev, host.ctypes.data, host.nbytes, kind)
            self._i += 1
            return [int(self._dev)]

        def read_calibration_cache(self) -> bytes | None:
            if cache_path is not None and cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: bytes) -> None:
            if cache_path is not None:
                atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()


def _gpu_name() -> str | None:
    try:
        cudart = _cuda_runtime()
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = prop.name
            return (name.decode() if isinstance(name, bytes) else str(name)).strip("\x00 ")
    except Exception:  # no GPU or no cuda-python: the sidecar records None
        return None
    return None


def build_engine(
    onnx_path: Path, recipe: dict[str, Any], out_path: Path, *, calib_x: np.ndarray | None = None
) -> tuple[Path, Path]:
    """Build a TensorRT engine (TensorRT >= 10 Python API) from ``onnx_path`` following ``recipe``.

    Writes ``out_path`` and the sidecar ``out_path + ".json"`` (TensorRT version, GPU name, precision, ONNX hash).

    Raises:
        MissingExtraError: tensorrt (or cuda-python for INT8 from arrays) is not installed.
        ExportError: parse or build failed, naming the step.
    """
    trt = _lazy.require("tensorrt", "building TensorRT engines")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"tensorrt failed at step 'parse ONNX': {errs}", "check the ONNX export and opset")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(recipe.get("workspace_mb", 1024)) << 20)
    profile = builder.create_optimization_profile()
    name = recipe.get("input_name", network.get_input(0).name)
    profile.set_shape(name, recipe["min_shape"], recipe["opt_shape"], recipe["max_shape"])
    config.add_optimization_profile(profile)
    precision = recipe["precision"]
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        cache = recipe.get("calibration_cache")
        cache_path = onnx_path.parent / cache if cache else None
        config.int8_calibrator = _entropy_calibrator(trt, cache_path=cache_path, calib_x=calib_x)
        config.set_calibration_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError("tensorrt failed at step 'build_serialized_network'", "read the TensorRT log above")
    atomic_write_bytes(out_path, bytes(blob))
    sidecar = out_path.with_name(out_path.name + ".json")
    atomic_write_json(
        sidecar,
        {
            "tensorrt_version": trt.__version__,
            "gpu_name": _gpu_name(),
            "precision": precision,
            "onnx_sha256": sha256_file(onnx_path),
        },
    )
    return out_path, sidecar


def check_engine_compat(sidecar: Path | dict, *, trt_version: str | None = None, gpu_name: str | None = None) -> None:
    """Refuse an engine built with another TensorRT version or on another GPU.

    ``trt_version``/``gpu_name`` default to this machine's (TensorRT must then be installed).

    Raises:
        DeviceError: versions or GPUs differ (the message says what was built where, and how to rebuild).
    """
    meta = sidecar if isinstance(sidecar, dict) else json.loads(Path(sidecar).read_text())
    if trt_version is None:
        trt_version = _lazy.require("tensorrt", "checking TensorRT engines").__version__
    if gpu_name is None:
        gpu_name = _gpu_name()
    built_v, built_gpu = meta.get("tensorrt_version"), meta.get("gpu_name")
    problems = []
    if built_v != trt_version:
        problems.append(f"TensorRT {built_v} (here {trt_version})")
    if built_gpu and gpu_name and built_gpu != gpu_name:
        problems.append(f"GPU '{built_gpu}' (here '{gpu_name}')")
    if problems:
        raise DeviceError(
            f"TensorRT engine was built for {' and '.join(problems)}; engines are not portable",
            "rebuild it on this device from the ONNX file and its recipe (trtexec command in the recipe)",
        )
