"""Tests of the performance benchmark scripts (benchmarks/_common.py, deploy_speed.py, roofline.py, int8_settings.py).

No timing assertions: the arithmetic of the tables, the peak-GEMM ONNX builders (valid ONNX that the real runtimes
run, with the right numbers and, for INT8, an integer kernel after ORT's fusion), the PyTorch adapter, round-robin
bookkeeping, the per-node MAC count of the profiler, and (slow) both scripts end to end on a tiny real run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import _common as c
from benchmarks import _floor, deploy_speed, int8_settings, roofline
from edgecompress.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------------------------------
# Arithmetic


def test_parse_batches_sorts_and_dedups() -> None:
    assert c.parse_batches("32,1,1") == [1, 32]
    assert c.parse_batches(" 8 ") == [8]


@pytest.mark.parametrize("bad", ["", "a,b", "0,32", "-1"])
def test_parse_batches_rejects_bad_input(bad: str) -> None:
    with pytest.raises(ConfigError, match="--batches"):
        c.parse_batches(bad)


def test_mac_arithmetic() -> None:
    assert c.gemm_macs(128, 512, 256) == 128 * 512 * 256
    assert c.macs_per_second(2_000_000, 500.0) == pytest.approx(1e9)
    assert c.macs_per_second(None, 500.0) is None
    assert c.fraction_of_peak(30e9, 100e9) == pytest.approx(0.3)
    assert c.fraction_of_peak(1.0, 0.0) is None
    assert c.fraction_of_peak(None, 1.0) is None


def test_paired_speedup_is_median_of_per_round_ratios() -> None:
    # round 2 hit the model with noise only; the median of ratios ignores it, unlike a ratio of means
    teacher = [10.0, 10.0, 10.0]
    model = [1.0, 5.0, 1.0]
    assert c.paired_speedup(teacher, model) == pytest.approx(10.0)
    assert c.paired_speedup([1.0, 0.0], [0.0, 1.0]) is None
    assert c.median_or_none([None, 3.0, 1.0]) == 2.0
    assert c.median_or_none([None]) is None


def test_summarize_rounds_medians_and_speedup() -> None:
    ref = [{"p50": 20.0, "p90": 22.0, "throughput": 50.0}, {"p50": 40.0, "p90": 44.0, "throughput": 25.0}]
    res = [{"p50": 2.0, "p90": 3.0, "throughput": 500.0}, {"p50": 2.0, "p90": 2.5, "throughput": 500.0}]
    s = c.summarize_rounds(res, reference=ref)
    assert s["p50"] == 2.0 and s["p90"] == pytest.approx(2.75) and s["throughput"] == 500.0
    assert s["speedup"] == pytest.approx(15.0)  # median of 10x and 20x
    assert s["spread"] == 0.0 and s["rounds"] == 2


def test_table_and_formatting() -> None:
    table = c.markdown_table(["a", "b|c"], [[1, None], ["x|y", 2]])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0] == "| a | b\\|c |" and lines[1] == "|---|---|"
    assert "x\\|y" in lines[3]
    assert c.fmt(None) == "—"
    assert c.fmt(0.1234, ".1f", 100, "%") == "12.3%"


@pytest.mark.parametrize(
    ("stored", "used", "label"),
    [
        ("fp32", "as-stored", "fp32"),
        ("fp32", None, "fp32"),
        ("fp32", "f32", "fp32"),
        ("fp32", "<Type: 'bfloat16'>", "fp32 (runs bf16)"),
        ("int8", "bf16", "int8 (other ops bf16)"),
    ],
)
def test_precision_label(stored: str, used: str | None, label: str) -> None:
    assert c.precision_label(stored, used) == label


def test_machine_info_names_the_cpu() -> None:
    info = c.machine_info(threads=1)
    assert info["cpu_model"] and info["cpu_count"] >= 1 and info["threads_used"] == 1
    assert "threads used 1" in c.machine_line(info)


@pytest.mark.parametrize("script", [deploy_speed, roofline, int8_settings])
def test_scripts_refuse_a_folder_that_is_not_a_run(script, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    assert script.main([str(tmp_path)]) == 2  # the pipeline's run loader refuses it: one line, exit 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(tmp_path) in err[-1] and "Traceback" not in "".join(err)


def test_scripts_run_as_modules_of_the_benchmarks_package() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.deploy_speed", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "run_dir" in out.stdout and "--batches" in out.stdout


# ----------------------------------------------------------------------------------------------------------------------
# Peak-GEMM models through the real runtimes


def _init(model, name: str) -> np.ndarray:  # noqa: ANN001
    from onnx import numpy_helper

    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def test_fp32_gemm_model_runs_and_is_correct(tmp_path: Path) -> None:
    from edgecompress.devices.host_runtimes import get_runtime

    m, k, n = 8, 32, 16
    model = c.gemm_fp32_model(m, k, n)
    path = c.save_model(model, tmp_path / "g.onnx")
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    for name in ("onnxruntime", "openvino"):
        rt = get_runtime(name, precision="f32") if name == "openvino" else get_runtime(name)
        rt.load(path, threads=1)
        np.testing.assert_allclose(rt.run(x), x @ _init(model, "w"), rtol=1e-4, atol=1e-4)


def test_int8_gemm_model_runs_as_an_integer_kernel(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    m, k, n = 8, 64, 16
    model = c.gemm_int8_qdq_model(m, k, n)
    path = c.save_model(model, tmp_path / "g8.onnx")
    x = np.random.default_rng(2).uniform(-0.5, 0.5, (m, k)).astype(np.float32)
    xs, xz = float(_init(model, "x_scale")), int(_init(model, "x_zp"))
    xq = np.clip(np.round(x / xs) + xz, 0, 255)
    ref = ((xq - xz) * xs) @ (_init(model, "w_q").astype(np.float32) * _init(model, "w_scale"))
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-3, atol=1e-3)
    ops = {nd.op_type for nd in onnx.load(so.optimized_model_filepath).graph.node}
    assert ops & {"MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger"}, ops
    from edgecompress.devices.host_runtimes import get_runtime

    rt = get_runtime("openvino")
    rt.load(path, threads=1)
    np.testing.assert_allclose(rt.run(x), ref, rtol=0.05, atol=0.05)  # bf16 parts on some CPUs


def test_profile_ort_counts_gemm_macs(tmp_path: Path) -> None:
    m, k, n = 4, 32, 8
    path = c.save_model(c.gemm_int8_qdq_model(m, k, n), tmp_path / "g8.onnx")
    x = np.zeros((m, k), np.float32)
    prof = roofline.profile_ort(path, x, threads=1, runs=2, workdir=tmp_path)
    gemm = [nd for nd in prof["nodes"] if nd["macs"]]
    assert gemm and gemm[0]["macs"] == c.gemm_macs(m, k, n)
    assert prof["total_us"] > 0 and sum(prof["optimized_ops"].values()) >= 1


def test_profile_ov_reports_kernels(tmp_path: Path) -> None:
    path = c.save_model(c.gemm_fp32_model(4, 16, 8), tmp_path / "g.onnx")
    prof = roofline.profile_ov(path, np.zeros((4, 16), np.float32), threads=1, runs=2)
    assert prof["layers"] and all("exec" in layer for layer in prof["layers"])


# ----------------------------------------------------------------------------------------------------------------------
# PyTorch adapter, round-robin, verdicts


def test_torch_runtime_and_round_robin_bookkeeping() -> None:
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    rt = c.TorchRuntime(lin)
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(rt.run(x), lin(torch.from_numpy(x)).detach().numpy(), rtol=1e-6)
    assert rt.info()["runtime"] == "pytorch"
    calls: list[str] = []

    def fake_measure(runtime, x, **kw):  # noqa: ANN001, ANN003, ANN202 - records the order only
        calls.append(runtime.inner)  # round_robin wraps each runtime in a CpuTimer
        return {"p50": 1.0, "p90": 1.0, "throughput": float(len(x)), "batch": len(x)}

    entries = [c.Entry("a", "A", "fp32"), c.Entry("b", "B", "fp32"), c.Entry("c", "C", "int8")]
    out = c.round_robin(entries, {1: x[:1], 2: x}, rounds=3, min_time_s=0.0, measure=fake_measure)
    assert set(out) == {(n, b) for n in "abc" for b in (1, 2)}
    assert all(len(v) == 3 for v in out.values())
    assert calls[:3] == ["A", "B", "C"] and calls[6:9] == ["B", "C", "A"]  # order rotates each round


def test_round_robin_with_the_real_harness() -> None:
    import torch

    rt = c.TorchRuntime(torch.nn.Linear(4, 2))
    out = c.round_robin([c.Entry("lin", rt, "fp32")], {3: np.ones((3, 4), np.float32)}, rounds=2, min_time_s=0.001)
    rounds = out[("lin", 3)]
    assert len(rounds) == 2 and all(r["batch"] == 3 and r["p50"] > 0 for r in rounds)
    assert all(r["cpu_p50"] >= 0 and r["cpu_min"] <= r["cpu_p50"] for r in rounds)


def _row(name: str, role: str, acc: float, speedup: float) -> dict:
    return {"name": name, "role": role, "accuracy": acc, "speedup": {32: speedup}, "speedup_ort": {32: speedup / 4}}


def test_goal_verdict() -> None:
    rows = [_row("teacher", "teacher", 0.92, 1.0), _row("student", "student", 0.91, 5.0)]
    met = deploy_speed.goal_verdict(
        [*rows, _row("int8", "artifact", 0.91, 25.0), _row("fp32", "artifact", 0.91, 9.0)], 0.92
    )
    assert met["met"] and met["best"] == "int8" and met["speedup_vs_ort_teacher"] == pytest.approx(6.25)
    slow = deploy_speed.goal_verdict([*rows, _row("int8", "artifact", 0.91, 12.0)], 0.92)
    assert not slow["met"] and slow["within_accuracy"]
    # the fastest artifact loses too much accuracy: the verdict picks the best one within bounds, and fails
    lossy = deploy_speed.goal_verdict(
        [*rows, _row("int8", "artifact", 0.80, 40.0), _row("fp32", "artifact", 0.91, 15.0)], 0.92
    )
    assert not lossy["met"] and lossy["best"] == "fp32"
    assert lossy["student_accuracy_drop"] == pytest.approx(0.01)


def test_roofline_fractions() -> None:
    assert roofline.peak_class("int8") == "int8" and roofline.peak_class("fp16") == "fp32"
    art = [{"batch": 32, "p50": 1.0, "min": 0.5}, {"batch": 32, "p50": 2.0, "min": 0.8}]
    peak = [{"p50": 1.0, "min": 0.5}, {"p50": 1.0, "min": 0.6}]
    # 1e6 MACs/sample x 32 per 1 ms = 32 GMAC/s vs 100e6 MACs per 1 ms = 100 GMAC/s -> 0.32; round 2 -> 0.16
    assert roofline.per_round_fraction(art, peak, 1_000_000, 100_000_000) == pytest.approx(0.24)
    assert roofline.best_fraction(art, peak, 1_000_000, 100_000_000) == pytest.approx(0.32)


def test_batch1_floor_ratios_per_round() -> None:
    art = c.Entry("onnx-int8", None, "int8", 2_000_000, {"runtime": "onnxruntime"})
    peak = c.Entry("peak", None, "int8", 100_000_000, {"runtime": "onnxruntime"})
    # round 1: peak 100e6 MACs in 1 ms -> 2e6 MACs take 0.02 ms; identity 0.01 -> floor 0.03, p50 0.06 -> 2x
    # round 2: peak twice as slow -> 0.04 ms; identity 0.02 -> floor 0.06, p50 0.09 -> 1.5x
    row = _floor.floor_row(
        art, [{"p50": 0.06}, {"p50": 0.09}], [{"p50": 0.01}, {"p50": 0.02}], peak, [{"p50": 1.0}, {"p50": 2.0}]
    )
    assert row["over_floor"] == pytest.approx(1.75) and row["over_per_call"] == pytest.approx(5.25)
    assert row["compute_ms"] == pytest.approx(0.03) and row["identity_ms"] == pytest.approx(0.015)
    slow = {**row, "name": "onnx-fp32", "over_floor": 3.0}
    ov = {**row, "name": "openvino-int8", "runtime": "openvino", "over_floor": 2.5}
    assert _floor.floor_goal([row, slow])["met"]  # the runtime's best artifact counts
    goal = _floor.floor_goal([row, slow, ov])
    assert not goal["met"] and goal["best"]["openvino"]["name"] == "openvino-int8"


def test_identity_model_is_a_per_call_floor_in_onnxruntime(tmp_path: Path) -> None:
    from edgecompress.devices.host_runtimes import get_runtime

    path = c.save_model(c.identity_model((3, 8, 8)), tmp_path / "identity.onnx")
    rt = get_runtime("onnxruntime")
    rt.load(path, threads=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(rt.run(x), x)


def test_rgb_workload_tints_and_upscales() -> None:
    from benchmarks import rgb_workload

    gray = np.zeros((4, 28, 28), np.uint8)
    gray[:, 8:20, 8:20] = 255
    rgb = rgb_workload.tint(gray, np.random.default_rng(0), size=64)
    assert rgb.shape == (4, 64, 64, 3) and rgb.dtype == np.uint8
    garment, background = rgb[:, 28:36, 28:36].mean((1, 2)), rgb[:, :4, :4].mean((1, 2))
    assert (garment > background).all()  # the garment is brighter than its background in every channel
    assert np.ptp(garment, axis=1).max() > 20  # and coloured: the channels differ


# ----------------------------------------------------------------------------------------------------------------------
# End to end on a tiny real run (slow: trains two tiny models on digits and exports them)

TINY = """
name: perf-tiny
seed: 0
data: {dataset: digits, val_fraction: 0.15, calib_size: 64, test_fraction: 0.25}
teacher:
  model: {family: cnn, params: {channels: [8, 16]}}
  train: {epochs: 5, batch_size: 64, lr: 0.05, warmup_epochs: 0}
distill:
  student: {prune_ratio: 0.5, name: student}
  assistants: none
  train: {epochs: 5, batch_size: 64, lr: 0.05, warmup_epochs: 0}
  max_accuracy_drop: 1.0  # a timing test: the quality gate has its own tests
calibration: {temperature_scaling: true}
export: {formats: ["onnx:fp32", "onnx:int8", "openvino:int8"], calib_samples: 64, max_accuracy_drop: 1.0}
benchmark: {devices: [local], batch_sizes: [1], min_time_s: 0.0, min_iters: 1, repeats: 1, eval_samples: 32}
bundle: {enabled: false}
"""


@pytest.mark.slow
def test_both_scripts_on_a_tiny_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from edgecompress.config import load_config
    from edgecompress.pipeline import load_run, run_pipeline

    torch.set_num_threads(1)
    (tmp_path / "tiny.yaml").write_text(TINY)
    run_dir = tmp_path / "run"
    run_pipeline(load_config(tmp_path / "tiny.yaml"), run_dir, progress=False)
    names = [a.name for a in load_run(run_dir).artifacts if a.ok]  # the run as the scripts read it
    assert "onnx-fp32" in names and "onnx-int8" in names
    common = ["--threads", "1", "--rounds", "1", "--min-time", "0.001"]
    assert (
        deploy_speed.main(
            [str(run_dir), "--batches", "1,4", "--eval-samples", "40", "--json", str(tmp_path / "d.json"), *common]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert all(f"| {n} |" in out for n in [*names, "teacher", "student", "teacher-onnx-fp32"]) and "Goal" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["eval_samples"] == 40 and report["rows"][0]["speedup"]["1"] == pytest.approx(1.0)
    assert (
        roofline.main(
            [
                str(run_dir),
                "--gemm",
                "16,64,64",
                "--batch",
                "4",
                "--profile-runs",
                "2",
                "--json",
                str(tmp_path / "r.json"),
                *common,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Peak GEMM" in out and "Profile of onnx-int8" in out
    roof = json.loads((tmp_path / "r.json").read_text())
    assert {r["name"] for r in roof["artifacts"]} == set(names)
    assert all(r["fraction"] is not None and r["fraction"] > 0 for r in roof["artifacts"])
    floors = {r["name"]: r for r in roof["floors"]}
    assert set(floors) == set(names) and all(r["identity_ms"] > 0 and r["over_floor"] > 0 for r in floors.values())
    assert "Batch 1 against the runtime's own floor" in out
    assert deploy_speed.main([str(tmp_path)]) == 2  # not a run directory: one-line error, exit 2
    assert int8_settings.main([str(run_dir), "--batch", "4", "--json", str(tmp_path / "i.json"), *common]) == 0
    out = capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads((tmp_path / "i.json").read_text())["rows"]}
    assert set(rows) == {"onnx-fp32", "openvino-fp32", *(v.name for v in int8_settings.VARIANTS)}
    assert all(0 <= r["accuracy"] <= 1 and r["timing"]["p50"] > 0 for r in rows.values())
    assert (
        rows["ort-int8-stem-float"]["vs"] == "ort-int8-stem-int8" and rows["ort-int8-stem-float"]["timing"]["speedup"]
    )
    assert "| ov-int8-full-bc | openvino | NNCF full bias correction | yes |" in out
    assert int8_settings.main([str(tmp_path)]) == 2
