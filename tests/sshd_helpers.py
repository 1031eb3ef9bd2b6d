"""A throw-away sshd on a loopback port (host key, user key, known_hosts under one folder), for transport tests."""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecompress.devices.config import DeviceProfile

SSHD = Path("/usr/sbin/sshd")
NO_SSHD = "/usr/sbin/sshd is not installed (apt-get install openssh-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)  # noqa: S603 S607
    return path.with_suffix(".pub").read_text().strip()


def descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (sshd's connection children call setsid, so a process group would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Sshd:
    """A throw-away sshd: host key, authorized user key, known_hosts, all under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        host_pub = keygen(root / "host_key")
        user_pub = keygen(root / "user_key")
        (root / "authorized_keys").write_text(user_pub + "\n")
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub.split()[:2])}\n")
        (root / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {root / 'host_key'}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "PrintMotd no",
                    "LogLevel ERROR",
                ]
            )
            + "\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - sshd writes to it until stopped
        self.proc = subprocess.Popen(  # noqa: S603
            [str(SSHD), "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited: {(self.root / 'sshd.log').read_text()[-800:]}")
            time.sleep(0.05)
        pytest.fail("sshd did not start listening")

    def kill(self) -> None:
        """Kill sshd and every session below it (our own processes), dropping live connections."""
        if self.proc is None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def profile(self, **overrides) -> DeviceProfile:
        fields = {
            "name": "ssh-loopback",
            "transport": "ssh",
            "host": "127.0.0.1",
            "port": self.port,
            "user": getpass.getuser(),
            "identity_file": self.root / "user_key",
            "known_hosts_file": self.root / "known_hosts",
            "python": sys.executable,
            "workdir": str(self.root / "remote"),
            "runtimes": ["onnxruntime", "tensorrt"],
            "formats": ["onnx:*"],
        }
        return DeviceProfile(**(fields | overrides))
