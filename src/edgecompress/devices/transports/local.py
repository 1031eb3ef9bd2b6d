"""The local transport: the agent runs on this machine, as a subprocess (which isolates thread settings per run)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from edgecompress._registry import TRANSPORTS
from edgecompress.devices.config import DeviceProfile
from edgecompress.devices.transports.base import Transport, local_command, run_program


@TRANSPORTS.register("local", summary="this machine: the agent as a subprocess of its Python")
class LocalTransport(Transport):
    """Runs the agent in ``local_dir`` on the files where they are: nothing is copied, nothing fetched.

    Args:
        profile: the device profile (``python`` given: that interpreter, looked up on PATH; else this one).
        python: an interpreter to use instead (tests).
    """

    def __init__(self, profile: DeviceProfile, *, python: str | None = None) -> None:
        super().__init__(profile)
        # the host's own interpreter unless the local profile names another one (e.g. a wrapper script)
        self.python = python or (local_command(profile.python) if "python" in profile.model_fields_set else
                                 sys.executable)  # fmt: skip

    def open(self, local_dir: Path, *, timeout_s: float) -> str:
        return str(local_dir)  # the agent writes its JSON and logits straight into the run's folder

    def close(self, rdir: str) -> None:
        pass  # the folder is the run's own: kept

    def place(self, path: Path) -> str:
        return str(Path(path).resolve())  # the agent runs with cwd=local_dir: every input path is absolute

    def push(self, files: Sequence[Path], rdir: str, *, timeout_s: float) -> None:
        pass  # the agent reads the files where they are

    def pull(self, name: str, rdir: str, local_dir: Path, *, timeout_s: float) -> None:
        pass  # rdir is local_dir

    def execute(self, words: Sequence[str], *, cwd: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return run_program(
            words, timeout_s=timeout_s, what="the local agent", fix="check the local profile's python", cwd=cwd
        )
