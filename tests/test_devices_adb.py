"""ADBTransport with a stand-in ``adb`` (no phone can exist here): a Python script first on PATH that records its argv
and plays the device side (a directory as the device's file system, canned benchmark-binary output)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_onnx
from edgecompress.devices import agent
from edgecompress.devices.bench import benchmark_artifacts
from edgecompress.devices.config import BenchmarkConfig, DeviceProfile
from edgecompress.devices.transports import parse_benchmark_output
from edgecompress.errors import TransportError

# Shaped like onnxruntime_perf_test's summary (performance_runner.cc); latencies in seconds, mean in ms.
PERF_TEST_OUTPUT = """Session creation time cost: 0.0213 s
First inference time cost: 3 ms
Total inference time cost: {total} s
Total inference requests: {n}
Average inference time cost: {mean_ms} ms
Total inference run time: {total} s
Number of inferences per second: 512.3
Avg CPU usage: 24 %
Peak working set size: 31457280 bytes
Min Latency: 0.0015 s
Max Latency: 0.0041 s
P50 Latency: 0.0019 s
P90 Latency: 0.0023 s
P95 Latency: 0.0025 s
P99 Latency: 0.0031 s
P999 Latency: 0.0040 s
"""

FAKE_ADB = r"""#!{python}
import json, os, shlex, shutil, sys
from pathlib import Path
root = Path(os.environ["FAKE_ADB_ROOT"])
with open(os.environ["FAKE_ADB_LOG"], "a") as fh:
    fh.write(json.dumps(sys.argv[1:]) + "\n")
if os.environ.get("FAKE_ADB_OFFLINE"):
    sys.stderr.write("error: device offline\n"); sys.exit(1)
args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
dev = lambda p: root / p.lstrip("/")
if args[0] == "push":
    *srcs, dst = args[1:]
    for s in srcs:
        target = dev(dst) / Path(s).name if dst.endswith("/") else dev(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(s, target)
    print(f"{len(srcs)} file(s) pushed")
elif args[0] == "pull":
    if not dev(args[1]).is_file():
        sys.stderr.write(f"adb: error: failed to stat remote object '{args[1]}'\n"); sys.exit(1)
    shutil.copy(dev(args[1]), args[2])
elif args[0] == "shell":
    words = shlex.split(args[1])
    if words[0] == "mkdir":
        dev(words[-1]).mkdir(parents=True, exist_ok=True)
    elif words[0] == "rm":
        shutil.rmtree(dev(words[-1]), ignore_errors=True)
    elif words[0] == "getprop":
        print("Pixel 8")
    elif words[:2] == ["sh", "-c"]:
        rdir, out, binary, *bargs = words[4:]
        n = int(bargs[bargs.index("-r") + 1])
        model = dev(rdir) / bargs[-1]
        text = os.environ["FAKE_PERF_OUTPUT"].format(n=n, total=n * 0.002, mean_ms=2.0) if model.is_file() else \
            f"failed to load model {bargs[-1]}"
        (dev(rdir) / out).write_text(text)
        sys.exit(0 if model.is_file() else 1)
"""


@pytest.fixture
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    adb = bindir / "adb"
    adb.write_text(FAKE_ADB.replace("{python}", sys.executable))
    adb.chmod(0o755)
    (tmp_path / "device").mkdir()
    log = tmp_path / "adb-argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(tmp_path / "device"))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_PERF_OUTPUT", PERF_TEST_OUTPUT)
    return log


def _profile(tmp_path: Path, **kw) -> DeviceProfile:
    binary = tmp_path / "onnxruntime_perf_test"
    binary.write_bytes(b"\x7fELF stand-in")
    fields = {
        "name": "phone",
        "transport": "adb",
        "serial": "R58M123",
        "workdir": "/data/local/tmp/ec",
        "benchmark_binary": "/data/local/tmp/onnxruntime_perf_test",
        "benchmark_binary_local": binary,
        "binary_kind": "onnxruntime_perf_test",
        "formats": ["onnx:*"],
    }
    return DeviceProfile(**(fields | kw))


def _artifact(tmp_path_factory: pytest.TempPathFactory) -> dict:
    onnx_path = tiny_onnx(tmp_path_factory)[0]
    return {"name": "tiny", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime"} | {
        "model_file": onnx_path,
        "files": [onnx_path],
    }


def test_adb_sequence_and_parsed_latency(fake_adb: Path, tmp_path: Path, tmp_path_factory) -> None:
    onnx_path, x, _ = tiny_onnx(tmp_path_factory)
    y = np.arange(len(x)) % 5
    cfg = BenchmarkConfig(batch_sizes=[1, 4], min_iters=10, repeats=3, threads=2, retries=0)
    profile = _profile(tmp_path)
    [row] = benchmark_artifacts([_artifact(tmp_path_factory)], [profile], eval_x=x, eval_y=y, cfg=cfg, workdir=tmp_path)
    assert row.ok, row
    calls = [json.loads(line) for line in fake_adb.read_text().splitlines()]
    assert all(c[:2] == ["-s", "R58M123"] for c in calls)
    verbs = [(c[2], c[3].split()[0] if c[2] == "shell" else None) for c in calls]
    assert verbs == [
        ("shell", "mkdir"),
        ("push", None),  # the benchmark binary
        ("shell", "chmod"),
        ("push", None),  # the model
        ("shell", "getprop"),
        ("shell", "sh"),
        ("pull", None),
        ("shell", "sh"),
        ("pull", None),
        ("shell", "rm"),
    ]
    run_b4 = calls[7][3]
    assert "/data/local/tmp/onnxruntime_perf_test" in run_b4 and "-r 30" in run_b4 and "-x 2" in run_b4
    assert "-f batch:4" in run_b4 and run_b4.endswith("tiny.onnx")
    assert calls[3][3:] == [str(onnx_path), calls[0][3].split()[-1] + "/"]
    # latency parsed from the binary's output (seconds -> ms); calibration measured on the host runtime
    assert row.latency_ms[1].p50 == pytest.approx(1.9) and row.latency_ms[4].p99 == pytest.approx(3.1)
    assert row.throughput[4] == pytest.approx(4 / 2.0e-3)
    assert row.calibration_measured_on == "host runtime"
    rt = agent.get_runtime("onnxruntime")
    rt.load(onnx_path)
    assert row.accuracy == pytest.approx(agent.evaluate(rt, x, y)[0]["accuracy"])
    assert row.env["device_model"] == "Pixel 8"


def test_offline_device_is_retried_then_reported(fake_adb: Path, tmp_path: Path, tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_ADB_OFFLINE", "1")
    cfg = BenchmarkConfig(batch_sizes=[1], retries=2, backoff_s=0.01)
    [row] = benchmark_artifacts(
        [_artifact(tmp_path_factory)], [_profile(tmp_path)], eval_x=None, eval_y=None, cfg=cfg, workdir=tmp_path
    )
    assert row.ok is False and row.attempts == 3 and "device offline" in row.error
    assert len(fake_adb.read_text().splitlines()) == 3


def test_binary_failure_keeps_the_output_tail(fake_adb: Path, tmp_path: Path) -> None:
    from edgecompress.devices.transports import ADBTransport, AgentJob

    missing = tmp_path / "ghost.onnx"  # never pushed: the stand-in binary fails like the real one would
    job = AgentJob(missing, (), "onnxruntime", None, (), batch_sizes=(1,))
    res = ADBTransport(_profile(tmp_path)).run(job, local_dir=tmp_path / "out", timeout_s=30)
    assert res["ok"] is False and "failed to load model ghost.onnx" in res["error"]


def test_parse_outputs() -> None:
    m = parse_benchmark_output("onnxruntime_perf_test", PERF_TEST_OUTPUT.format(n=100, total=0.2, mean_ms=2.0), 1)
    assert (m["p50"], m["p90"], m["p99"], m["mean"], m["iterations"]) == pytest.approx((1.9, 2.3, 3.1, 2.0, 100))
    assert m["peak_rss_mb"] == pytest.approx(30.0)
    et = "I 00:00:01.2 executorch:executor_runner.cpp:222] Model executed successfully 20 time(s) in 50.0 ms."
    m = parse_benchmark_output("executor_runner", et, 1)
    assert m["mean"] == pytest.approx(2.5) and m["p50"] is None and m["iterations"] == 20
    with pytest.raises(TransportError, match="could not parse"):
        parse_benchmark_output("onnxruntime_perf_test", "Segmentation fault", 1)
