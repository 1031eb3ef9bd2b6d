"""Transports: how the agent reaches a device (this machine, SSH, adb) and how its JSON comes back.

Every external program is run with an argument list, never a shell string. The one place a shell is unavoidable is
the *remote* command of ``ssh`` and ``adb shell``: the remote side joins the words and hands them to its shell. There,
every word is quoted with :func:`shlex.quote` (via :func:`shlex.join`), and host/user names are validated by
:class:`~edgecompress.devices.config.DeviceProfile` (no leading ``-``, a small charset) so that they cannot be read
as ssh options. Host keys are always checked (``StrictHostKeyChecking=yes`` against the profile's known_hosts file)
and only key authentication is tried (``BatchMode=yes``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.devices.config import DeviceProfile
from edgecompress.errors import DeviceError, TransportError

log = logging.getLogger(__name__)

AGENT_PATH = Path(__file__).with_name("agent.py")
RESULT_NAME, LOGITS_NAME = "result.json", "logits.npy"
# Runs "$@" inside "$1" on the device. No `exec`: the shell waits and turns a signal death into exit code 128+n, so
# ssh's own 255 keeps meaning "the connection failed" (ssh reports a remote signal death as 255 too).
_RUN_IN_DIR = 'cd "$1" && shift && "$@"'


class TransientTransportError(TransportError):
    """A failure worth retrying: a timeout, a refused or dropped connection, an offline adb device."""


@dataclass(frozen=True)
class AgentJob:
    """One agent run: an artifact's files, the runtime, the evaluation file and the timing options (no paths)."""

    model_file: Path
    files: tuple[Path, ...]
    runtime: str
    eval_file: Path | None
    agent_args: tuple[str, ...] = ()
    save_logits: bool = False
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None


@dataclass
class Outcome:
    """What a transport brought back: the agent's JSON (or a failure), attempts, and why each failed attempt failed."""

    result: dict[str, Any]
    attempts: int = 1
    failures: list[str] = field(default_factory=list)


def _tail(text: str | bytes | None, n: int = 1500) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-n:].strip()


def _parse_result(out_file: Path, stdout: str, rc: int, stderr: str) -> dict[str, Any]:
    """The agent's JSON from its --out file or the last JSON line of stdout; a crash becomes ok:false."""
    candidates = [out_file.read_text()] if out_file.is_file() else []
    candidates += [ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")]
    for text in candidates:
        try:
            result = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict):
            if stderr.strip():
                result.setdefault("stderr_tail", _tail(stderr))
            return result
    return {
        "ok": False,
        "error": f"the agent exited with code {rc} without a result; stderr: {_tail(stderr, 600) or '(empty)'}",
        "error_type": "crash",
        "stderr_tail": _tail(stderr),
    }


def agent_argv(job: AgentJob, *, model: str, eval_file: str | None, out: str, logits: str | None) -> list[str]:
    """The agent's arguments for a job; paths are given as the target will see them."""
    argv = ["--artifact", model, "--runtime", job.runtime, *job.agent_args, "--out", out]
    if eval_file:
        argv += ["--eval", eval_file]
    if logits and eval_file:
        argv += ["--save-logits", logits]
    return argv


def with_retries(attempt: Callable[[], dict[str, Any]], *, retries: int, backoff_s: float, what: str) -> Outcome:
    """Call ``attempt`` until it returns; retry :class:`TransientTransportError` with exponential back-off.

    A permanent :class:`TransportError` (host key refused, authentication failed) is not retried. After the last
    attempt the failure becomes an ``ok: false`` result that says what failed on each attempt.
    """
    failures: list[str] = []
    for i in range(retries + 1):
        try:
            result = attempt()
            return Outcome(result=result, attempts=i + 1, failures=failures)
        except TransientTransportError as exc:
            failures.append(f"attempt {i + 1}: {exc}")
            log.warning("%s: %s", what, exc)
            if i < retries:
                time.sleep(backoff_s * (2**i))
        except TransportError as exc:
            failures.append(f"attempt {i + 1}: {exc}")
            return Outcome(_failed(what, failures, "transport"), attempts=i + 1, failures=failures)
    return Outcome(_failed(what, failures, "transport"), attempts=retries + 1, failures=failures)


def _failed(what: str, failures: list[str], kind: str) -> dict[str, Any]:
    return {"ok": False, "error": f"{what} failed after {len(failures)} attempt(s): {failures[-1]}", "error_type": kind}


def local_command(name: str) -> str:
    """An executable for this machine as an absolute path: ``name`` itself when absolute, else looked up on PATH
    (a PATH entry that is relative, e.g. ``.``, is skipped: nothing resolves against the current folder)."""
    if os.path.isabs(name):
        return name
    dirs = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if os.path.isabs(d)]
    found = shutil.which(name, path=os.pathsep.join(dirs))
    if found is None or not os.path.isabs(found):
        raise DeviceError(
            f"the local profile's python {name!r} is not on PATH", "give an interpreter on PATH or an absolute path"
        )
    return found


class LocalTransport:
    """Runs the agent on this machine as a subprocess of ``sys.executable`` (isolates thread settings per run)."""

    def __init__(self, profile: DeviceProfile, *, python: str | None = None) -> None:
        self.profile = profile
        # the host's own interpreter unless the local profile names another one (e.g. a wrapper script)
        self.python = python or (local_command(profile.python) if "python" in profile.model_fields_set else
                                 sys.executable)  # fmt: skip

    def run(self, job: AgentJob, *, local_dir: Path, timeout_s: float) -> dict[str, Any]:
        local_dir = Path(local_dir).resolve()  # the agent runs with cwd=local_dir: every path must be absolute
        local_dir.mkdir(parents=True, exist_ok=True)
        out, logits = local_dir / RESULT_NAME, local_dir / LOGITS_NAME
        out.unlink(missing_ok=True)
        args = agent_argv(
            job,
            model=str(Path(job.model_file).resolve()),
            eval_file=str(Path(job.eval_file).resolve()) if job.eval_file else None,
            out=str(out),
            logits=str(logits) if job.save_logits else None,
        )
        try:
            proc = subprocess.run(  # noqa: S603 (argument list, our own interpreter and agent)
                [self.python, str(AGENT_PATH), *args], capture_output=True, text=True, timeout=timeout_s, cwd=local_dir
            )
        except subprocess.TimeoutExpired as exc:
            raise TransientTransportError(f"the local agent did not finish within {timeout_s:g} s") from exc
        return _parse_result(out, proc.stdout, proc.returncode, proc.stderr)


def _shipped_files(job: AgentJob) -> list[str]:
    """What goes to a remote device: the agent, the artifact's files and the evaluation subset."""
    return [str(AGENT_PATH), *[str(f) for f in job.files], *([str(job.eval_file)] if job.eval_file else [])]


def _remote_agent_words(python: str, job: AgentJob) -> list[str]:
    """The agent's command line on the device, with file names relative to the per-run folder."""
    return [python, "agent.py"] + agent_argv(
        job,
        model=job.model_file.name,
        eval_file=job.eval_file.name if job.eval_file else None,
        out=RESULT_NAME,
        logits=LOGITS_NAME if job.save_logits else None,
    )


class SSHTransport:
    """OpenSSH ``ssh``/``scp``: copy agent, artifact and eval data into a per-run remote dir, run, fetch the JSON."""

    _PERMANENT = ("Host key verification failed", "Permission denied", "REMOTE HOST IDENTIFICATION HAS CHANGED")

    def __init__(self, profile: DeviceProfile, *, ssh: str = "ssh", scp: str = "scp") -> None:
        if not profile.host:
            raise TransportError(f"device '{profile.name}' has transport ssh but no host", "set host: in the profile")
        if profile.host.startswith("-") or (profile.user or "").startswith("-"):
            raise TransportError("host and user must not start with '-'", "fix the device profile")  # belt and braces
        for key in ("identity_file", "known_hosts_file"):
            given = getattr(profile, key)
            if given is not None and not Path(given).expanduser().is_file():
                raise TransportError(
                    f"device '{profile.name}': {key} {given} does not exist or is not a file",
                    f"fix {key} in the device profile (an absolute path to a readable file)",
                )
        self.profile = profile
        self.ssh, self.scp = shutil.which(ssh) or ssh, shutil.which(scp) or scp
        self.dest = f"{profile.user}@{profile.host}" if profile.user else profile.host

    def _options(self) -> list[str]:
        p = self.profile
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
        opts += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2"]
        if p.known_hosts_file:
            opts += ["-o", f"UserKnownHostsFile={Path(p.known_hosts_file).expanduser()}"]
        if p.identity_file:
            opts += ["-i", str(Path(p.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
        return opts

    def _call(self, argv: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)  # noqa: S603 (argv list)
        except subprocess.TimeoutExpired as exc:
            raise TransientTransportError(f"{what} on {self.dest} timed out after {timeout_s:g} s") from exc
        except OSError as exc:
            raise TransportError(f"cannot start {argv[0]}: {exc}", "install the OpenSSH client") from exc
        if proc.returncode == 255:  # ssh's own failure (connection), not the remote command's exit code
            err = _tail(proc.stderr, 400)
            if any(s in err for s in self._PERMANENT):
                raise TransportError(
                    f"{what}: ssh to {self.dest} refused: {err}",
                    "check the device's host key in known_hosts_file and the identity_file",
                )
            raise TransientTransportError(
                f"{what}: ssh connection to {self.dest} port {self.profile.port} failed: {err or 'code 255'}",
                "check that the device is on and reachable and that sshd listens on that port",
            )
        return proc

    def _remote(self, words: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
        # the remote sshd hands this string to the user's shell: shlex.join quotes every word
        cmd = [self.ssh, *self._options(), "-p", str(self.profile.port), "--", self.dest, shlex.join(words)]
        return self._call(cmd, timeout_s, what)

    def _scp(self, sources: list[str], target: str, timeout_s: float, what: str) -> None:
        proc = self._call(
            [self.scp, *self._options(), "-B", "-q", "-P", str(self.profile.port), "--", *sources, target],
            timeout_s,
            what,
        )
        if proc.returncode != 0:
            raise TransientTransportError(f"{what} failed: {_tail(proc.stderr, 400) or proc.returncode}")

    def run(self, job: AgentJob, *, local_dir: Path, timeout_s: float) -> dict[str, Any]:
        local_dir.mkdir(parents=True, exist_ok=True)
        rdir = f"{self.profile.workdir.rstrip('/')}/run-{uuid.uuid4().hex[:12]}"
        self._remote(["mkdir", "-p", rdir], timeout_s, "mkdir")
        try:
            self._scp(_shipped_files(job), f"{self.dest}:{rdir}/", timeout_s, "copy to device")
            words = _remote_agent_words(self.profile.python, job)
            proc = self._remote(["sh", "-c", _RUN_IN_DIR, "sh", rdir, *words], timeout_s, "agent")
            out = local_dir / RESULT_NAME
            out.unlink(missing_ok=True)
            fetch = [f"{self.dest}:{rdir}/{RESULT_NAME}"]
            try:
                self._scp(fetch, str(local_dir) + "/", timeout_s, "fetch result")
            except TransientTransportError:
                if proc.returncode == 0:
                    raise
            result = _parse_result(out, proc.stdout, proc.returncode, proc.stderr)
            if result.get("logits_file"):
                self._scp([f"{self.dest}:{rdir}/{LOGITS_NAME}"], str(local_dir) + "/", timeout_s, "fetch logits")
                result["logits_file"] = str(local_dir / LOGITS_NAME)
            return result
        finally:
            try:
                self._remote(["rm", "-rf", rdir], 30, "cleanup")
            except TransportError as exc:  # the run's outcome matters more than a leftover temp dir
                log.info("could not remove %s on %s: %s", rdir, self.dest, exc)


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
        raise TransportError(f"could not parse {kind} output: {_tail(text, 300)!r}", "check the binary and its args")
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


class ADBTransport:
    """adb push / shell / pull. Without Python on the device, latency comes from the runtime's benchmark binary and
    accuracy/calibration are marked as measured on the host runtime (``calibration_measured_on``)."""

    _TRANSIENT = ("device offline", "no devices", "not found", "closed", "unauthorized", "protocol fault")

    def __init__(self, profile: DeviceProfile, *, adb: str = "adb", iterations: int = 50) -> None:
        self.profile = profile
        self.adb = shutil.which(adb) or adb
        self.iterations = iterations

    def _call(self, args: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
        argv = [self.adb, *(["-s", self.profile.serial] if self.profile.serial else []), *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)  # noqa: S603 (argv list)
        except subprocess.TimeoutExpired as exc:
            raise TransientTransportError(f"adb {what} timed out after {timeout_s:g} s") from exc
        except OSError as exc:
            raise TransportError(f"cannot start adb: {exc}", "install Android platform-tools (adb)") from exc
        if proc.returncode != 0 and args[0] in ("push", "pull"):
            raise TransientTransportError(f"adb {what} failed: {_tail(proc.stderr or proc.stdout, 300)}")
        if proc.returncode != 0 and any(s in (proc.stderr or "") for s in self._TRANSIENT):
            raise TransientTransportError(f"adb {what}: {_tail(proc.stderr, 300)}")
        return proc

    def _shell(self, words: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
        # adb joins its arguments and the device's shell parses them: pass one string with every word quoted
        return self._call(["shell", shlex.join(words)], timeout_s, what)

    def run(self, job: AgentJob, *, local_dir: Path, timeout_s: float) -> dict[str, Any]:
        local_dir.mkdir(parents=True, exist_ok=True)
        rdir = f"{self.profile.workdir.rstrip('/')}/run-{uuid.uuid4().hex[:12]}"
        self._shell(["mkdir", "-p", rdir], timeout_s, "mkdir")
        try:
            if self.profile.has_python:
                return self._run_agent(job, rdir, local_dir, timeout_s)
            return self._run_binary(job, rdir, local_dir, timeout_s)
        finally:
            try:
                self._shell(["rm", "-rf", rdir], 30, "cleanup")
            except TransportError as exc:
                log.info("could not remove %s on the device: %s", rdir, exc)

    def _run_agent(self, job: AgentJob, rdir: str, local_dir: Path, timeout_s: float) -> dict[str, Any]:
        self._call(["push", *_shipped_files(job), rdir + "/"], timeout_s, "push")
        words = _remote_agent_words(self.profile.python, job)
        proc = self._shell(["sh", "-c", _RUN_IN_DIR, "sh", rdir, *words], timeout_s, "agent")
        out = local_dir / RESULT_NAME
        out.unlink(missing_ok=True)
        try:
            self._call(["pull", f"{rdir}/{RESULT_NAME}", str(out)], timeout_s, "pull")
        except TransientTransportError:
            if proc.returncode == 0:
                raise
        result = _parse_result(out, proc.stdout, proc.returncode, proc.stderr)
        if result.get("logits_file"):
            self._call(["pull", f"{rdir}/{LOGITS_NAME}", str(local_dir / LOGITS_NAME)], timeout_s, "pull logits")
            result["logits_file"] = str(local_dir / LOGITS_NAME)
        return result

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
            self._shell(["chmod", "755", p.benchmark_binary], timeout_s, "chmod")
        self._call(["push", *[str(f) for f in job.files], rdir + "/"], timeout_s, "push")
        props = self._shell(["getprop", "ro.product.model"], timeout_s, "getprop").stdout.strip()
        result: dict[str, Any] = {
            "ok": True,
            "runtime": job.runtime,
            "metrics": None,
            "calibration_measured_on": "host runtime",
            "env": {"device_model": props or None, "transport": "adb", "binary": p.benchmark_binary},
            "latency_ms": {},
            "throughput": {},
            "bench": {},
            "errors": [],
        }
        dim = _batch_dim_name(job.model_file)
        batches = job.batch_sizes if p.binary_kind == "onnxruntime_perf_test" and dim else job.batch_sizes[:1]
        for b in batches:
            if p.binary_kind == "onnxruntime_perf_test":
                args = ["-e", "cpu", "-m", "times", "-r", str(self.iterations), "-I"]
                args += ["-x", str(job.threads)] if job.threads else []
                args += ["-f", f"{dim}:{b}"] if dim else []
                args.append(job.model_file.name)
            else:
                args = ["--model_path", job.model_file.name, "--num_executions", str(self.iterations)]
            out_name = f"bench-b{b}.txt"
            script = 'cd "$1" && out="$2" && shift 2 && "$@" > "$out" 2>&1'
            proc = self._shell(["sh", "-c", script, "sh", rdir, out_name, p.benchmark_binary, *args], timeout_s, "run")
            local_out = local_dir / out_name
            self._call(["pull", f"{rdir}/{out_name}", str(local_out)], timeout_s, "pull")
            text = local_out.read_text(errors="replace") if local_out.is_file() else ""
            try:
                if proc.returncode != 0:
                    raise TransportError(f"{p.binary_kind} exited with {proc.returncode}: {_tail(text, 300)}")
                m = parse_benchmark_output(p.binary_kind, text, b)
            except TransportError as exc:
                result["ok"] = False
                result["errors"].append(f"batch {b}: {exc}")
                result["error"] = str(exc)
                continue
            result["bench"][str(b)] = m
            result["latency_ms"][str(b)] = {k: m[k] for k in ("p50", "p90", "p99", "mean", "std")}
            result["throughput"][str(b)] = m["throughput"]
        return result


def make_transport(profile: DeviceProfile, **options: Any) -> LocalTransport | SSHTransport | ADBTransport:
    """The transport a profile names (``local``, ``ssh``, ``adb``)."""
    table: dict[str, Callable[..., Any]] = {"local": LocalTransport, "ssh": SSHTransport, "adb": ADBTransport}
    return table[profile.transport](profile, **options)
