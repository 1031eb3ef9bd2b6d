"""Shared helpers for ``benchmarks/deploy_speed.py`` and ``benchmarks/roofline.py`` (not part of the library).

What lives here: reading a finished run directory (run.json, the resolved config, the teacher and student state
dicts, the artifacts), a PyTorch adapter with the :class:`~edgecompress.devices.agent.Runtime` protocol so eager
models go through the same timing harness as the exported artifacts, round-robin measurement with that harness,
the arithmetic of the tables (paired speedups, MAC/s, fraction of peak), builders of the peak-GEMM ONNX models,
and a description of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ConfigError

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
# Run directory


@dataclass
class RunInfo:
    """A finished ``edgecompress run`` directory, read lazily."""

    root: Path
    state: dict[str, Any]
    cfg: Any  # edgecompress.config.PipelineConfig

    @cached_property
    def splits(self) -> Any:
        from edgecompress.data import load_splits

        return load_splits(self.cfg.data, seed=self.cfg.seed)

    def stage_file(self, stage: str, name: str) -> Path:
        """The newest ``stages/<stage>-*/<name>`` whose stage finished (has ``_done.json``)."""
        hits = [p for p in (self.root / "stages").glob(f"{stage}-*/{name}") if (p.parent / "_done.json").is_file()]
        if not hits:
            raise ConfigError(
                f"{self.root} has no finished '{stage}' stage with {name}",
                "run the pipeline to completion first: edgecompress run CONFIG --out DIR",
            )
        return max(hits, key=lambda p: p.stat().st_mtime)

    def build(self, spec: dict[str, Any], state_file: Path) -> Any:
        """Rebuild a model from a ModelSpec dict and load its (possibly pruned) state dict."""
        from edgecompress.models import ModelSpec, build_model, load_state

        c, h, w = self.splits.input_shape
        model = build_model(ModelSpec(**spec), in_channels=c, num_classes=self.splits.num_classes, input_size=(h, w))
        return load_state(model, state_file).eval()

    def teacher(self) -> Any:
        spec = self.cfg.teacher.model.model_dump(mode="json", exclude_none=True)
        return self.build(spec, self.stage_file("teacher", "teacher.pt"))

    def student(self) -> Any:
        """The calibrated student before T is folded (T only rescales the logits; timing is the same)."""
        return self.build(self.state["distill_spec"], self.stage_file("calibrate", "student.pt"))

    @property
    def temperature(self) -> float:
        return float((self.state.get("calibrate") or {}).get("temperature") or 1.0)

    def artifact_file(self, art: dict[str, Any]) -> Path:
        """The artifact's model file; a run directory that was moved is searched from its ``stages/`` part."""
        path = Path(art["model_file"])
        if path.is_file():
            return path
        parts = path.parts
        if "stages" in parts:
            moved = self.root.joinpath(*parts[parts.index("stages") :])
            if moved.is_file():
                return moved
        raise ConfigError(f"artifact {art.get('name')}: model file {path} not found", "re-run the export stage")

    def artifacts(self) -> list[dict[str, Any]]:
        """The exported artifacts that a runtime here can load (CPU runtimes: onnxruntime, openvino)."""
        return [a for a in self.state.get("artifacts", []) if a.get("runtime") in ("onnxruntime", "openvino")]


def load_run(run_dir: str | Path) -> RunInfo:
    """Read ``run.json`` and ``config.resolved.yaml`` of a finished run (one-line errors when it is not one)."""
    from edgecompress.config import load_config

    root = Path(run_dir).resolve()
    state_file, cfg_file = root / "run.json", root / "config.resolved.yaml"
    if not state_file.is_file() or not cfg_file.is_file():
        raise ConfigError(
            f"{root} is not a finished run directory (needs run.json and config.resolved.yaml)",
            "run `edgecompress run CONFIG --out DIR` (or `edgecompress demo`) first",
        )
    return RunInfo(root=root, state=json.loads(state_file.read_text()), cfg=load_config(cfg_file))


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
        from edgecompress.devices.runtimes import measure
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
    against ``m·k·n`` MACs for the sizes used.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
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
