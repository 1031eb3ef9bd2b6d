"""Shared helpers of ``benchmarks.deploy_speed``, ``benchmarks.roofline`` and ``benchmarks.int8_settings``.

What lives here: which of a run's artifacts run on this CPU (the run itself is read by the pipeline's own loader,
``edgecompress.pipeline.loaded.load_run``), a PyTorch adapter with the agent's ``Runtime`` protocol so eager models
go through the same timing harness as the exported artifacts, round-robin measurement with that harness, the
arithmetic of the tables (paired speedups, MAC/s, fraction of peak), builders of the peak-GEMM ONNX models, and a
description of the machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import ConfigError

if TYPE_CHECKING:
    from edgecompress.export import Artifact
    from edgecompress.pipeline.loaded import LoadedRun

# ----------------------------------------------------------------------------------------------------------------------
# Arithmetic


def parse_batches(text: str) -> list[int]:
    """``"1,32"`` -> ``[1, 32]``; anything that is not a list of positive ints is a :class:`ConfigError`."""
    try:
        out = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise ConfigError(f"bad --batches {text!r}", "give positive batch sizes separated by commas, e.g. 1,32")
    return sorted(set(out))


def gemm_macs(m: int, k: int, n: int) -> int:
    """Multiply-accumulates of ``[m, k] @ [k, n]``: every one of the ``m·n`` outputs sums ``k`` products."""
    return int(m) * int(k) * int(n)


def macs_per_second(macs_per_sample: float | None, samples_per_second: float | None) -> float | None:
    """Achieved MAC/s = MACs of one sample × samples per second (None when either is unknown)."""
    if macs_per_sample is None or samples_per_second is None:
        return None
    return float(macs_per_sample) * float(samples_per_second)


def fraction_of_peak(achieved: float | None, peak: float | None) -> float | None:
    """``achieved / peak`` (a fraction, not percent); None when unknown or the peak is not positive."""
    if achieved is None or peak is None or peak <= 0:
        return None
    return float(achieved) / float(peak)


def paired_speedup(reference_ms: Sequence[float], model_ms: Sequence[float]) -> float | None:
    """Median over rounds of ``reference[i] / model[i]``.

    Round ``i`` of both was measured back to back, so a noisy stretch of the machine slows both; the per-round ratio
    cancels most of it, and the median drops rounds where the noise hit only one of them.
    """
    pairs = [(r, m) for r, m in zip(reference_ms, model_ms, strict=False) if r and m and r > 0 and m > 0]
    if not pairs:
        return None
    return float(np.median([r / m for r, m in pairs]))


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    vals = [float(v) for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def precision_label(stored: str, used: str | None) -> str:
    """The artifact's stored precision, plus what the runtime reports it computes in when that differs.

    OpenVINO reports ``INFERENCE_PRECISION_HINT`` = bf16 on CPUs with AVX512-BF16/AMX: an FP32 IR then runs in
    bf16, while an INT8 IR runs its quantized layers in int8 and only the rest in bf16.
    """
    used = str(used).replace("<Type: '", "").replace("'>", "").replace("bfloat16", "bf16") if used else None
    if used in (None, "", "as-stored", "float16-io", stored) or (stored == "fp32" and used in ("f32", "float32")):
        return stored
    if stored == "int8":
        return f"int8 (other ops {used})"
    return f"{stored} (runs {used})"


def fmt(value: Any, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    """Format a number for a table cell; None becomes an em dash."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value * scale:{spec}}{suffix}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; cells are ``str()``-ed and pipes escaped."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# The machine


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, cores, ISA extensions that matter for GEMM, load average and library versions."""
    from importlib import metadata

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads_used": threads}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    fields = dict(re.findall(r"^([^:\n]+):\s*(.*)$", out, flags=re.M))
    info["cpu_model"] = fields.get("Model name") or platform.processor() or "unknown"
    for key in ("Core(s) per socket", "Socket(s)", "Thread(s) per core", "L2 cache", "L3 cache", "Hypervisor vendor"):
        if key in fields:
            info[key] = fields[key]
    flags = set(fields.get("Flags", "").split())
    info["isa"] = [
        f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "avx_vnni") if f in flags
    ]
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    for pkg in ("torch", "onnxruntime", "openvino", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line describing the machine for a table caption."""
    cores = info.get("Core(s) per socket")
    vm = f", {info['Hypervisor vendor']} VM" if "Hypervisor vendor" in info else ""
    isa = "/".join(info.get("isa", [])) or "?"
    return (
        f"{info.get('cpu_model')} ({cores or '?'} cores × {info.get('Socket(s)', '?')} socket, "
        f"{info.get('cpu_count')} logical CPUs{vm}; ISA {isa}; load avg {info.get('loadavg')}; "
        f"threads used {info.get('threads_used')}; torch {info.get('torch')}, onnxruntime {info.get('onnxruntime')}, "
        f"openvino {info.get('openvino')})"
    )


def set_torch_threads(threads: int | None) -> None:
    """Pin PyTorch's intra-op threads (inter-op only if it is still settable)."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
        with contextlib.suppress(RuntimeError):  # refused once parallel work started; harmless
            torch.set_num_interop_threads(1)


# ----------------------------------------------------------------------------------------------------------------------
# PyTorch behind the Runtime protocol


class TorchRuntime:
    """An in-memory ``nn.Module`` with the agent's ``Runtime`` protocol (eager, ``inference_mode``, FP32)."""

    name = "pytorch"

    def __init__(self, model: Any, *, threads: int | None = None) -> None:
        self._model = model.eval()
        self._threads = threads

    def load(self, path: Path | None = None, *, threads: int | None = None) -> None:  # the model is already in memory
        return None

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float().numpy()

    def info(self) -> dict:
        import torch

        return {
            "runtime": self.name,
            "version": torch.__version__,
            "precision": "fp32",
            "mode": "eager",
            "threads": torch.get_num_threads(),
        }


# ----------------------------------------------------------------------------------------------------------------------
# Run directory: read through the pipeline's own loader (edgecompress.pipeline.loaded.load_run)

CPU_RUNTIMES = ("onnxruntime", "openvino")


def cpu_artifacts(run: LoadedRun) -> list[Artifact]:
    """The run's exported artifacts that a runtime on this CPU can load (onnxruntime, openvino), failures left out."""
    return [a for a in run.artifacts if a.ok and a.runtime in CPU_RUNTIMES and a.model_file is not None]


def load_everywhere(path: Path, *, threads: int | None, what: str) -> list[tuple[str, Any]]:
    """``(runtime name, loaded runtime)`` for each CPU runtime that loads ``path``; one that cannot is skipped with a
    warning naming ``what`` (a benchmark still measures the rest)."""
    import logging

    from edgecompress.devices.host_runtimes import get_runtime
    from edgecompress.errors import EdgeCompressError

    out = []
    for rt_name in CPU_RUNTIMES:
        try:
            rt = get_runtime(rt_name)
            rt.load(path, threads=threads)
        except EdgeCompressError as exc:
            logging.getLogger("benchmarks").warning("%s %s skipped: %s", what, rt_name, exc)
            continue
        out.append((rt_name, rt))
    return out


def artifact_named(run: LoadedRun, name: str) -> Artifact | None:
    """The run's artifact called ``name`` (None when the run did not export it)."""
    return next((a for a in run.artifacts if a.name == name and a.ok), None)


# ----------------------------------------------------------------------------------------------------------------------
# Round-robin measurement with the device harness


@dataclass
class Entry:
    """One thing to time: a label, a loaded runtime, and what the tables say about it."""

    name: str
    runtime: Any
    precision: str
    macs: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class CpuTimer:
    """Wraps a runtime and records the process CPU time of each ``run`` call (``time.process_time``).

    On a shared machine a call longer than a scheduler time slice waits for the CPU part of its wall time; the
    process's CPU time does not include that wait. With one compute thread per runtime (``--threads 1``) it is the
    compute cost of the call, independent of the neighbours' load. (Idle-spinning worker threads would inflate it:
    none are started at one thread.)
    """

    def __init__(self, runtime: Any) -> None:
        self.inner, self.cpu_ms = runtime, []
        self.name = getattr(runtime, "name", "runtime")

    def run(self, x: np.ndarray) -> np.ndarray:
        t0 = time.process_time()
        out = self.inner.run(x)
        self.cpu_ms.append((time.process_time() - t0) * 1e3)
        return out

    def load(self, *args: Any, **kwargs: Any) -> None:
        self.inner.load(*args, **kwargs)

    def info(self) -> dict:
        return self.inner.info()


def round_robin(
    entries: Sequence[Entry],
    inputs: dict[int, np.ndarray],
    *,
    rounds: int,
    min_time_s: float,
    warmup: int = 5,
    measure: Callable[..., dict] | None = None,
) -> dict[tuple[str, int], list[dict]]:
    """Time every entry at every batch, ``rounds`` times, interleaved: round r runs all entries once each.

    Each slot is one call of the harness (``edgecompress.devices.agent.measure`` with ``repeats=1``): warm-up, a
    minimum measuring time, percentiles after outlier clipping. The entry order rotates every round so no entry
    always follows the same neighbour. Returns ``{(name, batch): [measure-result per round]}``.
    """
    if measure is None:
        from edgecompress.devices.host_runtimes import measure
    out: dict[tuple[str, int], list[dict]] = {(e.name, b): [] for e in entries for b in inputs}
    timers = {e.name: CpuTimer(e.runtime) for e in entries}
    for r in range(rounds):
        order = list(entries[r % len(entries) :]) + list(entries[: r % len(entries)])
        for batch, x in inputs.items():
            for e in order:
                timer = timers[e.name]
                timer.cpu_ms = []
                res = dict(measure(timer, x, warmup=warmup, min_time_s=min_time_s, min_iters=5, repeats=1))
                cpu = timer.cpu_ms[-int(res.get("iterations") or len(timer.cpu_ms)) :]
                if cpu:
                    res["cpu_p50"], res["cpu_min"] = float(np.median(cpu)), float(np.min(cpu))
                out[(e.name, batch)].append(res)
    return out


def summarize_rounds(results: list[dict], reference: list[dict] | None = None) -> dict[str, Any]:
    """Median over rounds of p50, p90 and throughput, the spread of p50, and the paired speedup over ``reference``."""
    p50 = [r["p50"] for r in results]
    summary = {
        "p50": median_or_none(p50),
        "p90": median_or_none([r["p90"] for r in results]),
        "throughput": median_or_none([r["throughput"] for r in results]),
        "spread": (max(p50) - min(p50)) / float(np.median(p50)) if p50 and np.median(p50) > 0 else None,
        "rounds": len(results),
    }
    summary["cpu_p50"] = median_or_none([r.get("cpu_p50") for r in results])
    if reference is not None:
        summary["speedup"] = paired_speedup([r["p50"] for r in reference], p50)
        summary["speedup_cpu"] = paired_speedup(
            [r.get("cpu_p50") or 0.0 for r in reference], [r.get("cpu_p50") or 0.0 for r in results]
        )
    return summary


# ----------------------------------------------------------------------------------------------------------------------
# Peak-GEMM ONNX models


def gemm_fp32_model(m: int, k: int, n: int, *, seed: int = 0) -> Any:
    """ONNX ``Y[m,n] = X[m,k] @ W[k,n]`` in FP32 with ``W`` a constant initializer (the shape of a linear layer)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.random.default_rng(seed).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")],
        "gemm_fp32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def gemm_int8_qdq_model(m: int, k: int, n: int, *, seed: int = 0) -> Any:
    """ONNX INT8 GEMM in the QDQ form the pipeline exports: uint8 activations, per-channel int8 weights.

    ``x -> QuantizeLinear(u8) -> DequantizeLinear -> MatMul <- DequantizeLinear(W int8, per column)``. ONNX Runtime
    fuses the pattern into an integer GEMM (QLinearMatMul / MatMulIntegerToFloat), OpenVINO into an INT8 FullyConnected;
    the float input keeps the agent's ``run(float32)`` contract. The quantize of ``x`` costs ``m·k``, negligible
    against ``m·k·n`` MACs for the sizes used. Weights are drawn from 7 bits (``[-63, 63]``): on x86 CPUs without
    VNNI the u8×s8 kernel adds pairs of products in int16 with saturation (``vpmaddubsw``), which full-range weights
    overflow (2·255·127 > 32767); the speed is the same, and the numbers stay exact on every CPU.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.integers(-63, 64, (k, n), dtype=np.int8)
    w_scale = (rng.random(n).astype(np.float32) + 0.5) / 127.0
    inits = [
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(4.0 / 255.0, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="quant_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dequant_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="dequant_w", axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm_int8_qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def identity_model(sample_shape: Sequence[int]) -> Any:
    """ONNX ``y = x`` for float32 inputs ``[N, *sample_shape]``: a runtime's per-call floor for that input.

    What a call costs when the model does nothing: binding the input, the runtime's bookkeeping and copying the
    output back. A model cannot take less than this in the same runtime at the same batch.
    """
    import onnx
    from onnx import TensorProto, helper

    shape: list[Any] = ["N", *map(int, sample_shape)]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="identity")],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model: Any, path: Path) -> Path:
    """Write an ONNX model atomically."""
    import onnx

    from edgecompress._io import atomic_path

    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def run_and_print(run: Callable[[Any], dict], render: Callable[[dict], str], args: Any) -> int:
    """A benchmark script's main: run it, print its markdown, write ``--json``; a user error is one line, exit 2."""
    import logging
    import sys

    from edgecompress.errors import EdgeCompressError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        report = run(args)
    except EdgeCompressError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(report))
    if args.json:
        from edgecompress._io import atomic_write_json

        atomic_write_json(args.json, report)
    return 0
