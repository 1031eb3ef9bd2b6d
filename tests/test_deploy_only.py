"""Deploy-only runs: ``distill: {student: none}`` ships the user's model as it is — calibrated, quantized, bundled.

The switch is read by the config (resolved as ``deploy_only: true``); the distill stage hands the loaded teacher on
unchanged (:mod:`edgecompress.pipeline.deploy_only`) and every later stage runs as in any run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgecompress.config import dump_config, parse_config
from edgecompress.errors import ConfigError

BASE = {
    "name": "deploy",
    "data": {
        "dataset": "digits",
        "val_fraction": 0.2,
        "calib_size": 64,
        "test_fraction": 0.2,
        "mean": [0.0],
        "std": [1.0],
    },
    "teacher": {"model": {"family": "cnn", "params": {"channels": [8, 16]}}, "checkpoint": "teacher.pt"},
    "distill": {"student": "none"},
}


def _raw(**changes: object) -> dict:
    raw = json.loads(json.dumps(BASE))
    raw.update(changes)
    return raw


@pytest.mark.parametrize("student", ["none", "None", None])
def test_student_none_is_the_deploy_only_switch(student: object) -> None:
    cfg = parse_config(_raw(distill={"student": student}))
    assert cfg.deploy_only is True
    again = parse_config(yaml.safe_load(dump_config(cfg)))  # the resolved config reads back the same
    assert again == cfg and again.deploy_only


def test_a_normal_config_is_not_deploy_only() -> None:
    assert parse_config(_raw(distill={"student": {"prune_ratio": 0.5}})).deploy_only is False
    assert parse_config(_raw(distill={})).deploy_only is False


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"distill": {"student": "none", "train": {"epochs": 3}}}, "distill.student: none deploys the teacher as it "
         "is (nothing is distilled); remove distill.train"),
        ({"deploy_only": False}, "distill.student: none means deploy_only: true; remove one of them"),
        ({"target": {"device": "local", "latency_ms": 5}}, "target (compress to a budget) needs a student"),
    ],
)  # fmt: skip
def test_deploy_only_refuses_what_needs_a_student(changes: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_raw(**changes))
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow  # a pipeline run: export, benchmark, report, bundles (~30 s on 2 cores)
def test_deploy_only_run_ships_the_teacher_calibrated_and_quantized(tmp_path: Path) -> None:
    import torch

    from benchmarks.int8_sensitive import digits
    from edgecompress.models import ModelSpec, build_model
    from edgecompress.models.checkpoint import state_hash
    from edgecompress.pipeline import run_pipeline

    torch.manual_seed(0)
    teacher = build_model(ModelSpec(family="cnn", params={"channels": [8, 16]}), in_channels=1, num_classes=10,
                          input_size=(8, 8))  # fmt: skip
    x, y = (torch.from_numpy(a) for a in digits())
    opt = torch.optim.Adam(teacher.parameters(), 3e-3)
    for _ in range(3):  # the user's training, elsewhere: a few epochs on pixels / 255
        for i in range(0, len(y), 64):
            loss = torch.nn.functional.cross_entropy(teacher(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    teacher.eval()
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    raw = _raw(
        export={"formats": ["onnx:fp32", "onnx:int8"], "calib_samples": 64, "max_accuracy_drop": 1.0},
        benchmark={"devices": ["local"], "batch_sizes": [1], "min_time_s": 0.01, "repeats": 1, "eval_samples": 64},
    )
    cfg = parse_config(raw, base_dir=tmp_path)
    out = tmp_path / "run"
    run_pipeline(cfg, out, progress=False)
    state = json.loads((out / "run.json").read_text())
    assert state["distill"]["chain"]["deploy_only"] is True
    assert [s["name"] for s in state["stages"] if s["name"] in ("search", "decide")] == []  # nothing decided
    distill_dir = Path(next(s["output_dir"] for s in state["stages"] if s["name"] == "distill"))
    shipped = build_model(ModelSpec(family="cnn", params={"channels": [8, 16]}), in_channels=1, num_classes=10,
                          input_size=(8, 8))  # fmt: skip
    shipped.load_state_dict(torch.load(distill_dir / "student.pt", weights_only=True))
    assert state_hash(shipped) == state_hash(teacher)  # not pruned, not distilled, not fine-tuned
    report = json.loads((out / "report.json").read_text())
    models = {m["name"]: m for m in report["models"]}
    assert models["student"]["params"] == models["teacher"]["params"]
    assert any("deploy-only" in n for n in models["student"]["notes"])
    assert models["student"]["temperature"] == pytest.approx(state["calibrate"]["temperature"])
    manifest = json.loads((out / "bundles" / "onnx-int8" / "manifest.json").read_text())
    assert manifest["temperature"]["folded"] is True
    stages_before = {s["name"]: s["output_dir"] for s in state["stages"]}
    run_pipeline(cfg, out, progress=False)  # a rerun reuses every stage
    again = json.loads((out / "run.json").read_text())
    assert all(s["cached"] for s in again["stages"] if s["name"] in stages_before and s["name"] not in ("report",
               "bundles"))  # fmt: skip
