"""Interruptions: `edgecompress run` SIGKILLed mid-teacher, mid-export and mid-benchmark, then rerun to completion,
must end with the same metrics as an uninterrupted run and no half-written files; SIGINT exits 130 with one line.

The uninterrupted reference run also checks that a run directory named with a space and a ';' works, and that an ssh
device's identity file (its path's content) never leaks into the report or logs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, record, tiny_config, write_yaml

KEY_MARKER = "EDGECOMPRESS-SECRET-KEY-MATERIAL-4f1c"
METRICS = ("accuracy", "ece", "nll", "brier")
pytestmark = pytest.mark.slow


def _config(tmp: Path, *, devices: list[str] | None = None) -> Path:
    cfg = tiny_config()
    cfg["teacher"]["train"].update({"epochs": 3, "max_steps_per_epoch": 10})
    cfg["distill"]["train"].update({"epochs": 2, "max_steps_per_epoch": 10})
    cfg["export"]["formats"] = ["onnx:fp32", "onnx:int8", "openvino:fp32"]
    cfg["export"]["max_accuracy_drop"] = 0.5
    cfg["benchmark"].update({"batch_sizes": [1, 8], "min_time_s": 0.2, "repeats": 2, "eval_samples": 200})
    cfg["benchmark"].update({"retries": 0, "timeout_s": 60})
    if devices:
        cfg["benchmark"]["devices"] = devices
    return write_yaml(tmp / "cfg.yaml", cfg)


def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "edgecompress", "run", str(cfg), "--out", str(out), "--no-progress", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own process group: the kill reaches the local benchmark agents too
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        # a shell's background job (`cmd &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt:
        # give the child the default disposition, as a terminal's foreground process has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(proc: subprocess.Popen, what: str, ready: Callable[[], bool], timeout: float = 400) -> None:
    """Poll the run directory (no guessing sleeps) until ``ready()``; fail if the process ends first."""
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _stage(out: Path, name: str) -> list[Path]:
    return sorted((out / "stages").glob(f"{name}-*")) if (out / "stages").is_dir() else []


def _finish(cfg: Path, out: Path) -> subprocess.CompletedProcess:
    proc = _start(cfg, out)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _metrics(out: Path) -> dict[tuple[str, str, str], dict[str, float]]:
    report = json.loads((out / "report.json").read_text())
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    for i, m in enumerate(report["models"]):
        key = (m["name"], m["role"], f"{m['format']}:{m['precision']}:{i}")
        rows[key] = {k: m[k] for k in METRICS}
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """The uninterrupted run, into a folder named 'a b;c', with an unreachable ssh device holding a real key file."""
    tmp = tmp_path_factory.mktemp("ref")
    key = tmp / "id_test"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MARKER}\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    closed = _closed_port()
    ssh = write_yaml(
        tmp / "lab.yaml",
        {"name": "lab", "transport": "ssh", "host": "127.0.0.1", "port": closed, "identity_file": str(key)},
    )
    cfg = _config(tmp, devices=["local", str(ssh)])
    out = tmp / "a b;c" / "run"
    res = _finish(cfg, out)
    return out, res, key


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: connections are refused


def _check_clean(out: Path) -> None:
    """No temp files of atomic writes, every JSON parses, every finished stage has its outputs."""
    hidden = [p for p in out.rglob(".*") if p not in (out / ".edgecompress.lock", out / ".edgecompress")]
    assert not hidden, hidden  # atomic-write temps, exporter work folders: all swept
    for p in out.rglob("*.json"):
        json.loads(p.read_text())
    for done in out.glob("stages/*/_done.json"):
        stage = done.parent
        result = json.loads(done.read_text())
        name = stage.name.rsplit("-", 1)[0]
        if name in ("teacher", "calibrate"):
            assert (stage / f"{'teacher' if name == 'teacher' else 'student'}.pt").is_file(), stage
        elif name == "distill":
            assert (stage / "student.pt").is_file(), stage
        elif name == "export":
            for art in result["artifacts"]:
                for f in art["files"]:
                    assert Path(f).is_file() and Path(f).stat().st_size > 0, f
        elif name == "benchmark":
            assert result["rows"] and (stage / "eval.npz").is_file()


def test_killed_three_times_then_resumed_matches_uninterrupted(reference, tmp_path: Path) -> None:
    ref_out, _, _ = reference
    cfg = _config(tmp_path)
    out = tmp_path / "run"

    # 1. mid-teacher: as soon as the first epoch checkpoint is there
    proc = _start(cfg, out)
    _wait_for(proc, "the teacher's first checkpoint", lambda: any(out.glob("stages/teacher-*/train/checkpoint.pt")))
    _kill(proc)
    assert not any(out.glob("stages/teacher-*/_done.json"))

    # 2. mid-export: the export folder exists (its first artifact landed, if we see it in time), no _done.json yet
    proc = _start(cfg, out)
    _wait_for(proc, "the export stage", lambda: bool(_stage(out, "export")))
    _wait_for(
        proc,
        "the first exported artifact",
        lambda: any(out.glob("stages/export-*/artifacts/onnx-fp32")) or any(out.glob("stages/export-*/_done.json")),
    )
    _kill(proc)
    assert any(out.glob("stages/teacher-*/_done.json")) and any(out.glob("stages/calibrate-*/_done.json"))
    assert not any(out.glob("stages/export-*/_done.json")), "export finished before the kill"

    # 3. mid-benchmark
    proc = _start(cfg, out)
    _wait_for(proc, "the benchmark stage", lambda: bool(_stage(out, "benchmark")))
    _kill(proc)
    assert any(out.glob("stages/export-*/_done.json"))
    assert not any(out.glob("stages/benchmark-*/_done.json")), "benchmark finished before the kill"

    # 4. to the end
    _finish(cfg, out)
    _check_clean(out)
    state = json.loads((out / "run.json").read_text())
    ran = {s["name"]: s["cached"] for s in state["stages"]}  # only benchmark ran this time
    assert ran == {
        "data": True,
        "teacher": True,
        "distill": True,
        "calibrate": True,
        "export": True,
        "benchmark": False,
    }

    got, want = _metrics(out), _metrics(ref_out)
    assert got.keys() == want.keys()
    for key, m in want.items():
        if key[2].startswith("pytorch:") or key[2].startswith("onnx:"):
            assert got[key] == m, (key, got[key], m)  # bit-exact: PyTorch CPU and ONNX Runtime CPU
        else:  # OpenVINO: same accuracy, calibration metrics to float32 rounding
            assert got[key]["accuracy"] == m["accuracy"], key
            for k in ("ece", "nll", "brier"):
                assert got[key][k] == pytest.approx(m[k], abs=1e-6), (key, k)


def test_reference_run_in_odd_folder_is_clean(reference) -> None:
    out, res, _ = reference
    assert "a b;c" in str(out) and (out / "report.json").is_file()
    _check_clean(out)
    bundles = sorted((out / "bundles").glob("*.zip"))
    assert bundles
    verify = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "edgecompress", "verify", str(bundles[0])], capture_output=True, text=True, cwd=ROOT
    )
    assert verify.returncode == 0, verify.stderr


def test_unreachable_ssh_device_fails_its_rows_and_leaks_no_key(reference) -> None:
    out, res, key = reference
    report = json.loads((out / "report.json").read_text())
    lab = [r for r in report["benchmarks"] if r["device"] == "lab"]
    assert lab and not any(r["ok"] for r in lab)
    assert all("127.0.0.1" in r["error"] and "fix:" in r["error"] for r in lab), lab[0]["error"]
    assert any(r["ok"] for r in report["benchmarks"] if r["device"] == "local")
    record(
        "device",
        "ssh-closed-port-in-run",
        "ssh profile on a closed loopback port",
        "edgecompress run (benchmark row)",
        "row ok: false",
        lab[0]["error"],
    )
    secret = key.read_text()
    texts = {"stdout": res.stdout, "stderr": res.stderr}
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".json", ".md", ".html", ".yaml", ".txt", ".log"):
            texts[str(p)] = p.read_text(errors="replace")
    for where, text in texts.items():
        assert KEY_MARKER not in text and secret not in text, f"key material leaked into {where}"


def test_sigint_exits_130_with_resume_hint(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    out = tmp_path / "run"
    proc = _start(cfg, out)
    _wait_for(proc, "the teacher's first checkpoint", lambda: any(out.glob("stages/teacher-*/train/checkpoint.pt")))
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert "interrupted" in lines[0] and "rerun the same command to resume" in lines[0]
    record("interrupt", "sigint", "Ctrl-C (SIGINT) during teacher training", "edgecompress run", "130", lines[0])
    assert any(out.glob("stages/teacher-*/train/checkpoint.pt"))  # the finished epoch is kept


def test_disk_filling_up_mid_training_is_one_line_and_resumable(tmp_path: Path) -> None:
    """A 210 MiB tmpfs passes the start-up check; filled after the first epoch, the next checkpoint cannot be written:
    one line, exit 2, the previous checkpoint intact, no temp file; after freeing space the same command resumes."""
    import torch

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=210m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        cfg = _config(tmp_path)
        out = mnt / "run"
        proc = _start(cfg, out, "--until", "teacher")
        _wait_for(proc, "the first checkpoint", lambda: any(out.glob("stages/teacher-*/train/checkpoint.pt")))
        filler = mnt / "filler"
        with open(filler, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize - 4096)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, stderr[-3000:]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0] and "fix:" in lines[0], stderr[-3000:]
        assert "Traceback" not in stderr
        record(
            "resource",
            "disk-fills-mid-run",
            "the disk fills up during teacher training",
            "edgecompress run",
            "2",
            lines[0],
        )
        ckpt = next(out.glob("stages/teacher-*/train/checkpoint.pt"))
        assert torch.load(ckpt, map_location="cpu", weights_only=True)  # the last good checkpoint is whole
        assert not [p for p in out.rglob(".*") if p.name not in (".edgecompress.lock", ".edgecompress")]
        assert not any(out.glob("stages/teacher-*/_done.json"))
        filler.unlink()
        proc = _start(cfg, out, "--until", "teacher")
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert any(out.glob("stages/teacher-*/_done.json"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
