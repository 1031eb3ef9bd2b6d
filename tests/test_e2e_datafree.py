"""Data-free end to end: a digits teacher checkpoint and a small labelled val .npz, no training data.

`data: {dataset: none}` → FastDFKD synthesizes the transfer set from the teacher → the student is calibrated on the
small val set, exported (INT8 calibrated on the synthesized pool's sample), benchmarked and bundled; the report carries
the plan, the speed-up estimate, the per-class sample grid and the accuracy-vs-rounds curve. Without a labelled set
the run still ships bundles, and the report says ECE was not measured.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _denormalize(x: np.ndarray, pre) -> np.ndarray:
    mean = np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    return np.clip(np.rint((x * std + mean) * 255), 0, 255).astype(np.uint8)[:, 0]  # N,H,W grayscale


@pytest.fixture(scope="module")
def datafree_run(tmp_path_factory):
    import torch

    from edgecompress.data import load_splits
    from edgecompress.data.config import DataConfig
    from edgecompress.distill import train_model
    from edgecompress.distill.config import LossConfig, TrainConfig
    from edgecompress.models import ModelSpec, build_model, save_state

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("datafree")
    splits = load_splits(DataConfig(dataset="digits", calib_size=100), seed=0)
    spec = {"family": "cnn", "params": {"channels": [16, 32, 64]}}
    teacher = build_model(ModelSpec(**spec), in_channels=1, num_classes=10, input_size=(8, 8))
    teacher = train_model(
        teacher,
        splits,
        TrainConfig(epochs=6, batch_size=64, warmup_epochs=0),
        workdir=root / "t",
        seed=0,
        loss=LossConfig(kind="ce"),
        progress=False,
    ).model
    save_state(teacher, root / "teacher.pt")
    pre = splits.preprocess
    # the user's only data: a small labelled set, as raw uint8 images (the teacher's training data is not given)
    np.savez(
        root / "val.npz",
        x_val=_denormalize(splits.val.x, pre),
        y_val=splits.val.y,
        x_test=_denormalize(splits.test.x, pre),
        y_test=splits.test.y,
    )
    cfg = {
        "name": "datafree-digits",
        "seed": 0,
        "data": {"dataset": "none", "path": "val.npz", "mean": pre.mean, "std": pre.std},
        "teacher": {"model": spec, "checkpoint": "teacher.pt"},
        "distill": {
            "student": {"prune_ratio": 0.3},
            "max_accuracy_drop": 0.3,  # a data-free student at this budget is ~20 points below (the gate's own tests)
            "datafree": {
                "rounds": 12,
                "warmup_rounds": 2,
                "batch_size": 32,
                "k_inner_steps": 2,
                "flip": False,
                "student_steps_per_round": 10,
                "student_batch_size": 32,
                "generator_width": 8,
                "eval_every": 4,
            },
        },
        "export": {"formats": ["onnx:fp32", "onnx:int8"], "max_accuracy_drop": 0.05},
        "benchmark": {"batch_sizes": [1], "min_time_s": 0.05, "repeats": 1, "eval_samples": 200},
    }
    _run(root, cfg, "run")
    unlabelled = {**cfg, "data": {k: v for k, v in cfg["data"].items() if k != "path"}}
    unlabelled["distill"] = {**cfg["distill"], "datafree": {**cfg["distill"]["datafree"], "rounds": 4}}
    _run(root, unlabelled, "run-unlabelled")
    return root / "run"


def _run(root: Path, cfg: dict, name: str) -> None:
    (root / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "edgecompress", "run", str(root / f"{name}.yaml"), "--out", str(root / name)]
    res = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]


def test_report_has_student_grid_and_artifacts(datafree_run: Path):
    report = json.loads((datafree_run / "report.json").read_text())
    for figure in ("datafree_samples", "datafree_accuracy_vs_rounds"):
        assert (datafree_run / report["figures"][figure]).is_file()
    datafree = report["datafree"]
    assert datafree["method"] == "fastdfkd" and datafree["synthesis_seconds"] > 0
    assert datafree["plan"].startswith("12 rounds × k = 2") and datafree["deepinversion_estimate_speedup"] > 1
    assert [r for r, _ in datafree["curve"]] == [4, 8, 12]
    models = {m["name"]: m for m in report["models"]}
    assert models["student"]["accuracy"] is not None and models["student"]["accuracy"] > 0.2  # chance is 0.1
    assert models["student"]["macs"] < models["teacher"]["macs"]
    assert {"onnx-fp32", "onnx-int8"} <= set(models)
    md = (datafree_run / "report.md").read_text()
    assert "Data-free distillation" in md and "Speed-up against DeepInversion" in md and "Plan (from a measured" in md


def test_without_a_labelled_set_bundles_ship_and_the_report_says_ece_was_not_measured(datafree_run: Path):
    from edgecompress.bundle import verify_bundle

    run = datafree_run.parent / "run-unlabelled"
    md = (run / "report.md").read_text()
    assert "ECE was not measured" in md
    assert verify_bundle(run / "bundles" / "onnx-int8.zip").labels


def test_bundles_written(datafree_run: Path):
    from edgecompress.bundle import verify_bundle

    assert verify_bundle(datafree_run / "bundles" / "onnx-int8.zip").labels
