"""The on-device agent: runtimes behind one protocol, an honest latency harness, and a compact evaluator.

This file is copied as-is to target devices (x86 servers, Jetsons, anything with Python), so it is deliberately
self-contained: standard library + numpy + the runtime package it drives. It must never import ``edgecompress``.
The package imports its runtimes and harness from here (``edgecompress.devices.host_runtimes``), so the numbers measured
on the host and on a device come from the same code.

CLI (prints one JSON object; errors are JSON with ``"ok": false`` and a non-zero exit code, never a traceback)::

    python agent.py --artifact model.onnx --runtime onnxruntime --eval eval.npz --batch-sizes 1,32 \
        --threads 4 --warmup 10 --min-time 0.5 --out result.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

try:
    import numpy as np
except ImportError:  # a bare device Python: answer in the agent's JSON protocol, not with a traceback
    if __name__ != "__main__":
        raise
    print(
        json.dumps(
            {
                "ok": False,
                "error": "numpy is not installed on this device — fix: pip install numpy",
                "error_type": "missing_runtime",
            }
        )
    )
    sys.exit(3)

AGENT_VERSION = "1"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING_RUNTIME = 0, 1, 2, 3


class AgentError(RuntimeError):
    """A problem on the device, reported in one line: ``problem — fix: fix``."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem} — fix: {fix}" if fix else problem)


class RuntimeMissingError(AgentError):
    """The runtime's Python package is not installed on this device."""

    def __init__(self, runtime: str, package: str) -> None:
        self.runtime, self.package = runtime, package
        super().__init__(f"runtime '{runtime}' is not installed on this device", f"pip install {package}")


def _import(module: str, runtime: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeMissingError(runtime, package) from exc


def _version(dist: str, module: Any = None) -> str | None:
    from importlib import metadata

    with contextlib.suppress(Exception):
        return metadata.version(dist)
    return getattr(module, "__version__", None)


def _check_file(path: Path, suffixes: tuple[str, ...], runtime: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AgentError(f"model file not found: {path}", "check the artifact path copied to the device")
    if suffixes and path.suffix.lower() not in suffixes:
        raise AgentError(
            f"runtime '{runtime}' cannot load '{path.name}'", f"give a file ending in {', '.join(suffixes)}"
        )
    return path


@runtime_checkable
class Runtime(Protocol):
    """What every inference backend offers: load a model file, run float32 NCHW -> float32 logits, describe itself."""

    name: str

    def load(self, path: Path, *, threads: int | None = None) -> None: ...

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def info(self) -> dict: ...


class OnnxRuntimeRuntime:
    """ONNX Runtime: CPU EP; CUDA/TensorRT EPs when asked for and present. Loads ``.onnx`` and ``.ort`` files."""

    name = "onnxruntime"
    _EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}

    def __init__(self, providers: list[str] | tuple[str, ...] | None = None) -> None:
        self._ort = _import("onnxruntime", self.name, "onnxruntime")
        wanted = [p.strip().lower() for p in (providers or ["cpu"])]
        unknown = [p for p in wanted if p not in self._EP]
        if unknown:
            raise AgentError(f"unknown ONNX Runtime provider(s) {unknown}", f"use some of {sorted(self._EP)}")
        available = set(self._ort.get_available_providers())
        missing = [p for p in wanted if self._EP[p] not in available]
        if missing:
            raise AgentError(
                f"ONNX Runtime on this device lacks provider(s) {missing} (has {sorted(available)})",
                "install onnxruntime-gpu for cuda/tensorrt, or ask for the cpu provider",
            )
        self._providers = [self._EP[p] for p in wanted]
        if "CPUExecutionProvider" not in self._providers:
            self._providers.append("CPUExecutionProvider")
        self._sess: Any = None
        self._threads: int | None = None

    def load(self, path: Path, *, threads: int | None = None) -> None:
        path = _check_file(path, (".onnx", ".ort"), self.name)
        so = self._ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        if path.suffix.lower() == ".ort":
            so.add_session_config_entry("session.load_model_format", "ORT")
        try:
            self._sess = self._ort.InferenceSession(str(path), sess_options=so, providers=self._providers)
        except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
            raise AgentError(f"ONNX Runtime could not load {path.name}: {exc}", "re-export the artifact") from exc
        self._threads = threads
        self._run_options = self._new_run_options()
        inp = self._sess.get_inputs()[0]
        self._input_name = inp.name
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32

    def run(self, x: np.ndarray) -> np.ndarray:
        feed = {self._input_name: np.ascontiguousarray(x, dtype=self._input_dtype)}
        out = self._sess.run(None, feed, self._run_options)[0]
        return np.asarray(out, dtype=np.float32)

    def cancel(self) -> None:
        """Stop the run in flight from another thread (ONNX Runtime's terminate flag: that run raises); later runs
        get fresh options."""
        in_flight, self._run_options = self._run_options, self._new_run_options()
        in_flight.terminate = True

    def _new_run_options(self) -> Any:
        options = self._ort.RunOptions()
        options.log_severity_level = 4  # a failed or cancelled run raises with the message; no second copy on stderr
        return options

    def input_shape(self) -> tuple:
        return tuple(d if isinstance(d, int) else None for d in self._sess.get_inputs()[0].shape)

    def info(self) -> dict:
        return {
            "runtime": self.name,
            "version": self._ort.__version__,
            "providers": self._sess.get_providers() if self._sess else self._providers,
            "precision": "float16-io" if getattr(self, "_input_dtype", None) is np.float16 else "as-stored",
            "threads": self._threads,
        }


class OpenVINORuntime:
    """OpenVINO on CPU. The actual inference precision is read back from the compiled model and recorded.

    On CPUs with AMX/AVX512-BF16 OpenVINO defaults to bf16 execution even for an FP32 IR; ``precision="f32"``
    forces full precision. Whatever was asked, ``info()["precision"]`` is what the compiled model reports.
    """

    name = "openvino"
    _HINTS = ("f32", "bf16", "f16")

    def __init__(self, precision: str | None = None, device: str = "CPU") -> None:
        if precision is not None and precision not in self._HINTS:
            raise AgentError(f"unknown OpenVINO precision hint '{precision}'", f"use one of {', '.join(self._HINTS)}")
        self._ov = _import("openvino", self.name, "openvino")
        self._precision_asked, self._device = precision, device
        self._compiled: Any = None
        self._threads: int | None = None

    def load(self, path: Path, *, threads: int | None = None) -> None:
        path = _check_file(path, (".xml", ".onnx"), self.name)
        core = self._ov.Core()
        try:
            model = core.read_model(str(path))
            self._make_batch_dynamic(model)
            config: dict[str, Any] = {}
            if self._precision_asked:
                config["INFERENCE_PRECISION_HINT"] = self._precision_asked
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self._compiled = core.compile_model(model, self._device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long C++ messages
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AgentError(f"OpenVINO could not load {path.name}: {msg}", "re-export the artifact") from exc
        self._threads = threads
        self._request = self._compiled.create_infer_request()

    def _make_batch_dynamic(self, model: Any) -> None:
        # A static batch of 1 would refuse batch-32 timing; a model that cannot be reshaped keeps its shape.
        shape = model.input(0).get_partial_shape()
        if shape.rank.is_static and len(shape) >= 1 and shape[0].is_static:
            dims = [self._ov.Dimension(-1)] + [shape[i] for i in range(1, len(shape))]
            with contextlib.suppress(Exception):
                model.reshape({model.input(0): self._ov.PartialShape(dims)})

    def run(self, x: np.ndarray) -> np.ndarray:
        self._request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)

    def input_shape(self) -> tuple:
        ps = self._compiled.input(0).get_partial_shape()
        return tuple(d.get_length() if d.is_static else None for d in ps)

    def info(self) -> dict:
        actual = None
        if self._compiled is not None:
            with contextlib.suppress(Exception):
                actual = self._compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        return {
            "runtime": self.name,
            "version": self._ov.get_version() if hasattr(self._ov, "get_version") else _version("openvino"),
            "providers": [self._device],
            "precision": actual,
            "precision_asked": self._precision_asked,
            "threads": self._threads,
        }


def _gpu_name() -> str | None:
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    with contextlib.suppress(Exception):  # Jetson: no nvidia-smi; the device tree names the module
        return Path("/proc/device-tree/model").read_text().strip("\x00 \n")
    return None


def check_engine_compat(meta: dict, *, trt_version: str, gpu_name: str | None, engine: str = "the engine") -> None:
    """Refuse an engine built with another TensorRT version or on another GPU (engines are not portable).

    ``meta`` is the engine's sidecar (``tensorrt_version``, ``gpu_name``); a GPU name missing on either side is not
    held against the engine. The one compatibility rule: the package's export calls this too.

    Raises:
        AgentError: the versions or the GPUs differ; the message says what was built where.
    """
    built_v, built_gpu = meta.get("tensorrt_version"), meta.get("gpu_name")
    problems = []
    if built_v != trt_version:
        problems.append(f"TensorRT {built_v} (here {trt_version})")
    if built_gpu and gpu_name and built_gpu != gpu_name:
        problems.append(f"GPU '{built_gpu}' (here '{gpu_name}')")
    if problems:
        raise AgentError(
            f"{engine} was built for {' and '.join(problems)}; engines are not portable",
            "rebuild it on this device from the ONNX file and its recipe JSON (trtexec command in the recipe)",
        )


def build_engine(
    onnx_path: Path, recipe: dict | None = None, *, base_dir: Path | None = None, engine_path: Path | None = None
) -> Path:
    """Build a TensorRT engine (TensorRT >= 10 Python API) from ``onnx_path`` following a build recipe.

    The one engine builder: the runtime below calls it on the device, the package's export calls it where a GPU is.
    Recipe keys (all optional): ``precision`` (``fp32``/``fp16``/``int8``), ``calibration_cache`` (a file in
    ``base_dir``, replayed for INT8), ``input_name``, ``min_shape``/``opt_shape``/``max_shape`` (``[N,C,H,W]``, used
    when the batch is dynamic), ``workspace_mb``, ``engine`` (file name). Writes the engine atomically and the
    sidecar ``<engine>.json`` (TensorRT version, GPU name, precision, ONNX sha256) that :func:`check_engine_compat`
    reads.

    Raises:
        RuntimeMissingError: tensorrt is not installed.
        AgentError: parse or build failed.
    """
    trt = _import("tensorrt", "tensorrt", "tensorrt")
    recipe = dict(recipe or {"precision": "fp32"})
    base_dir = Path(base_dir) if base_dir is not None else onnx_path.parent
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    data = onnx_path.read_bytes()
    if not parser.parse(data):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AgentError(f"TensorRT could not parse {onnx_path.name}: {errs}", "check the ONNX export and opset")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(recipe.get("workspace_mb", 1024)) << 20)
    precision = str(recipe.get("precision", "fp32")).lower()
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers TensorRT keeps out of INT8 run in FP16 rather than FP32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        cache = recipe.get("calibration_cache")
        if cache:
            config.int8_calibrator = _cache_calibrator(trt, (base_dir / cache).read_bytes())
    inp = network.get_input(0)
    shape = list(inp.shape)
    if any(d < 0 for d in shape):
        chw = list(shape[1:])
        profile = builder.create_optimization_profile()
        profile.set_shape(
            recipe.get("input_name", inp.name),
            recipe.get("min_shape", [1, *chw]),
            recipe.get("opt_shape", [1, *chw]),
            recipe.get("max_shape", [64, *chw]),
        )
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise AgentError(f"TensorRT failed to build an engine from {onnx_path.name}", "see the TensorRT log above")
    engine_path = engine_path or onnx_path.with_name(recipe.get("engine") or f"{onnx_path.stem}.{precision}.engine")
    _atomic_write(engine_path, bytes(blob))
    meta = {
        "tensorrt_version": trt.__version__,
        "gpu_name": _gpu_name(),
        "precision": precision,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic_write(engine_path.with_name(engine_path.name + ".json"), json.dumps(meta).encode())
    return engine_path


class TensorRTRuntime:
    """TensorRT (Python API, TensorRT >= 10). Engines are bound to the GPU and TensorRT version that built them.

    ``load("model.engine")`` reads the sidecar ``model.engine.json`` (``tensorrt_version``, ``gpu_name``) and refuses
    an engine built elsewhere (:func:`check_engine_compat`). ``load("model.onnx")`` with a recipe JSON
    (``model.recipe.json`` or ``recipe=``) builds the engine here first with :func:`build_engine`. Timings include
    host<->device copies.
    """

    name = "tensorrt"

    def __init__(self, recipe: str | Path | None = None) -> None:
        self._trt = _import("tensorrt", self.name, "tensorrt")
        self._recipe = Path(recipe) if recipe else None
        self._gpu = _gpu_name()
        self._built_here = False
        self._mem: _CudaMemory | None = None

    def load(self, path: Path, *, threads: int | None = None) -> None:
        path = _check_file(path, (".engine", ".plan", ".onnx"), self.name)
        if path.suffix.lower() == ".onnx":
            recipe_path = self._recipe or path.with_suffix(".recipe.json")
            recipe = json.loads(recipe_path.read_text()) if recipe_path.is_file() else None
            path = build_engine(path, recipe, base_dir=recipe_path.parent)
            self._built_here = True
        self._check_sidecar(path)
        trt = self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(self._logger).deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise AgentError(f"TensorRT could not deserialize {path.name}", "rebuild the engine on this device")
        self._engine, self._ctx = engine, engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_in = [engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
        self._in = [n for n, i in zip(names, is_in, strict=True) if i][0]
        self._out = [n for n, i in zip(names, is_in, strict=True) if not i][0]
        self._in_dtype = trt.nptype(engine.get_tensor_dtype(self._in))
        self._mem = _CudaMemory()

    def _check_sidecar(self, engine: Path) -> None:
        candidates = [engine.with_name(engine.name + ".json"), engine.with_suffix(".json")]
        sidecar = next((c for c in candidates if c.is_file()), None)
        if sidecar is None:
            raise AgentError(
                f"no sidecar JSON next to {engine.name} (TensorRT version and GPU it was built for)",
                "build the engine on this device from the ONNX file and its recipe",
            )
        meta = json.loads(sidecar.read_text())
        check_engine_compat(meta, trt_version=self._trt.__version__, gpu_name=self._gpu, engine=f"engine {engine.name}")

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self._in_dtype)
        self._ctx.set_input_shape(self._in, tuple(x.shape))
        out_shape = tuple(self._ctx.get_tensor_shape(self._out))
        out_dtype = self._trt.nptype(self._engine.get_tensor_dtype(self._out))
        assert self._mem is not None, "load() sets up the CUDA memory"
        return self._mem.execute(self._ctx, self._in, x, self._out, out_shape, out_dtype).astype(np.float32)

    def info(self) -> dict:
        return {
            "runtime": self.name,
            "version": self._trt.__version__,
            "providers": [self._gpu or "unknown GPU"],
            "precision": "as-built",
            "built_on_device": self._built_here,
            "memory": self._mem.kind if self._mem else None,
            "threads": None,
        }


def _cache_calibrator(trt: Any, cache: bytes) -> Any:
    class _CacheCalibrator(trt.IInt8EntropyCalibrator2):  # replays a calibration cache made at export time
        def __init__(self) -> None:
            super().__init__()

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return _CacheCalibrator()


class _CudaMemory:
    """Device buffers for TensorRT through torch (if installed) or cuda-python."""

    def __init__(self) -> None:
        self._stream: Any  # a torch.cuda.Stream or a cuda-python cudaStream_t
        try:
            import torch

            if not torch.cuda.is_available():
                raise ImportError
            self._torch, self.kind = torch, "torch"
            self._stream = torch.cuda.Stream()
        except ImportError:
            try:
                from cuda.bindings import runtime as cudart
            except ImportError:
                try:
                    from cuda import cudart  # cuda-python < 12.6
                except ImportError as exc:
                    raise RuntimeMissingError("tensorrt (CUDA memory)", "cuda-python") from exc
            self._cudart, self.kind = cudart, "cuda-python"
            self._stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, res: tuple) -> Any:
        if int(res[0]) != 0:
            raise AgentError(f"CUDA call failed: {res[0]}", "check the GPU driver")
        return res[1] if len(res) > 1 else None

    def execute(self, ctx: Any, in_name: str, x: np.ndarray, out_name: str, out_shape: tuple, out_dtype: Any) -> Any:
        if self.kind == "torch":
            torch = self._torch
            with torch.cuda.stream(self._stream):
                xt = torch.from_numpy(x).cuda(non_blocking=True)
                yt = torch.empty(out_shape, dtype=torch.from_numpy(np.zeros(0, out_dtype)).dtype, device="cuda")
                ctx.set_tensor_address(in_name, xt.data_ptr())
                ctx.set_tensor_address(out_name, yt.data_ptr())
                ctx.execute_async_v3(self._stream.cuda_stream)
                y = yt.cpu()
            self._stream.synchronize()
            return y.numpy()
        rt = self._cudart
        y = np.empty(out_shape, dtype=out_dtype)
        d_in, d_out = self._ok(rt.cudaMalloc(x.nbytes)), self._ok(rt.cudaMalloc(y.nbytes))
        try:
            h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._ok(rt.cudaMemcpyAsync(d_in, x.ctypes.data, x.nbytes, h2d, self._stream))
            ctx.set_tensor_address(in_name, int(d_in))
            ctx.set_tensor_address(out_name, int(d_out))
            ctx.execute_async_v3(int(self._stream))
            self._ok(rt.cudaMemcpyAsync(y.ctypes.data, d_out, y.nbytes, d2h, self._stream))
            self._ok(rt.cudaStreamSynchronize(self._stream))
        finally:
            rt.cudaFree(d_in)
            rt.cudaFree(d_out)
        return y


class ExecuTorchRuntime:
    """ExecuTorch ``.pte`` programs through ``executorch.runtime`` (portable/XNNPACK kernels linked in the wheel)."""

    name = "executorch"

    def __init__(self) -> None:
        self._et = _import("executorch.runtime", self.name, "executorch")
        self._torch = _import("torch", self.name, "torch")
        self._method: Any = None

    def load(self, path: Path, *, threads: int | None = None) -> None:
        path = _check_file(path, (".pte",), self.name)
        try:
            program = self._et.Runtime.get().load_program(path)
            self._method = program.load_method("forward")
        except Exception as exc:  # ExecuTorch raises RuntimeError with an error code
            raise AgentError(f"ExecuTorch could not load {path.name}: {exc}", "re-export the .pte program") from exc

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self._method.execute([self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))])
        return np.asarray(out[0].detach().numpy(), dtype=np.float32)

    def info(self) -> dict:
        return {
            "runtime": self.name,
            "version": _version("executorch"),
            "providers": ["cpu"],
            "precision": "as-stored",
            "threads": None,
        }


RUNTIMES: dict[str, type] = {
    "onnxruntime": OnnxRuntimeRuntime,
    "openvino": OpenVINORuntime,
    "tensorrt": TensorRTRuntime,
    "executorch": ExecuTorchRuntime,
}


# Artifact precision -> OpenVINO inference precision hint, so an "fp32" IR runs at fp32 and not at the bf16 a CPU with
# AMX picks by default; the precision actually used is read back and reported either way.
OPENVINO_HINTS = {"fp32": "f32", "fp16": "f16"}


def runtime_options(runtime: str, precision: str | None) -> dict[str, Any]:
    """Constructor options that make ``runtime`` execute an artifact at its stated ``precision``."""
    if runtime == "openvino" and precision in OPENVINO_HINTS:
        return {"precision": OPENVINO_HINTS[precision]}
    return {}


def get_runtime(name: str, **options: Any) -> Runtime:
    """Return a fresh runtime by name; ``options`` go to its constructor (e.g. ``precision="f32"`` for OpenVINO).

    Raises:
        RuntimeMissingError: the runtime's package is not installed here.
        AgentError: the name is unknown or an option is invalid.
    """
    cls = RUNTIMES.get(name)
    if cls is None:
        raise AgentError(f"unknown runtime '{name}'", f"use one of {', '.join(RUNTIMES)}")
    return cls(**options)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------------
# Harness: warm-up, minimum time and iterations, outlier clipping, percentiles, repeats, memory, power.


def summarize_times(times_ms: np.ndarray | list[float], *, k: float = 5.0, floor: float = 0.05) -> dict:
    """Latency statistics after clipping outliers beyond ``median ± max(k·MAD, floor·median)``.

    MAD is scaled by 1.4826 to match σ for normal data. The ``floor`` keeps a very tight distribution (µs-scale
    calls, where MAD is a few timer ticks) from clipping its ordinary tail: only real spikes (OS preemption, page
    faults) are dropped. A pure function so it can be tested on a known array; ``n_clipped`` says how many went.

    Returns:
        ``p50``, ``p90``, ``p99``, ``mean``, ``std``, ``min``, ``max`` (ms, over kept samples), ``n``, ``n_clipped``,
        and ``clip`` naming the rule.
    """
    t = np.asarray(times_ms, dtype=np.float64).ravel()
    if t.size == 0:
        raise ValueError("no timings to summarize")
    med = float(np.median(t))
    mad = 1.4826 * float(np.median(np.abs(t - med)))
    keep = t[np.abs(t - med) <= max(k * mad, floor * med)]
    p50, p90, p99 = (float(v) for v in np.percentile(keep, [50, 90, 99]))
    return {
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "mean": float(keep.mean()),
        "std": float(keep.std(ddof=1)) if keep.size > 1 else 0.0,
        "min": float(keep.min()),
        "max": float(keep.max()),
        "n": int(keep.size),
        "n_clipped": int(t.size - keep.size),
        "clip": f"median±max({k:g}·MAD×1.4826, {floor:g}·median)",
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


class PowerSampler:
    """Samples board input power from ``tegrastats`` in a background thread (Jetson only).

    Energy per inference = mean input power (mW) × elapsed time (s) / samples inferred -> mJ.
    """

    _RAIL = re.compile(r"\b(VDD_IN|POM_5V_IN|VIN_SYS_5V0|VDD_TOTAL)\s+(\d+)(?:mW)?/(\d+)")

    def __init__(self, interval_ms: int = 50) -> None:
        self.interval_ms = interval_ms
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("tegrastats") is not None

    @classmethod
    def parse_line(cls, line: str) -> float | None:
        """Instantaneous input power in mW from one tegrastats line, or None."""
        m = cls._RAIL.search(line)
        return float(m.group(2)) if m else None

    def __enter__(self) -> PowerSampler:
        self.samples = []
        cmd = [shutil.which("tegrastats") or "tegrastats", "--interval", str(self.interval_ms)]
        # fixed program and arguments, no shell
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # noqa: S603
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            mw = self.parse_line(line)
            if mw is not None:
                self.samples.append(mw)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def mean_mw(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def _timed_loop(runtime: Runtime, x: np.ndarray, min_time_s: float, min_iters: int, max_iters: int) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        runtime.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(
    runtime: Runtime,
    x_batch: np.ndarray,
    *,
    warmup: int = 10,
    min_time_s: float = 0.5,
    min_iters: int = 10,
    max_iters: int = 100_000,
    repeats: int = 3,
    clip_k: float = 5.0,
    power: bool = False,
) -> dict:
    """Time ``runtime.run(x_batch)`` honestly.

    ``warmup`` untimed calls, then ``repeats`` rounds; each round runs until both ``min_time_s`` and ``min_iters``
    are reached (at most ``max_iters``). Percentiles are over all rounds' samples after :func:`summarize_times`
    clipping; ``repeats_p50`` and ``repeat_spread`` ((max−min)/median of the rounds' p50) show run-to-run stability.
    Throughput is batch / mean latency. With ``power`` and tegrastats present, energy per inference is recorded.
    """
    x_batch = np.ascontiguousarray(x_batch, dtype=np.float32)
    batch = int(x_batch.shape[0])
    for _ in range(max(0, warmup)):
        runtime.run(x_batch)
    sampler = PowerSampler() if power and PowerSampler.available() else None
    rounds: list[list[float]] = []
    t_start = time.perf_counter()
    with sampler if sampler is not None else contextlib.nullcontext():
        for _ in range(max(1, repeats)):
            rounds.append(_timed_loop(runtime, x_batch, min_time_s, min_iters, max_iters))
    elapsed = time.perf_counter() - t_start
    stats = summarize_times([t for r in rounds for t in r], k=clip_k)
    p50s = [float(np.median(r)) for r in rounds]
    result = {
        "batch": batch,
        **stats,
        "iterations": sum(len(r) for r in rounds),
        "warmup": warmup,
        "repeats": len(rounds),
        "repeats_p50": p50s,
        "repeat_spread": (max(p50s) - min(p50s)) / float(np.median(p50s)) if np.median(p50s) > 0 else 0.0,
        "throughput": batch / (stats["mean"] / 1e3) if stats["mean"] > 0 else None,
        "peak_rss_mb": peak_rss_mb(),
        "energy_mj_per_inference": None,
        "power_mw": None,
    }
    mean_mw = sampler.mean_mw() if sampler is not None else None
    if mean_mw is not None:
        inferences = result["iterations"] * batch
        result["power_mw"] = mean_mw
        result["energy_mj_per_inference"] = mean_mw * elapsed / inferences
    return result


def _run_quiet(cmd: list[str]) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=10)  # noqa: S603 (fixed argv)
        return out.stdout.strip() or None
    return None


def environment(runtime_info: dict | None = None, threads: int | None = None) -> dict:
    """Where the numbers were measured: CPU, cores, OS, Python, numpy, runtime versions, threads, Jetson details."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    env: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "threads": threads,
        "runtime": runtime_info,
        "agent_version": AGENT_VERSION,
    }
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():
        with contextlib.suppress(OSError):
            first = tegra.read_text().splitlines()[0]
            env["l4t"] = first.strip("# ").strip()
        env["nvpmodel"] = _run_quiet(["nvpmodel", "-q"])
        with contextlib.suppress(OSError):
            env["board"] = Path("/proc/device-tree/model").read_text().strip("\x00 \n")
    return env


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation: a compact numpy copy of the metrics (the agent cannot import edgecompress.calibration).


def classification_metrics(logits: np.ndarray, labels: np.ndarray, *, n_bins: int = 15) -> dict:
    """Accuracy, ECE, NLL and Brier score from logits (Guo et al., ICML 2017).

    ECE = Σ_b |B_b|/n · |acc(B_b) − conf(B_b)| over ``n_bins`` equal-width confidence bins; bin ``b`` holds
    ``[b/n_bins, (b+1)/n_bins)`` and the last also holds 1.0 — the binning of ``edgecompress.calibration.metrics``,
    which this copy must match bit for bit (tests/test_agent_metrics_parity.py);
    NLL = −mean log p_y; Brier = mean over samples of Σ_k (p_k − 1[k=y])². All are fractions, not percent.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise AgentError(f"logits {z.shape} do not match labels {y.shape}", "check the evaluation file")
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    # The same operations, in the same order, as calibration.metrics._equal_width_stats/_ece (a test pins them).
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_b = np.where(counts > 0, sum_acc / counts, 0.0)
        conf_b = np.where(counts > 0, sum_conf / counts, 0.0)
    ece = np.sum(np.abs(acc_b - conf_b) * counts) / conf.shape[0]
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return {
        "accuracy": float(correct.mean()),
        "ece": float(ece),
        "nll": float(-logp[np.arange(y.size), y].mean()),
        "brier": float(((p - onehot) ** 2).sum(axis=1).mean()),
        "n": int(y.size),
    }


def evaluate(runtime: Runtime, x: np.ndarray, y: np.ndarray, *, batch_size: int = 32, n_bins: int = 15) -> tuple:
    """Run ``x`` through ``runtime`` in batches; return ``(metrics, logits)``."""
    outs = [runtime.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    logits = np.concatenate(outs, axis=0).astype(np.float32)
    return classification_metrics(logits, y, n_bins=n_bins), logits


def load_eval(path: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load the shipped evaluation subset: an ``.npz`` with ``x`` (float32 NCHW, normalized) and ``y`` (int64)."""
    if not Path(path).is_file():
        raise AgentError(f"evaluation file not found: {path}", "copy the .npz with arrays x and y to the device")
    with np.load(path, allow_pickle=False) as data:
        if "x" not in data or "y" not in data:
            raise AgentError(f"{Path(path).name} lacks arrays 'x' and 'y' (has {list(data.keys())})", "re-create it")
        x, y = np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64)
    return (x[:limit], y[:limit]) if limit else (x, y)


# ----------------------------------------------------------------------------------------------------------------------
# CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit 2; we answer in JSON instead
        raise AgentError(f"bad agent arguments: {message}", "see python agent.py --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agent.py", description="Benchmark and evaluate one model artifact on this device.")
    p.add_argument("--artifact", required=True, type=Path, help="model file (.onnx, .ort, .xml, .engine, .pte)")
    p.add_argument("--runtime", required=True, help=f"one of {', '.join(RUNTIMES)}")
    p.add_argument("--eval", type=Path, help=".npz with x (float32 NCHW) and y (int64)")
    p.add_argument("--eval-samples", type=int, default=None, help="use the first N samples only")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--batch-sizes", default="1", help="comma-separated, e.g. 1,32 ('' = no latency)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per repeat")
    p.add_argument("--min-iters", type=int, default=10)
    p.add_argument("--max-iters", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--input-shape", default=None, help="C,H,W when there is no --eval and the model does not say")
    p.add_argument("--providers", default=None, help="onnxruntime: cpu,cuda,tensorrt")
    p.add_argument("--precision", default=None, help="openvino inference precision hint: f32, bf16, f16")
    p.add_argument("--recipe", type=Path, default=None, help="tensorrt: build recipe JSON for an ONNX artifact")
    p.add_argument("--power", action="store_true", help="sample tegrastats power (Jetson)")
    p.add_argument("--save-logits", type=Path, default=None, help="write evaluation logits to this .npy")
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here (atomically)")
    return p


def _runtime_options(args: argparse.Namespace) -> dict:
    opts: dict[str, Any] = {}
    if args.providers and args.runtime == "onnxruntime":
        opts["providers"] = [p for p in args.providers.split(",") if p]
    if args.precision and args.runtime == "openvino":
        opts["precision"] = args.precision
    if args.recipe and args.runtime == "tensorrt":
        opts["recipe"] = args.recipe
    return opts


def _bench_input(runtime: Runtime, batch: int, eval_x: np.ndarray | None, shape_arg: str | None) -> np.ndarray:
    if eval_x is not None and len(eval_x):
        return np.ascontiguousarray(eval_x[np.arange(batch) % len(eval_x)])
    if shape_arg:
        chw = tuple(int(s) for s in shape_arg.split(","))
    else:
        shape = runtime.input_shape() if hasattr(runtime, "input_shape") else ()
        chw = tuple(shape[1:])
        if not chw or any(d is None for d in chw):
            raise AgentError("the input shape is unknown", "pass --eval data.npz or --input-shape C,H,W")
    return np.random.default_rng(0).standard_normal((batch, *chw)).astype(np.float32)


def run_agent(args: argparse.Namespace, result: dict) -> None:
    """Do the work for :func:`main`, filling ``result`` as it goes so partial results survive a failure."""
    result["stage"] = "runtime"
    runtime = get_runtime(args.runtime, **_runtime_options(args))
    result["stage"] = "load"
    runtime.load(args.artifact, threads=args.threads)
    result["info"] = runtime.info()
    result["env"] = environment(result["info"], args.threads)
    eval_x = None
    if args.eval:
        result["stage"] = "eval"
        eval_x, eval_y = load_eval(args.eval, args.eval_samples)
        metrics, logits = evaluate(runtime, eval_x, eval_y, batch_size=args.eval_batch)
        result["metrics"] = metrics
        if args.save_logits:
            with open(args.save_logits.with_name(args.save_logits.name + ".tmp"), "wb") as fh:
                np.save(fh, logits)
            os.replace(args.save_logits.with_name(args.save_logits.name + ".tmp"), args.save_logits)
            result["logits_file"] = str(args.save_logits)
    result["stage"] = "bench"
    batches = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    for b in batches:
        x = _bench_input(runtime, b, eval_x, args.input_shape)
        m = measure(
            runtime,
            x,
            warmup=args.warmup,
            min_time_s=args.min_time,
            min_iters=args.min_iters,
            max_iters=args.max_iters,
            repeats=args.repeats,
            power=args.power,
        )
        result["bench"][str(b)] = m
        result["latency_ms"][str(b)] = {k: m[k] for k in ("p50", "p90", "p99", "mean", "std")}
        result["throughput"][str(b)] = m["throughput"]
        if m["energy_mj_per_inference"] is not None:
            result.setdefault("energy_mj_per_inference", {})[str(b)] = m["energy_mj_per_inference"]
    result["stage"] = "done"
    result["ok"] = True


def main(argv: list[str] | None = None) -> int:
    """Run the agent CLI; print one JSON object (also written to ``--out``); return the exit code."""
    result: dict[str, Any] = {"ok": False, "agent_version": AGENT_VERSION, "stage": "args", "error": None}
    result.update({"metrics": None, "latency_ms": {}, "throughput": {}, "bench": {}, "energy_mj_per_inference": None})
    code, out_path = EXIT_OK, None
    try:
        args = _parser().parse_args(argv)
        out_path = args.out
        result.update({"artifact": str(args.artifact), "runtime": args.runtime})
        run_agent(args, result)
    except RuntimeMissingError as exc:
        result.update({"error": str(exc), "error_type": "missing_runtime"})
        code = EXIT_MISSING_RUNTIME
    except AgentError as exc:
        result.update({"error": str(exc), "error_type": "usage" if result["stage"] == "args" else "agent"})
        code = EXIT_USAGE if result["stage"] == "args" else EXIT_FAILED
    except Exception as exc:  # the contract is JSON out, never a traceback
        msg = " ".join(str(exc).split())[:500]
        result.update({"error": f"{type(exc).__name__} during {result['stage']}: {msg}", "error_type": "crash"})
        code = EXIT_FAILED
    result["peak_rss_mb"] = peak_rss_mb()
    text = json.dumps(result, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    if out_path is not None:
        with contextlib.suppress(OSError):
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(Path(out_path), text.encode())
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
