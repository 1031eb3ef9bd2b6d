"""The SSH transport: OpenSSH ``scp`` into a per-run folder on the device, ``ssh`` to run the agent there.

Host keys are always checked (``StrictHostKeyChecking=yes`` against the profile's known_hosts file) and only key
authentication is tried (``BatchMode=yes``). The remote command is read by the remote shell: every word is quoted
(:func:`shlex.join`), and host/user names are validated by the profile so that they cannot be read as ssh options.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgecompress._registry import TRANSPORTS
from edgecompress.devices.config import DeviceProfile
from edgecompress.devices.transports.base import RUN_IN_DIR, TransientTransportError, Transport, run_program, tail
from edgecompress.errors import TransportError

log = logging.getLogger(__name__)


@TRANSPORTS.register("ssh", summary="OpenSSH: scp the files, ssh the agent (host keys checked, key auth only)")
class SSHTransport(Transport):
    """OpenSSH ``ssh``/``scp``: copy agent, artifact and eval data into a per-run remote dir, run, fetch the JSON.

    Args:
        profile: the device profile (``host`` required; ``port``, ``user``, ``identity_file``, ``known_hosts_file``).
        ssh: the ssh client to run (tests).
        scp: the scp client to run (tests).
    """

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
        super().__init__(profile)
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

    def _call(self, argv: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess[str]:
        proc = run_program(argv, timeout_s=timeout_s, what=f"{what} on {self.dest}", fix="install the OpenSSH client")
        if proc.returncode == 255:  # ssh's own failure (connection), not the remote command's exit code
            err = tail(proc.stderr, 400)
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

    def execute(self, words: Sequence[str], *, cwd: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
        full = list(words) if cwd is None else ["sh", "-c", RUN_IN_DIR, "sh", cwd, *words]
        # the remote sshd hands this string to the user's shell: shlex.join quotes every word
        cmd = [self.ssh, *self._options(), "-p", str(self.profile.port), "--", self.dest, shlex.join(full)]
        return self._call(cmd, timeout_s, _what(words))

    def _scp(self, sources: list[str], target: str, timeout_s: float, what: str) -> None:
        proc = self._call(
            [self.scp, *self._options(), "-B", "-q", "-P", str(self.profile.port), "--", *sources, target],
            timeout_s,
            what,
        )
        if proc.returncode != 0:
            raise TransientTransportError(f"{what} failed: {tail(proc.stderr, 400) or proc.returncode}")

    def push(self, files: Sequence[Path], rdir: str, *, timeout_s: float) -> None:
        self._scp([str(f) for f in files], f"{self.dest}:{rdir}/", timeout_s, "copy to device")

    def pull(self, name: str, rdir: str, local_dir: Path, *, timeout_s: float) -> None:
        self._scp([f"{self.dest}:{rdir}/{name}"], str(local_dir) + "/", timeout_s, f"fetch {name}")


def _what(words: Sequence[str]) -> str:
    """A command's name for messages: ``mkdir``, ``rm``, or ``agent`` for the agent's run."""
    return "agent" if any(str(w).endswith("agent.py") for w in words[:2]) else Path(str(words[0])).name
