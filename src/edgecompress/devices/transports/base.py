"""The transport type: how the agent reaches a device, and its run cycle written once.

A transport implements three primitives — :meth:`Transport.push` files into a per-run folder on the device,
:meth:`Transport.execute` a command there, :meth:`Transport.pull` a file back — and may say what it knows of the
device (:meth:`Transport.env`). :meth:`Transport.run` is the agent's cycle on top of them: open a per-run folder, ship
the agent, the artifact's files and the evaluation subset, run the agent, fetch its JSON (and logits), clean up.
Transports register themselves by name (``@TRANSPORTS.register("ssh")``, :data:`edgecompress._registry.TRANSPORTS`)
and a device profile names one (``transport: ssh``); a transport of your own is one module listed in the config's
``plugins`` (``tests/test_transports.py`` writes one).

Every external program is run with an argument list, never a shell string. The one place a shell is unavoidable is
the *remote* command of ``ssh`` and ``adb shell``: the remote side joins the words and hands them to its shell. There,
every word is quoted with :func:`shlex.quote` (via :func:`shlex.join`), and host/user names are validated by
:class:`~edgecompress.devices.config.DeviceProfile` (no leading ``-``, a small charset) so that they cannot be read
as ssh options.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecompress.devices.config import DeviceProfile
from edgecompress.errors import DeviceError, TransportError

log = logging.getLogger(__name__)

AGENT_PATH = Path(__file__).resolve().parents[1] / "agent.py"
RESULT_NAME, LOGITS_NAME = "result.json", "logits.npy"
# Runs "$@" inside "$1" on the device. No `exec`: the shell waits and turns a signal death into exit code 128+n, so
# ssh's own 255 keeps meaning "the connection failed" (ssh reports a remote signal death as 255 too).
RUN_IN_DIR = 'cd "$1" && shift && "$@"'


class TransientTransportError(TransportError):
    """A failure worth retrying: a timeout, a refused or dropped connection, an offline adb device."""


@dataclass(frozen=True)
class AgentJob:
    """One agent run: an artifact's files, the runtime, the evaluation file and the timing options (no paths).

    ``iterations`` is for devices without Python, where the runtime's own benchmark binary times the model.
    """

    model_file: Path
    files: tuple[Path, ...]
    runtime: str
    eval_file: Path | None
    agent_args: tuple[str, ...] = ()
    save_logits: bool = False
    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    iterations: int = 50


@dataclass
class Outcome:
    """What a transport brought back: the agent's JSON (or a failure), attempts, and why each failed attempt failed."""

    result: dict[str, Any]
    attempts: int = 1
    failures: list[str] = field(default_factory=list)


def tail(text: str | bytes | None, n: int = 1500) -> str:
    """The last ``n`` characters of a program's output, stripped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return (text or "")[-n:].strip()


def parse_result(out_file: Path, stdout: str, rc: int, stderr: str) -> dict[str, Any]:
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
                result.setdefault("stderr_tail", tail(stderr))
            return result
    return {
        "ok": False,
        "error": f"the agent exited with code {rc} without a result; stderr: {tail(stderr, 600) or '(empty)'}",
        "error_type": "crash",
        "stderr_tail": tail(stderr),
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


def run_program(
    argv: Sequence[str], *, timeout_s: float, what: str, fix: str, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a program on this machine (an argument list, never a shell string) and capture its output.

    Raises:
        TransientTransportError: it ran past ``timeout_s`` (worth retrying).
        TransportError: it cannot start (the message ends with ``fix``).
    """
    try:
        return subprocess.run(  # noqa: S603 (argument list)
            list(argv), capture_output=True, text=True, timeout=timeout_s, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise TransientTransportError(f"{what} did not finish within {timeout_s:g} s") from exc
    except OSError as exc:
        raise TransportError(f"cannot start {argv[0]}: {exc}", fix) from exc


def shipped_files(job: AgentJob) -> list[Path]:
    """What goes to a device: the agent, the artifact's files and the evaluation subset."""
    return [AGENT_PATH, *job.files, *([job.eval_file] if job.eval_file else [])]


class Transport(ABC):
    """How the agent reaches one device (the profile says which; a transport registers itself by name).

    A subclass implements :meth:`push`, :meth:`execute` and :meth:`pull` (and :meth:`env` if it knows more of the
    device than its name); :meth:`run` — the agent's cycle — is written here once. A failure worth retrying raises
    :class:`TransientTransportError`, a permanent one :class:`~edgecompress.errors.TransportError`.

    Args:
        profile: the device profile.
    """

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        self.python = profile.python  # the interpreter on the device that runs the agent

    @abstractmethod
    def push(self, files: Sequence[Path], rdir: str, *, timeout_s: float) -> None:
        """Copy ``files`` (paths on this machine) into the device folder ``rdir``, each under its own name."""

    @abstractmethod
    def execute(self, words: Sequence[str], *, cwd: str | None, timeout_s: float) -> subprocess.CompletedProcess[str]:
        """Run the command ``words`` (an argument list, never a shell string) on the device in the folder ``cwd``
        (None: wherever the device starts) and return its exit code, stdout and stderr."""

    @abstractmethod
    def pull(self, name: str, rdir: str, local_dir: Path, *, timeout_s: float) -> None:
        """Copy the file ``name`` of the device folder ``rdir`` to ``local_dir / name``; a missing file raises
        :class:`TransientTransportError`."""

    def env(self, *, timeout_s: float) -> dict[str, Any]:
        """What the transport knows of the device without the agent (the agent reports the machine itself)."""
        return {"transport": self.profile.transport}

    def open(self, local_dir: Path, *, timeout_s: float) -> str:
        """A fresh per-run folder on the device: ``workdir/run-<random>``."""
        rdir = f"{self.profile.workdir.rstrip('/')}/run-{uuid.uuid4().hex[:12]}"
        self.execute(["mkdir", "-p", rdir], cwd=None, timeout_s=timeout_s)
        return rdir

    def close(self, rdir: str) -> None:
        """Remove the per-run folder (a leftover is logged, never an error: the run's outcome matters more)."""
        try:
            self.execute(["rm", "-rf", rdir], cwd=None, timeout_s=30)
        except TransportError as exc:
            log.info("could not remove %s on %s: %s", rdir, self.profile.name, exc)

    def place(self, path: Path) -> str:
        """How the command on the device names a pushed file: its name inside the per-run folder."""
        return Path(path).name

    def run(self, job: AgentJob, *, local_dir: Path, timeout_s: float) -> dict[str, Any]:
        """Run the agent on ``job`` and bring back its JSON (logits into ``local_dir``); a crash is ``ok: false``."""
        local_dir = Path(local_dir).resolve()
        local_dir.mkdir(parents=True, exist_ok=True)
        for stale in (RESULT_NAME, LOGITS_NAME):
            (local_dir / stale).unlink(missing_ok=True)
        rdir = self.open(local_dir, timeout_s=timeout_s)
        try:
            return self.run_agent(job, rdir, local_dir, timeout_s=timeout_s)
        finally:
            self.close(rdir)

    def run_agent(self, job: AgentJob, rdir: str, local_dir: Path, *, timeout_s: float) -> dict[str, Any]:
        """The agent's cycle inside an open per-run folder: push, execute, pull."""
        self.push(shipped_files(job), rdir, timeout_s=timeout_s)
        words = [self.python, self.place(AGENT_PATH)] + agent_argv(
            job,
            model=self.place(job.model_file),
            eval_file=self.place(job.eval_file) if job.eval_file else None,
            out=RESULT_NAME,
            logits=LOGITS_NAME if job.save_logits else None,
        )
        proc = self.execute(words, cwd=rdir, timeout_s=timeout_s)
        try:
            self.pull(RESULT_NAME, rdir, local_dir, timeout_s=timeout_s)
        except TransientTransportError:
            if proc.returncode == 0:  # the agent said it finished: its result must be there
                raise
        result = parse_result(local_dir / RESULT_NAME, proc.stdout, proc.returncode, proc.stderr)
        if result.get("logits_file"):
            self.pull(LOGITS_NAME, rdir, local_dir, timeout_s=timeout_s)
            result["logits_file"] = str(local_dir / LOGITS_NAME)
        if isinstance(result.get("env"), dict):
            result["env"] = {**self.env(timeout_s=timeout_s), **result["env"]}
        return result
