"""Data-free end to end: a digits teacher checkpoint and a small labelled val .npz, no training data.

`data: {dataset: none}` → FastDFKD synthesizes the transfer set from the teacher → the student is calibrated on the
small val set, exported (INT8 calibrated on the synthesized bank), benchmarked and bundled; the report carries the
sample grid.
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
            "datafree": {"synthesis_batches": 12, "batch_size": 32, "k_inner_steps": 2, "bank_size": 512},
        },
        "export": {"formats": ["onnx:fp32", "onnx:int8"], "max_accuracy_drop": 0.05},
        "benchmark": {"batch_sizes": [1], "min_time_s": 0.05, "repeats": 1, "eval_samples": 200},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecompress",
            "run",
            str(root / "cfg.yaml"),
            "--out",
            str(root / "run"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root / "run"


def test_report_has_student_grid_and_artifacts(datafree_run: Path):
    report = json.loads((datafree_run / "report.json").read_text())
    grid = report["figures"]["datafree_samples"]
    assert (datafree_run / grid).is_file()
    assert report["datafree"]["method"] == "fastdfkd" and report["datafree"]["synthesis_seconds"] > 0
    models = {m["name"]: m for m in report["models"]}
    assert models["student"]["accuracy"] is not None and models["student"]["accuracy"] > 0.2  # chance is 0.1
    assert models["student"]["macs"] < models["teacher"]["macs"]
    assert {"onnx-fp32", "onnx-int8"} <= set(models)
    assert "datafree" in (datafree_run / "report.md").read_text().lower()


def test_bundles_written(datafree_run: Path):
    from edgecompress.bundle import verify_bundle

    assert verify_bundle(datafree_run / "bundles" / "onnx-int8.zip").labels
