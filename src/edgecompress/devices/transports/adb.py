"""The adb transport: ``adb push`` / ``shell`` / ``pull`` to a phone.

Phones have no Python: the profile names the runtime's own benchmark binary (``onnxruntime_perf_test`` or ExecuTorch's
``executor_runner``) for latency, and accuracy and calibration are then measured on the host runtime (the row says
so). A phone that has Python and the runtime (``has_python: true``) runs the agent like any other device.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecompress._registry import TRANSPORTS
from edgecompress.devices.config import DeviceProfile
from edgecompress.devices.transports.base import (
    RUN_IN_DIR,
    AgentJob,
    TransientTransportError,
    Transport,
    run_program,
    tail,
)
from edgecompress.errors import TransportError

log = logging.getLogger(__name__)

_ORT_PERF = {
    "mean": re.compile(r"Average inference time cost:\s*([\d.eE+-]+)\s*ms"),
    "p50": re.compile(r"P50 Latency:\s*([\d.eE+-]+)\s*s"),
    "p90": re.compile(r"P90 Latency:\s*([\d.eE+-]+)\s*s"),
    "p99": re.compile(r"P99 Latency:\s*([\d.eE+-]+)\s*s"),
    "iterations": re.compile(r"Total inference requests:\s*(\d+)"),
    "peak_rss_bytes": re.compile(r"Peak working set size:\s*(\d+)\s*bytes"),
}
_ET_RUN = re.compile(r"executed successfully\s+(\d+)\s+time\(s\) in\s+([\d.eE+-]+)\s*ms")


def parse_benchmark_output(kind: str, text: str, batch: int) -> dict[str, Any]:
    """Latency figures from a runtime's own benchmark binary (``onnxruntime_perf_test`` or ExecuTorch
    ``executor_runner``), in ms. Only what the binary printed is reported; missing figures are ``None``.
    """
    if kind == "onnxruntime_perf_test":
        found = {k: (float(m.group(1)) if (m := rx.search(text)) else None) for k, rx in _ORT_PERF.items()}
        stats = {k: v * 1e3 if (v := found[k]) is not None else None for k in ("p50", "p90", "p99")}
        stats["mean"] = found["mean"]
        iters = int(found["iterations"]) if found["iterations"] is not None else None
        peak = found["peak_rss_bytes"] / 2**20 if found["peak_rss_bytes"] else None
    elif kind == "executor_runner":
        m = _ET_RUN.search(text)
        iters = int(m.group(1)) if m else None
        total = float(m.group(2)) if m else None
        stats = {"p50": None, "p90": None, "p99": None, "mean": total / iters if total is not None and iters else None}
        peak = None
    else:
        raise TransportError(f"unknown benchmark binary kind '{kind}'", "use onnxruntime_perf_test or executor_runner")
    if stats["mean"] is None:
        raise TransportError(f"could not parse {kind} output: {tail(text, 300)!r}", "check the binary and its args")
    return {
        "batch": batch,
        **stats,
        "std": None,
        "iterations": iters,
        "throughput": batch / (stats["mean"] / 1e3) if stats["mean"] else None,
        "peak_rss_mb": peak,
        "source": kind,
    }


def _batch_dim_name(model_file: Path) -> str | None:
    """The symbolic batch dimension of an ONNX model's first input (for ``onnxruntime_perf_test -f name:N``)."""
    if model_file.suffix.lower() != ".onnx":
        return None
    try:
        import onnx

        dim = onnx.load(str(model_file), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    except Exception:  # an unreadable model fails later, on the device, with the binary's own message
        return None
    return dim.dim_param or None


@TRANSPORTS.register("adb", summary="Android: adb push / shell / pull; the runtime's benchmark binary without Python")
class ADBTransport(Transport):
    """adb push / shell / pull. Without Python on the device, latency comes from the runtime's benchmark binary and
    accuracy/calibration are marked as measured on the host runtime (``calibration_measured_on``).

    Args:
        profile: the device profile (``serial``; ``benchmark_binary`` and ``binary_kind`` without Python).
        adb: the adb client to run (tests).
    """

    _TRANSIENT = ("device offline", "no devices", "not found", "closed", "unauthorized", "protocol fault")

    def __init__(self, profile: DeviceProfile, *, adb: str = "adb") -> None:
        super().__init__(profile)
        self.adb = shutil.which(adb) or adb

    def _call(self, args: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess[str]:
        argv = [self.adb, *(["-s", self.profile.serial] if self.profile.serial else []), *args]
        proc = run_program(argv, timeout_s=timeout_s, what=f"adb {what}", fix="install Android platform-tools (adb)")
        if proc.returncode != 0 and args[0] in ("push", "pull"):
            raise TransientTransportError(f"adb {what} failed: {tail(proc.stderr or proc.stdout, 300)}")
        if proc.returncode != 0 and any(s in (proc.stderr or "") for s in self._TRANSIENT):
            raise TransientTransportError(f"adb {what}: {tail(proc.stderr, 300)}")
        return proc

    def execute(self, words: Sequence[str], *, cwd: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
        full = list(words) if cwd is None else ["sh", "-c", RUN_IN_DIR, "sh", cwd, *words]
        # adb joins its arguments and the device's shell parses them: pass one string with every word quoted
        return self._call(["shell", shlex.join(full)], timeout_s, Path(str(words[0])).name)

    def push(self, files: Sequence[Path], rdir: str, *, timeout_s: float) -> None:
        self._call(["push", *[str(f) for f in files], rdir + "/"], timeout_s, "push")

    def pull(self, name: str, rdir: str, local_dir: Path, *, timeout_s: float) -> None:
        self._call(["pull", f"{rdir}/{name}", str(local_dir / name)], timeout_s, f"pull {name}")

    def env(self, *, timeout_s: float) -> dict[str, Any]:
        model = self._call(["shell", shlex.join(["getprop", "ro.product.model"])], timeout_s, "getprop").stdout.strip()
        return {"transport": "adb", "device_model": model or None}

    def run_agent(self, job: AgentJob, rdir: str, local_dir: Path, *, timeout_s: float) -> dict[str, Any]:
        if self.profile.has_python:
            return super().run_agent(job, rdir, local_dir, timeout_s=timeout_s)
        return self._run_binary(job, rdir, local_dir, timeout_s)

    def _run_binary(self, job: AgentJob, rdir: str, local_dir: Path, timeout_s: float) -> dict[str, Any]:
        p = self.profile
        if not p.benchmark_binary or not p.binary_kind:
            raise TransportError(
                f"device '{p.name}' has no Python and no benchmark_binary/binary_kind",
                "set benchmark_binary (e.g. onnxruntime_perf_test) and binary_kind in the profile, or has_python: true",
            )
        if p.benchmark_binary_local:
            self._call(
                ["push", str(Path(p.benchmark_binary_local).expanduser()), p.benchmark_binary], timeout_s, "push"
            )
            self.execute(["chmod", "755", p.benchmark_binary], cwd=None, timeout_s=timeout_s)
        self.push(job.files, rdir, timeout_s=timeout_s)
        result: dict[str, Any] = {
            "ok": True,
            "runtime": job.runtime,
            "metrics": None,
            "calibration_measured_on": "host runtime",
            "env": {**self.env(timeout_s=timeout_s), "binary": p.benchmark_binary},
            "latency_ms": {},
            "throughput": {},
            "bench": {},
            "errors": [],
        }
        dim = _batch_dim_name(job.model_file)
        batches = job.batch_sizes if p.binary_kind == "onnxruntime_perf_test" and dim else job.batch_sizes[:1]
        for b in batches:
            self._time_batch(job, b, dim, rdir, local_dir, timeout_s, result)
        return result

    def _time_batch(self, job: AgentJob, b: int, dim: str | None, rdir: str, local_dir: Path, timeout_s: float,
                    result: dict[str, Any]) -> None:  # fmt: skip
        """One batch size through the benchmark binary; its figures (or its failure) go into ``result``."""
        p = self.profile
        assert p.benchmark_binary is not None and p.binary_kind is not None
        if p.binary_kind == "onnxruntime_perf_test":
            args = ["-e", "cpu", "-m", "times", "-r", str(job.iterations), "-I"]
            args += ["-x", str(job.threads)] if job.threads else []
            args += ["-f", f"{dim}:{b}"] if dim else []
            args.append(job.model_file.name)
        else:
            args = ["--model_path", job.model_file.name, "--num_executions", str(job.iterations)]
        out_name = f"bench-b{b}.txt"
        script = 'cd "$1" && out="$2" && shift 2 && "$@" > "$out" 2>&1'
        proc = self.execute(["sh", "-c", script, "sh", rdir, out_name, p.benchmark_binary, *args], cwd=None,
                            timeout_s=timeout_s)  # fmt: skip
        self.pull(out_name, rdir, local_dir, timeout_s=timeout_s)
        local_out = local_dir / out_name
        text = local_out.read_text(errors="replace") if local_out.is_file() else ""
        try:
            if proc.returncode != 0:
                raise TransportError(f"{p.binary_kind} exited with {proc.returncode}: {tail(text, 300)}")
            m = parse_benchmark_output(p.binary_kind, text, b)
        except TransportError as exc:
            result["ok"] = False
            result["errors"].append(f"batch {b}: {exc}")
            result["error"] = str(exc)
            return
        result["bench"][str(b)] = m
        result["latency_ms"][str(b)] = {k: m[k] for k in ("p50", "p90", "p99", "mean", "std")}
        result["throughput"][str(b)] = m["throughput"]
