"""SSHTransport against a REAL sshd on a loopback port, with throw-away host and user keys in tmp_path.

sshd runs as the current user (root here: PermitRootLogin prohibit-password), key auth only, host keys checked.
Faults are real too: sshd killed mid-run, a port nothing listens on, a wrong host key, a crashing interpreter.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import NO_SSHD, SSHD, Sshd, descendants, free_port, keygen, tiny_onnx
from edgecompress.devices import agent
from edgecompress.devices.bench import benchmark_artifacts
from edgecompress.devices.config import BenchmarkConfig
from edgecompress.devices.transports import AgentJob, SSHTransport, with_retries

pytestmark = [
    pytest.mark.skipif(not SSHD.is_file(), reason=NO_SSHD),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed"),
    pytest.mark.timeout(120),
]
FAST = ("--warmup", "1", "--min-time", "0", "--min-iters", "3", "--repeats", "1", "--batch-sizes", "1,2")


@pytest.fixture
def sshd(tmp_path: Path):
    server = Sshd(tmp_path / "sshd")
    yield server
    server.kill()


@pytest.fixture
def model(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Path, Path]:
    onnx_path, x, _ = tiny_onnx(tmp_path_factory)
    rng = np.random.default_rng(0)
    eval_file = tmp_path / "eval.npz"
    np.savez(eval_file, x=rng.normal(size=(16, *x.shape[1:])).astype(np.float32), y=rng.integers(0, 5, 16))
    return onnx_path, eval_file


def _job(model: tuple[Path, Path], runtime: str = "onnxruntime", args: tuple[str, ...] = FAST) -> AgentJob:
    onnx_path, eval_file = model
    return AgentJob(onnx_path, (onnx_path,), runtime, eval_file, args, save_logits=True)


def test_agent_runs_over_ssh_and_metrics_come_back(sshd: Sshd, model, tmp_path: Path) -> None:
    onnx_path, eval_file = model
    with np.load(eval_file) as data:
        x, y = data["x"], data["y"]
    cfg = BenchmarkConfig(batch_sizes=[1, 2], warmup_iters=1, min_time_s=0, min_iters=3, repeats=1, threads=1)
    artifact = {"name": "tiny", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime"}
    artifact |= {"model_file": onnx_path, "files": [onnx_path]}
    [row] = benchmark_artifacts([artifact], [sshd.profile()], eval_x=x, eval_y=y, cfg=cfg, workdir=tmp_path / "w")
    assert row.ok, row
    assert row.device == "ssh-loopback" and row.attempts == 1 and set(row.latency_ms) == {1, 2}
    # accuracy/ECE measured remotely equal a local evaluation of the same model and data
    rt = agent.get_runtime("onnxruntime")
    rt.load(onnx_path)
    local, _ = agent.evaluate(rt, x, y)
    assert row.accuracy == pytest.approx(local["accuracy"]) and row.ece == pytest.approx(local["ece"], abs=1e-6)
    assert row.env["threads"] == 1
    # the per-run remote directory is removed afterwards
    assert not any((sshd.root / "remote").glob("run-*"))


def test_unreachable_port_is_retried_then_a_clear_failure(sshd: Sshd, model, tmp_path: Path) -> None:
    transport = SSHTransport(sshd.profile(port=free_port()))
    out = with_retries(
        lambda: transport.run(_job(model), local_dir=tmp_path / "r", timeout_s=30), retries=2, backoff_s=0.01, what="t"
    )
    assert out.result["ok"] is False and out.attempts == 3 and len(out.failures) == 3
    assert "Connection refused" in out.result["error"] and "failed after 3 attempt(s)" in out.result["error"]


def _kill_when_agent_runs(server: Sshd, restart: bool) -> threading.Thread:
    def worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.proc is not None:
            procs = descendants(server.proc.pid)
            cmdlines = []
            for pid in procs:
                with contextlib.suppress(OSError):
                    cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            if any(b"agent.py" in c for c in cmdlines):
                time.sleep(0.3)
                server.kill()
                if restart:
                    server.start()
                return
            time.sleep(0.05)

    t = threading.Thread(target=worker, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("restart", [False, True], ids=["stays-down", "comes-back"])
def test_sshd_killed_mid_run(sshd: Sshd, model, tmp_path: Path, restart: bool) -> None:
    slow = ("--warmup", "0", "--min-time", "3", "--min-iters", "1", "--repeats", "1", "--batch-sizes", "1")
    fast_after_restart = iter([slow, FAST])
    transport = SSHTransport(sshd.profile())
    killer = _kill_when_agent_runs(sshd, restart)
    out = with_retries(
        lambda: transport.run(_job(model, args=next(fast_after_restart, FAST)), local_dir=tmp_path / "r", timeout_s=60),
        retries=2,
        backoff_s=0.5,
        what="tiny on ssh-loopback",
    )
    killer.join(timeout=30)
    assert "attempt 1" in out.failures[0] and "ssh connection" in out.failures[0]
    if restart:
        assert out.result["ok"] is True and out.attempts == 2 and out.result["metrics"]["n"] == 16
    else:
        assert out.result["ok"] is False and out.attempts == 3
        assert "tiny on ssh-loopback failed after 3 attempt(s)" in out.result["error"]


def test_wrong_host_key_is_refused_not_retried(sshd: Sshd, model, tmp_path: Path) -> None:
    other = keygen(tmp_path / "impostor_key")
    bad_known = tmp_path / "bad_known_hosts"
    bad_known.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other.split()[:2])}\n")
    transport = SSHTransport(sshd.profile(known_hosts_file=bad_known))
    out = with_retries(
        lambda: transport.run(_job(model), local_dir=tmp_path / "r", timeout_s=30), retries=2, backoff_s=0.01, what="t"
    )
    assert out.result["ok"] is False and out.attempts == 1
    assert "refused" in out.result["error"] and "known_hosts_file" in out.result["error"]


def test_agent_crash_gives_ok_false_with_stderr_tail(sshd: Sshd, model, tmp_path: Path) -> None:
    crasher = tmp_path / "crashing-python"
    crasher.write_text('#!/bin/sh\necho "Fatal Python error: Segmentation fault" >&2\nkill -SEGV $$\n')
    crasher.chmod(0o755)
    transport = SSHTransport(sshd.profile(python=str(crasher)))
    out = with_retries(
        lambda: transport.run(_job(model), local_dir=tmp_path / "r", timeout_s=30), retries=2, backoff_s=0.01, what="t"
    )
    res = out.result
    assert res["ok"] is False and res["error_type"] == "crash" and out.attempts == 1
    assert "Fatal Python error: Segmentation fault" in res["stderr_tail"]
    assert "without a result" in res["error"]


def test_missing_runtime_on_the_device_is_a_clear_error(sshd: Sshd, model, tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    transport = SSHTransport(sshd.profile())
    res = transport.run(_job(model, runtime="tensorrt"), local_dir=tmp_path / "r", timeout_s=30)
    assert res["ok"] is False and res["error_type"] == "missing_runtime"
    assert res["error"] == "runtime 'tensorrt' is not installed on this device — fix: pip install tensorrt"
