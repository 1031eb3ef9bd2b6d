"""The agent as a real subprocess (a copy outside the package, as on a device): JSON out, never a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_onnx
from edgecompress.devices import agent


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory like the per-run folder on a device: agent.py, the model and eval.npz."""
    d = tmp_path_factory.mktemp("device")
    onnx_path, x, _ = tiny_onnx(tmp_path_factory)
    shutil.copy(agent.__file__, d / "agent.py")
    shutil.copy(onnx_path, d / "model.onnx")
    rng = np.random.default_rng(0)
    np.savez(d / "eval.npz", x=rng.normal(size=(24, *x.shape[1:])).astype(np.float32), y=rng.integers(0, 5, 24))
    return d


def run_agent(device_dir: Path, *args: str) -> tuple[int, dict, str]:
    # -I: isolated mode (no cwd/user site on sys.path), closer to a bare device interpreter
    proc = subprocess.run(  # noqa: S603 (argument list)
        [sys.executable, "-I", "agent.py", *args], cwd=device_dir, capture_output=True, text=True, timeout=120
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(lines[0]), proc.stderr


def test_agent_measures_and_evaluates(device_dir: Path) -> None:
    code, res, _ = run_agent(
        device_dir,
        *("--artifact", "model.onnx", "--runtime", "onnxruntime", "--eval", "eval.npz", "--batch-sizes", "1,4"),
        *("--threads", "1", "--warmup", "2", "--min-time", "0", "--min-iters", "5", "--repeats", "2"),
        *("--out", "result.json", "--save-logits", "logits.npy"),
    )
    assert code == 0 and res["ok"] is True and res["error"] is None
    assert json.loads((device_dir / "result.json").read_text()) == res
    assert set(res["latency_ms"]) == {"1", "4"}
    for b in ("1", "4"):
        lat = res["latency_ms"][b]
        assert 0 < lat["p50"] <= lat["p99"]
        assert res["bench"][b]["iterations"] >= 10 and res["throughput"][b] > 0
    assert res["info"]["runtime"] == "onnxruntime" and res["info"]["threads"] == 1
    assert res["env"]["threads"] == 1 and res["env"]["python"]
    # the agent's metrics equal an in-process evaluation of the same logits
    logits = np.load(device_dir / "logits.npy")
    with np.load(device_dir / "eval.npz") as data:
        expected = agent.classification_metrics(logits, data["y"])
    assert logits.shape == (24, 5)
    assert res["metrics"] == pytest.approx(expected)


def test_missing_runtime_is_a_clear_json_error(device_dir: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    code, res, _ = run_agent(device_dir, "--artifact", "model.onnx", "--runtime", "tensorrt")
    assert code == agent.EXIT_MISSING_RUNTIME and res["ok"] is False
    assert res["error"] == "runtime 'tensorrt' is not installed on this device — fix: pip install tensorrt"
    assert res["error_type"] == "missing_runtime"


def test_bad_arguments_are_json(device_dir: Path) -> None:
    code, res, _ = run_agent(device_dir, "--runtime", "onnxruntime")
    assert code == agent.EXIT_USAGE and res["ok"] is False and "--artifact" in res["error"]


def test_unknown_runtime_and_bad_model_are_json(device_dir: Path) -> None:
    code, res, _ = run_agent(device_dir, "--artifact", "model.onnx", "--runtime", "tflite")
    assert code == agent.EXIT_FAILED and "unknown runtime 'tflite'" in res["error"]
    (device_dir / "broken.onnx").write_bytes(b"\x00garbage")
    code, res, _ = run_agent(device_dir, "--artifact", "broken.onnx", "--runtime", "onnxruntime")
    assert code == agent.EXIT_FAILED and res["stage"] == "load" and "could not load broken.onnx" in res["error"]


def test_wrong_eval_file_keeps_the_stage(device_dir: Path) -> None:
    np.savez(device_dir / "bad.npz", images=np.zeros((2, 3, 8, 8), np.float32))
    code, res, _ = run_agent(device_dir, "--artifact", "model.onnx", "--runtime", "onnxruntime", "--eval", "bad.npz")
    assert code == agent.EXIT_FAILED and res["stage"] == "eval" and "lacks arrays 'x' and 'y'" in res["error"]
    assert res["info"]["runtime"] == "onnxruntime"  # the partial result (what loaded) is kept


def test_input_shape_from_model_without_eval(device_dir: Path) -> None:
    code, res, _ = run_agent(
        device_dir,
        *("--artifact", "model.onnx", "--runtime", "onnxruntime", "--batch-sizes", "2"),
        *("--warmup", "0", "--min-time", "0", "--min-iters", "3", "--repeats", "1"),
    )
    assert code == 0 and res["metrics"] is None and res["bench"]["2"]["batch"] == 2
