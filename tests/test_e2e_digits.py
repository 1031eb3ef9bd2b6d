"""End to end on scikit-learn's digits: config → teacher → student → calibrated → exported → benchmarked → bundled.

One real run (module-scoped fixture, ~1-2 minutes on 2 cores) checked from several sides, then a rerun that must reuse
every stage.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = [
    "name",
    "role",
    "format",
    "precision",
    "params",
    "macs",
    "size_bytes",
    "accuracy",
    "ece",
    "nll",
    "brier",
    "temperature",
    "latency_ms",
    "device",
]


EXAMPLE = ROOT / "examples" / "digits.yaml"


def _run(out: Path, config: Path = EXAMPLE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", "run", str(config), "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _variant(tmp_path: Path, edit) -> Path:
    """The digits example with ``edit(cfg)`` applied, written to a YAML file."""
    import yaml

    cfg = yaml.safe_load(EXAMPLE.read_text())
    edit(cfg)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "digits"
    res = _run(out)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


@pytest.fixture(scope="module")
def run_dir(first_run):
    return first_run[0]


def test_progress_lines_on_stdout(first_run):
    """Without a terminal (CI, a redirected log) stage and epoch lines still show, on stdout (stderr is for errors)."""
    _, res = first_run
    for line in ("stage teacher: running", "stage teacher: done in", "stage export: done in", "epoch 1/"):
        assert line in res.stdout, (line, res.stdout[-2000:])
    assert "stage teacher" not in res.stderr


@pytest.fixture(scope="module")
def report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def test_report_files(run_dir):
    for name in ("report.json", "report.md", "report.html", "config.resolved.yaml"):
        assert (run_dir / name).is_file(), name


def test_models_have_public_fields(report):
    roles = {m["role"] for m in report["models"]}
    assert {"teacher", "student", "artifact"} <= roles
    for m in report["models"]:
        missing = [k for k in REQUIRED if k not in m]
        assert not missing, (m["name"], missing)


def test_student_is_compact_and_calibrated(report):
    models = {m["name"]: m for m in report["models"]}
    teacher, student = models["teacher"], models["student"]
    assert student["macs"] <= teacher["macs"] / 5
    assert student["accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert student["ece_before_ts"] is not None and student["ece"] is not None
    assert student["temperature"] > 0


def test_artifacts_measured_through_runtimes(report):
    arts = [m for m in report["models"] if m["role"] == "artifact"]
    names = {a["name"] for a in arts}
    assert {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"} <= names
    student = next(m for m in report["models"] if m["name"] == "student")
    for a in arts:
        assert a["latency_ms"]["1"]["p50"] > 0, a["name"]
        assert a["accuracy"] is not None and a["ece"] is not None
    fp32 = next(a for a in arts if a["name"] == "onnx-fp32")
    assert abs(fp32["accuracy"] - student["accuracy"]) < 1e-3  # the folded T does not change the argmax
    assert fp32["parity_max_abs_diff"] < 1e-3
    int8 = next(a for a in arts if a["name"] == "onnx-int8")
    assert student["accuracy"] - int8["accuracy"] <= 0.02


def test_bundles_verify_and_predict(run_dir):
    from edgecompress.bundle import load_bundle, verify_bundle

    zips = sorted((run_dir / "bundles").glob("*.zip"))
    assert zips
    for z in zips:
        assert verify_bundle(z).labels
    from edgecompress.config import load_config
    from edgecompress.data import load_splits

    splits = load_splits(load_config(run_dir / "config.resolved.yaml").data, seed=0)
    with load_bundle(run_dir / "bundles" / "onnx-int8") as predictor:
        probs = predictor.predict(splits.test.x[:64])
    assert probs.shape == (64, 10) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (probs.argmax(1) == splits.test.y[:64]).mean() > 0.8


def test_rerun_reuses_every_stage(run_dir, report):
    res = _run(run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads((run_dir / "report.json").read_text())
    assert all(s["cached"] for s in again["stages"]), again["stages"]
    acc = {m["name"]: m["accuracy"] for m in report["models"]}
    assert {m["name"]: m["accuracy"] for m in again["models"]} == acc


def test_bench_local_and_over_ssh_to_localhost(run_dir, tmp_path):
    """`edgecompress bench RUN --device local --device <ssh profile>`: the agent measures on both, metrics come back."""
    import shutil

    import yaml

    from conftest import NO_SSHD, SSHD, Sshd

    if not SSHD.is_file() or shutil.which("ssh") is None:
        pytest.skip(NO_SSHD)
    server = Sshd(tmp_path / "sshd")
    try:
        profile = server.profile(name="loopback", runtimes=["onnxruntime", "openvino"], formats=["onnx:*"])
        path = tmp_path / "loopback.yaml"
        path.write_text(yaml.safe_dump(profile.model_dump(mode="json")))
        res = subprocess.run(
            [sys.executable, "-m", "edgecompress", "bench", str(run_dir), "--device", "local", "--device", str(path)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.kill()
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    rows = {(r["device"], r["artifact"]): r for r in report["benchmarks"]}
    for device in ("local", "loopback"):
        row = rows[(device, "onnx-int8")]
        assert row["ok"], row
        assert row["accuracy"] > 0.8 and row["ece"] is not None
        assert row["latency_ms"]["1"]["p50"] > 0
    assert ("loopback", "openvino-int8") not in rows  # the profile accepts only ONNX
    assert "loopback" in (run_dir / "report.md").read_text()


def test_formats_all_reuses_training_and_covers_every_format(run_dir, tmp_path):
    """`export.formats: all` on the same run: training stages are reused; every format that runs here is verified."""
    res = _run(run_dir, _variant(tmp_path, lambda cfg: cfg["export"].update(formats="all")))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    cached = {s["name"]: s["cached"] for s in report["stages"]}
    assert cached["teacher"] and cached["distill"] and cached["calibrate"] and not cached["export"]
    arts = {m["name"]: m for m in report["models"] if m["role"] == "artifact"}
    expected = {
        "onnx-fp32",
        "onnx-fp16",
        "onnx-int8",
        "openvino-fp32",
        "openvino-fp16",
        "openvino-int8",
        "ort-fp32",
        "ort-int8",
        "tensorrt-fp16",
        "tensorrt-int8",
    }
    assert expected <= set(arts), sorted(arts)
    for name, a in arts.items():
        assert a["parity_max_abs_diff"] is not None, name
        if a["format"] != "tensorrt":  # TensorRT needs an NVIDIA GPU: evaluated on the device, noted here
            assert a["accuracy"] is not None and a["latency_ms"], name
        else:
            assert a["accuracy"] is None and any("not evaluated here" in n for n in a["notes"])
    kit = run_dir / "bundles" / "tensorrt-int8" / "model"  # ONNX + calibration cache + build recipe
    assert (kit / "model.recipe.json").is_file() and (kit / "calibration.cache").is_file()
    recipe = json.loads((kit / "model.recipe.json").read_text())
    assert "trtexec" in json.dumps(recipe)


def test_assistants_planned_lists_every_chain_member(run_dir, tmp_path):
    """`assistants: planned` on the same run: the teacher is reused, a TA is cut and trained, the chain is reported."""

    def edit(cfg: dict) -> None:
        cfg["distill"].update(assistants="planned", n_assistants=1)
        cfg["export"]["formats"] = ["onnx:fp32"]

    res = _run(run_dir, _variant(tmp_path, edit))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert {s["name"]: s["cached"] for s in report["stages"]}["teacher"]
    chain = [m for m in report["models"] if m["role"] in ("teacher", "assistant", "student")]
    assert [m["role"] for m in chain] == ["teacher", "assistant", "student"]
    teacher, ta, student = chain
    assert teacher["macs"] > ta["macs"] > student["macs"]
    assert ta["parent"] == "teacher" and student["parent"] == ta["name"]
    for m in (ta, student):
        assert m["ece_before_ts"] is not None and m["ece"] is not None and m["temperature"] > 0
        assert 0.5 < m["fidelity_agreement"] <= 1 and m["fidelity_kl"] >= 0


def test_recommendation_compares_on_the_images_the_devices_evaluated(run_dir, tmp_path):
    """Devices evaluate the first eval_samples test images: the accuracy bound comes from the student on those."""
    import re

    res = _run(run_dir, _variant(tmp_path, lambda cfg: cfg["benchmark"].update(eval_samples=120)))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert [s["name"] for s in report["stages"] if not s["cached"]] == ["benchmark"]
    rec = report["recommendations"][0]
    found = re.search(r"calibrated FP32 student on the same 120 test images ([0-9.]+)%", rec["reason"])
    assert found, rec["reason"]
    fp32 = next(r for r in report["benchmarks"] if r["artifact"] == "onnx-fp32")
    assert fp32["eval_samples"] == 120
    assert float(found.group(1)) == pytest.approx(100 * fp32["accuracy"], abs=0.01)  # same images, same argmax
    # `edgecompress bench` on the run moved elsewhere (the original gone): its recorded paths are re-rooted, and the
    # student is rebuilt from the calibrate stage for the same reference
    moved, away = tmp_path / "moved", tmp_path / "away"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns(".edgecompress.lock"))
    run_dir.rename(away)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "edgecompress", "bench", str(moved), "--device", "local"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        away.rename(run_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert str(run_dir) not in (moved / "report.md").read_text()
    again = json.loads((moved / "report.json").read_text())["recommendations"][0]["reason"]
    assert found.group(0) in again, again
