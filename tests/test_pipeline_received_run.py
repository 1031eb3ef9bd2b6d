"""A run directory received from elsewhere is data (issue 15 findings 1 and 5, the pipeline's side).

`edgecompress bench RUN` reads only what the run holds: a record naming a path outside it is refused, an artifact
record edited to point at another artifact's model is not bundled, a broken run.json is one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgecompress.config import PipelineConfig
from edgecompress.errors import ConfigError
from edgecompress.pipeline import bench_run, run_pipeline

pytestmark = pytest.mark.slow

CFG = {
    "name": "recv",
    "data": {"dataset": "digits", "val_fraction": 0.2, "calib_size": 64, "test_fraction": 0.2, "max_train": 500},
    "teacher": {"model": {"family": "cnn", "params": {"channels": [16, 32]}},
                "train": {"epochs": 6, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0}},
    "distill": {"student": {"prune_ratio": 0.4}, "assistants": "none", "max_accuracy_drop": 0.5,
                "train": {"epochs": 6, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0}},
    "export": {"formats": ["onnx:fp32", "onnx:int8"], "calib_samples": 64, "max_accuracy_drop": 0.5},
    "benchmark": {"devices": ["local"], "batch_sizes": [1], "min_time_s": 0.01, "repeats": 2, "eval_samples": 64},
}  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recv") / "run"
    run_pipeline(PipelineConfig.model_validate(CFG), out, progress=False)
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "received"
    shutil.copytree(finished, dst, symlinks=True)
    return dst


def _edit_state(run: Path, edit) -> None:  # noqa: ANN001
    state = json.loads((run / "run.json").read_text())
    edit(state)
    (run / "run.json").write_text(json.dumps(state))


def test_a_record_outside_the_run_is_refused(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("host file")

    def point_outside(state: dict) -> None:
        state["export"]["artifacts"][0]["files"].append(str(secret))

    _edit_state(run, point_outside)
    with pytest.raises(ConfigError, match="outside the run directory"):
        bench_run(run, devices=["local"])
    assert not any("secret" in p.name for p in run.rglob("*"))


def test_an_artifact_pointing_at_another_ones_model_is_not_bundled(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)

    def swap(state: dict) -> None:
        arts = {a["name"]: a for a in state["export"]["artifacts"]}
        arts["onnx-int8"]["model_file"] = arts["onnx-fp32"]["model_file"]
        arts["onnx-int8"]["files"] = arts["onnx-fp32"]["files"]

    _edit_state(run, swap)
    paths = bench_run(run, devices=["local"])
    assert "bundle onnx-fp32" in paths and "bundle onnx-int8" not in paths
    report = json.loads((run / "report.json").read_text())
    assert any(
        w.startswith("onnx-int8: its recorded files are not in its own export folder") for w in report["warnings"]
    )


@pytest.mark.parametrize("content", ["", "{}", '{"version": 2', "[1, 2]"])
def test_a_broken_run_state_is_one_line(finished: Path, tmp_path: Path, content: str) -> None:
    run = _copy(finished, tmp_path)
    (run / "run.json").write_text(content)
    with pytest.raises(ConfigError) as err:
        bench_run(run, devices=["local"])
    assert "\n" not in str(err.value) and "run state" in str(err.value)


def test_bench_reads_no_data_outside_the_run(finished: Path, tmp_path: Path) -> None:
    """The data config names files elsewhere (here: a path that is gone); bench uses the images the run shipped."""
    run = _copy(finished, tmp_path)
    cfg = (run / "config.resolved.yaml").read_text()
    gone = tmp_path / "gone" / "data.npz"
    (run / "config.resolved.yaml").write_text(
        cfg.replace("dataset: digits\n  path: null", f"dataset: npz\n  path: {gone}")
    )
    paths = bench_run(run, devices=["local"])
    rows = json.loads((run / "report.json").read_text())["benchmarks"]
    assert paths and all(r["ok"] and r["eval_samples"] == 64 for r in rows)
