"""Every config in ``examples/`` runs as shipped (in a quick mode), and the packaged presets equal their examples.

Quick mode changes only budgets — epochs, steps, sample counts, synthesis batches, timing, the number of budget
candidates (``target:``, measured into a latency cache in the test's folder) — and keeps the formats to ONNX Runtime
(FP32 + INT8); everything else (dataset, models, pruning, losses, calibration, the data-free
teacher and val set from the documented first step) is the example's own. A new file in ``examples/`` is picked up
here; one whose first step is not known to this test fails it rather than being skipped.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PRESETS = ROOT / "src" / "edgecompress" / "pipeline" / "presets"
CONFIGS = sorted(EXAMPLES.glob("*.yaml"))

# Budget keys and the quick value each one gets (a key the example does not set is left at its default, except
# where a default would be slow: those are set even when absent).
TRAIN = {"epochs": 6, "max_steps_per_epoch": 10, "warmup_epochs": 0}  # enough to leave chance (the gate)
QUICK: dict[str, Any] = {
    "data": {"max_train": 600, "max_test": 200, "calib_size": 64},
    "teacher": {"train": TRAIN},
    "distill": {
        "train": TRAIN,
        "datafree": {"rounds": 3, "warmup_rounds": 1, "batch_size": 16, "k_inner_steps": 1, "generator_width": 8,
                     "student_steps_per_round": 2, "student_batch_size": 16},
    },
    "export": {"formats": ["onnx:fp32", "onnx:int8"], "calib_samples": 64, "max_accuracy_drop": 1.0},
    "target": {"candidates": 3, "cache_dir": "latency-cache"},
    "benchmark": {"batch_sizes": [1], "min_time_s": 0.0, "min_iters": 1, "warmup_iters": 1, "repeats": 1,
                  "eval_samples": 64},
}  # fmt: skip


def quick(raw: dict[str, Any]) -> dict[str, Any]:
    """The example with its budgets cut to :data:`QUICK` (a section the example lacks is not added)."""
    out = copy.deepcopy(raw)
    data = out.get("data", {})
    for key, value in QUICK["data"].items():
        if data.get("dataset") == "none" and key != "max_test":
            continue  # data-free: no training data to cut
        if key != "calib_size" or data.get("calib_size", 512) > value:
            data[key] = value
    deploy_only = str((out.get("distill") or {}).get("student", "")).lower() == "none"  # nothing is distilled
    for stage in ("teacher", "distill"):
        section = out.get(stage)
        if section is None or (stage == "distill" and deploy_only):
            continue
        if "checkpoint" in section:  # a given teacher is not trained
            continue
        section["train"] = {**section.get("train", {}), **TRAIN}
    datafree = (out.get("distill") or {}).get("datafree")
    if datafree is not None:
        datafree.update(QUICK["distill"]["datafree"])
    if "distill" in out and not deploy_only:  # a budget this small is not judged by the quality gate (its own tests)
        out["distill"]["max_accuracy_drop"] = 1.0
    if "target" in out:  # relative: resolved against the test's folder, so no run touches ~/.cache
        out["target"] = {**out["target"], **QUICK["target"]}
    out["export"] = {**out.get("export", {}), **QUICK["export"]}
    out["benchmark"] = {**out.get("benchmark", {}), **QUICK["benchmark"], "devices": ["local"]}
    return out


def first_step(config: Path, folder: Path) -> None:
    """Run the documented first step of ``config`` (the commands in its header) with its outputs in ``folder``."""
    steps = {
        "datafree.yaml": "make_teacher.py",
        "bring_your_own.yaml": "train_my_teacher.py",
        "deploy_only.yaml": "train_my_teacher.py",
    }
    if config.name in steps:
        cmd = [sys.executable, str(EXAMPLES / steps[config.name]), "--out", str(folder), "--epochs", "3"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        return
    header = [line for line in config.read_text().splitlines() if line.startswith("#")]
    assert not any("first step" in line.lower() for line in header), f"{config.name}: teach test_examples its step"


@pytest.mark.slow  # each example trains, exports, benchmarks and bundles: tens of seconds each on 2 cores
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_example_runs_in_quick_mode(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.syspath_prepend(str(EXAMPLES))  # the user's factory module (my_models), as PYTHONPATH=examples does
    from edgecompress.config import parse_config
    from edgecompress.pipeline import run_pipeline

    torch.set_num_threads(1)
    first_step(config, tmp_path)
    raw = yaml.safe_load(config.read_text())
    # relative paths (val.npz, teacher.pt) resolve against the folder the first step wrote to, as against examples/
    cfg = parse_config(quick(raw), source=config.name, base_dir=tmp_path)
    paths = run_pipeline(cfg, tmp_path / "run", progress=False)
    report = tmp_path / "run" / "report.json"
    assert report.is_file() and (tmp_path / "run" / "report.md").is_file()
    models = {m["name"]: m for m in json.loads(report.read_text())["models"]}
    assert {"teacher", "onnx-fp32", "onnx-int8"} <= set(models), sorted(models)
    assert any(m["role"] == "student" for m in models.values())
    assert paths


def test_quick_mode_keeps_what_the_example_says() -> None:
    """Only budgets change: models, losses, pruning, calibration and the dataset are the example's."""
    for config in CONFIGS:
        raw = yaml.safe_load(config.read_text())
        fast = quick(raw)
        assert fast["data"]["dataset"] == raw["data"]["dataset"]
        assert fast["teacher"]["model"] == raw["teacher"]["model"]
        assert fast["distill"].get("student") == raw["distill"].get("student")
        assert fast["distill"].get("loss") == raw["distill"].get("loss")
        assert fast.get("calibration") == raw.get("calibration")
        if "target" in raw:  # the budget itself (device, latency, accuracy) is the example's
            keep = ("device", "batch_size", "latency_ms", "size_kb", "speedup", "max_accuracy_drop", "margin")
            assert {k: fast["target"].get(k) for k in keep} == {k: raw["target"].get(k) for k in keep}


def test_datafree_example_normalization_is_the_teachers() -> None:
    """datafree.yaml must state the normalization make_teacher.py trains with (a data-free run cannot compute it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_teacher", EXAMPLES / "make_teacher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    raw = yaml.safe_load((EXAMPLES / "datafree.yaml").read_text())
    assert raw["data"]["mean"] == [module.MEAN] and raw["data"]["std"] == [module.STD]
    assert raw["teacher"]["model"] == {"family": "cnn", "params": {"channels": module.CHANNELS}}


@pytest.mark.parametrize("preset", sorted(PRESETS.glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_are_the_examples(preset: Path) -> None:
    """``edgecompress demo`` / ``preset_path`` ship copies of examples/: they must stay the same file, byte for byte."""
    example = EXAMPLES / preset.name
    assert example.is_file(), f"preset {preset.name} has no examples/{preset.name}"
    assert preset.read_bytes() == example.read_bytes(), f"{preset} and {example} differ: edit both (or copy one)"


def test_preset_path_serves_the_example() -> None:
    from edgecompress.pipeline import preset_path

    for name in ("digits", "fashion_mnist"):  # the presets `edgecompress demo` and the README name
        assert preset_path(name).read_bytes() == (EXAMPLES / f"{name}.yaml").read_bytes()
