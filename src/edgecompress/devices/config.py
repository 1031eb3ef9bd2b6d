"""Benchmark and device-profile configuration (pydantic + stdlib only, so ``edgecompress.config`` stays light)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from edgecompress._schema import StrictModel

# Host and user names end up on an ssh command line: a leading '-' would be read as an option, and shell
# metacharacters would reach the remote shell. Only these characters are accepted.
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\[\]%-]{1,253}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}$")
_WORKDIR_RE = re.compile(r"^/[A-Za-z0-9_./-]*$")
_FORMAT_RE = re.compile(r"^[a-z0-9_]+(:[a-z0-9_*]+)?$")
# An executable a profile names (python, benchmark_binary): a bare command name, looked up on PATH (never in the
# current folder), or an absolute path — never a relative path, which would resolve against wherever the tool runs.
_COMMAND_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_ABS_COMMAND_RE = re.compile(r"^/[A-Za-z0-9_./+-]*$")


class BenchmarkConfig(StrictModel):
    """The ``benchmark:`` section: which devices, how to time, how much evaluation data to ship."""

    devices: list[str] = Field(default=["local"], description="device profile names or paths to profile YAML files")
    batch_sizes: list[int] = Field(default=[1, 32], description="batch sizes to time")
    warmup_iters: int = Field(default=5, ge=0, description="untimed calls before timing")
    min_time_s: float = Field(default=0.3, ge=0.0, description="minimum timed seconds per repeat")
    min_iters: int = Field(default=10, ge=1, description="minimum timed calls per repeat")
    max_iters: int = Field(default=10_000, ge=1, description="cap on timed calls per repeat")
    repeats: int = Field(default=3, ge=1, description="timing rounds; their spread is reported")
    threads: int | None = Field(default=None, ge=1, description="runtime intra-op threads (None = runtime default)")
    eval_samples: int = Field(default=2000, ge=1, description="test samples shipped to devices for accuracy/ECE")
    timeout_s: float = Field(default=600.0, gt=0, description="wall-clock limit of one agent run on a device")
    retries: int = Field(default=2, ge=0, description="retries after a timeout or dropped connection")
    backoff_s: float = Field(default=1.0, ge=0, description="first retry delay; doubles on each retry")
    save_logits: bool = Field(default=True, description="fetch evaluation logits so the host can recompute metrics")
    power: bool | None = Field(default=None, description="sample power with tegrastats (None = as the profile says)")
    profiles_dir: Path | None = Field(default=None, description="directory of user device profiles (*.yaml)")

    @field_validator("batch_sizes")
    @classmethod
    def _positive_batches(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError(f"batch_sizes must be a non-empty list of positive integers, got {v}")
        return v

    @field_validator("devices")
    @classmethod
    def _some_devices(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("devices must name at least one device profile, e.g. ['local']")
        return v


class DeviceProfile(StrictModel):
    """One target device: how to reach it and what it can run."""

    name: str = Field(description="profile name")
    transport: str = Field(
        default="local",
        description="how the agent reaches the device: a registered transport (local, ssh, adb, or one a plugin module "
        "registers: edgecompress._registry.TRANSPORTS)",
    )
    host: str | None = Field(default=None, description="ssh host name or address")
    port: int = Field(default=22, ge=1, le=65535, description="ssh port")
    user: str | None = Field(default=None, description="ssh user")
    identity_file: Path | None = Field(default=None, description="ssh private key (key auth only)")
    known_hosts_file: Path | None = Field(
        default=None, description="known_hosts file holding the device's host key (host keys are always checked)"
    )
    serial: str | None = Field(default=None, description="adb device serial (adb -s); None = the only device")
    python: str = Field(default="python3", description="Python interpreter on the device")
    workdir: str = Field(default="/tmp/edgecompress", description="remote directory for per-run folders")
    runtimes: list[str] = Field(default=["onnxruntime"], description="runtimes installed on the device")
    formats: list[str] = Field(
        default=["onnx:*"], description="accepted artifacts as 'format:precision' ('*' = any precision)"
    )
    benchmark_binary: str | None = Field(
        default=None, description="adb: path on the device of the runtime's benchmark binary (no Python on phones)"
    )
    benchmark_binary_local: Path | None = Field(
        default=None, description="adb: host path of that binary, pushed to benchmark_binary before a run (optional)"
    )
    binary_kind: Literal["onnxruntime_perf_test", "executor_runner"] | None = Field(
        default=None, description="adb: which benchmark binary's output format to parse"
    )
    has_python: bool = Field(default=False, description="adb: the device has Python + runtime (run the agent there)")
    power: bool = Field(default=False, description="sample board power with tegrastats (Jetson)")
    threads: int | None = Field(default=None, ge=1, description="thread count for this device (overrides config)")
    description: str = Field(default="", description="free text")

    @field_validator("transport")
    @classmethod
    def _registered(cls, v: str, info: ValidationInfo) -> str:
        from edgecompress._registry import TRANSPORTS  # light: the names, not the transports

        return TRANSPORTS.check_name(v, plugins=bool((info.context or {}).get("plugins")))

    @field_validator("host")
    @classmethod
    def _valid_host(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("-") or not _HOST_RE.match(v)):
            raise ValueError(f"host {v!r} is not a valid host name (letters, digits, '.-_:', no leading '-')")
        return v

    @field_validator("user")
    @classmethod
    def _valid_user(cls, v: str | None) -> str | None:
        if v is not None and not _USER_RE.match(v):
            raise ValueError(f"user {v!r} is not a valid user name (letters, digits, '._-', no leading '-')")
        return v

    @field_validator("workdir")
    @classmethod
    def _valid_workdir(cls, v: str) -> str:
        # scp's remote path is not shell-quoted (SFTP mode takes it literally), so keep it to a plain charset
        if not _WORKDIR_RE.match(v):
            raise ValueError(f"workdir {v!r} must be an absolute path of letters, digits and '/._-'")
        return v

    @field_validator("python")
    @classmethod
    def _valid_python(cls, v: str) -> str:
        if not (_COMMAND_RE.match(v) or (_ABS_COMMAND_RE.match(v) and ".." not in v.split("/"))):
            raise ValueError(
                f"python {v!r} must be an interpreter name found on PATH (e.g. python3) or an absolute path "
                "(letters, digits, '/._+-'); a relative path is never resolved against the current folder"
            )
        return v

    @field_validator("benchmark_binary")
    @classmethod
    def _valid_binary(cls, v: str | None) -> str | None:
        if v is not None and not (_ABS_COMMAND_RE.match(v) and ".." not in v.split("/")):
            raise ValueError(f"benchmark_binary {v!r} must be an absolute device path (letters, digits, '/._+-')")
        return v

    @field_validator("benchmark_binary_local")
    @classmethod
    def _absolute_local_binary(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"benchmark_binary_local {str(v)!r} must be an absolute path on this machine")
        return v

    @field_validator("formats")
    @classmethod
    def _valid_formats(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if not _FORMAT_RE.match(f)]
        if bad:
            raise ValueError(f"formats {bad} are not 'format:precision' items like 'onnx:fp32' or 'openvino:*'")
        return v

    def accepts(self, fmt: str, precision: str, runtime: str | None = None) -> bool:
        """True when this device takes an artifact of ``fmt``/``precision`` (and has its runtime, if given)."""
        if runtime is not None and runtime not in self.runtimes:
            return False
        for item in self.formats:
            f, _, p = item.partition(":")
            if f == fmt and p in ("", "*", precision):
                return True
        return False
