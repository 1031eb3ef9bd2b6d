"""benchmark_artifacts on local devices: real runtimes, rows, acceptance, concurrency across devices."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_onnx
from edgecompress.devices import agent
from edgecompress.devices.bench import benchmark_artifacts
from edgecompress.devices.config import BenchmarkConfig, DeviceProfile
from edgecompress.errors import DeviceError

CFG = BenchmarkConfig(batch_sizes=[1, 3], warmup_iters=1, min_time_s=0, min_iters=3, repeats=1, threads=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], np.ndarray, np.ndarray]:
    import openvino as ov

    onnx_path, x, _ = tiny_onnx(tmp_path_factory)
    xml = tmp_path_factory.mktemp("ir") / "tiny.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    rng = np.random.default_rng(0)
    ex, ey = rng.normal(size=(20, *x.shape[1:])).astype(np.float32), rng.integers(0, 5, 20)
    arts = [
        {"name": "tiny-onnx", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime", "model_file": onnx_path},
        {"name": "tiny-ov", "format": "openvino", "precision": "fp32", "runtime": "openvino", "model_file": xml},
    ]
    arts[0]["files"] = [onnx_path]
    arts[1]["files"] = [xml, xml.with_suffix(".bin")]
    return arts, ex, ey


def test_local_rows_have_device_measured_metrics(setup, tmp_path: Path) -> None:
    arts, x, y = setup
    cfg = CFG.model_copy(update={"eval_samples": 12})
    rows = benchmark_artifacts(arts, ["local"], eval_x=x, eval_y=y, cfg=cfg, workdir=tmp_path)
    assert [r.artifact for r in rows] == ["tiny-onnx", "tiny-ov"]
    for row in rows:
        assert row.ok, row.error
        assert set(row.latency_ms) == {1, 3} and set(row.throughput) == {1, 3}
        assert all(v is not None for v in row.latency_ms[1].model_dump().values())
        assert row.eval_samples == 12 and row.calibration_measured_on == "device"
        rt = agent.get_runtime(row.runtime, **({"precision": "f32"} if row.runtime == "openvino" else {}))
        rt.load(next(a["model_file"] for a in arts if a["name"] == row.artifact))
        expected = agent.evaluate(rt, x[:12], y[:12])[0]
        assert row.accuracy == pytest.approx(expected["accuracy"])
        assert row.nll == pytest.approx(expected["nll"], rel=1e-4)
        assert row.env["cpu"] and row.attempts == 1
    assert rows[1].inference_precision == "f32"  # an fp32 IR is measured at f32, and that is recorded
    with np.load(tmp_path / "eval.npz") as shipped:
        assert shipped["x"].shape[0] == 12


def test_devices_take_only_what_they_accept(setup, tmp_path: Path) -> None:
    arts, x, y = setup
    ov_only = DeviceProfile(name="ov-only", runtimes=["openvino"], formats=["openvino:*"])
    rows = benchmark_artifacts(arts, [ov_only], eval_x=None, eval_y=None, cfg=CFG, workdir=tmp_path)
    assert [r.artifact for r in rows] == ["tiny-ov"] and rows[0].accuracy is None and rows[0].ok


def test_duplicate_and_unknown_devices_are_refused(setup, tmp_path: Path) -> None:
    arts, _, _ = setup
    with pytest.raises(DeviceError, match="repeat"):
        benchmark_artifacts(arts, ["local", "local"], eval_x=None, eval_y=None, cfg=CFG, workdir=tmp_path)
    with pytest.raises(DeviceError, match="unknown device profile"):
        benchmark_artifacts(arts, ["nope"], eval_x=None, eval_y=None, cfg=CFG, workdir=tmp_path)


WRAPPER = """#!/bin/sh
# stand-in interpreter: records overlap per device, then waits for the other device to start (a barrier)
dir="{dir}"; me="{me}"; other="{other}"
if [ -e "$dir/running-$me" ]; then echo overlap >> "$dir/violations-$me"; fi
touch "$dir/running-$me" "$dir/started-$me"
i=0
while [ ! -e "$dir/started-$other" ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done
[ -e "$dir/started-$other" ] || echo "never saw $other" >> "$dir/violations-$me"
"{python}" "$@"; rc=$?
rm -f "$dir/running-$me"
exit $rc
"""


def test_devices_run_concurrently_one_run_at_a_time_each(setup, tmp_path: Path) -> None:
    arts, _, _ = setup
    profiles = []
    for me, other in (("a", "b"), ("b", "a")):
        script = tmp_path / f"python-{me}"
        script.write_text(WRAPPER.format(dir=tmp_path, me=me, other=other, python=sys.executable))
        script.chmod(0o755)
        profiles.append(
            DeviceProfile(
                name=f"dev-{me}",
                python=str(script),
                runtimes=["onnxruntime", "openvino"],
                formats=["onnx:*", "openvino:*"],
            )
        )
    rows = benchmark_artifacts(arts, profiles, eval_x=None, eval_y=None, cfg=CFG, workdir=tmp_path / "w")
    assert [(r.device, r.artifact) for r in rows] == [
        ("dev-a", "tiny-onnx"),
        ("dev-a", "tiny-ov"),
        ("dev-b", "tiny-onnx"),
        ("dev-b", "tiny-ov"),
    ]
    assert all(r.ok for r in rows), [r.error for r in rows]
    # each device saw the other start (concurrent), and never had two runs at once
    assert not list(tmp_path.glob("violations-*")), [p.read_text() for p in tmp_path.glob("violations-*")]
