"""The pipeline as an ordered list of typed stages: --until / --from are positions, every stage is content-addressed.

Regression tests of issue 13's three bugs: `--until data` trained the teacher and `--until benchmark` wrote the
report and bundles (a chain of ifs); the TA search folder was not content-addressed (a changed config met a stale
folder and raised CheckpointError); energy per batch from the agent broke the report (a dict into a float field).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecompress.config import PipelineConfig
from edgecompress.pipeline import STAGE_NAMES, run_pipeline

pytestmark = pytest.mark.slow

TINY = {
    "name": "tiny",
    "seed": 0,
    "data": {"dataset": "digits", "val_fraction": 0.2, "calib_size": 64, "test_fraction": 0.2, "max_train": 600},
    "teacher": {
        "model": {"family": "cnn", "params": {"channels": [16, 32]}},
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0},
    },
    "distill": {
        "student": {"prune_ratio": 0.3},
        "assistants": "none",
        "train": {"epochs": 6, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0},
        "max_accuracy_drop": 0.5,  # tests of mechanics: the gate has its own tests
    },
    "export": {"formats": ["onnx:fp32"], "calib_samples": 64, "max_accuracy_drop": 0.5},
    "benchmark": {"devices": ["local"], "batch_sizes": [1], "min_time_s": 0.01, "repeats": 2, "eval_samples": 64},
}


def _cfg(**distill: object) -> PipelineConfig:
    data = json.loads(json.dumps(TINY))
    data["distill"].update(distill)
    return PipelineConfig.model_validate(data)


def _written(out: Path) -> set[str]:
    """Stage names with a folder, plus the report and bundles when written."""
    names = {p.name.rsplit("-", 1)[0] for p in (out / "stages").iterdir()} if (out / "stages").is_dir() else set()
    if (out / "report.json").exists():
        names.add("report")
    if (out / "bundles").is_dir() and any((out / "bundles").iterdir()):
        names.add("bundles")
    return names


def test_until_stops_at_every_stage_and_writes_nothing_past_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg()
    expected: set[str] = set()
    for name in STAGE_NAMES:
        if name in ("search", "decide", "budget"):  # only with `assistants: search` / auto, or `target:` (own tests)
            continue
        run_pipeline(cfg, out, until=name, progress=False)
        expected.add(name)
        assert _written(out) == expected, f"--until {name}"
        assert (out / "run.json").exists() == (STAGE_NAMES.index(name) >= STAGE_NAMES.index("benchmark"))


def test_from_recomputes_that_stage_and_later_ones(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = _cfg()
    run_pipeline(cfg, out, until="export", progress=False)
    stamps = {p.name: (p / "_done.json").stat().st_mtime_ns for p in (out / "stages").iterdir()}
    run_pipeline(cfg, out, until="export", from_="calibrate", progress=False)
    again = {p.name: (p / "_done.json").stat().st_mtime_ns for p in (out / "stages").iterdir()}
    assert set(again) == set(stamps)  # same keys, same folders
    changed = {n.rsplit("-", 1)[0] for n in stamps if stamps[n] != again[n]}
    assert changed == {"calibrate", "export"}


def test_unknown_stage_is_a_one_line_error(tmp_path: Path) -> None:
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="is not a stage"):
        run_pipeline(_cfg(), tmp_path / "run", until="train", progress=False)


def test_search_stage_is_content_addressed(tmp_path: Path) -> None:
    """A changed config gets a fresh search folder instead of meeting the old one (was: CheckpointError)."""
    out = tmp_path / "run"
    run_pipeline(_cfg(assistants="search", search_candidates=[0.6], search_epochs=1), out, until="search",
                 progress=False)  # fmt: skip
    first = {p.name for p in (out / "stages").glob("search-*")}
    changed = _cfg(assistants="search", search_candidates=[0.6], search_epochs=1,
                   train={"epochs": 2, "batch_size": 32, "lr": 0.03, "warmup_epochs": 0})  # fmt: skip
    run_pipeline(changed, out, until="search", progress=False)
    second = {p.name for p in (out / "stages").glob("search-*")}
    assert len(first) == 1 and len(second) == 2
    done = [json.loads((out / "stages" / n / "_done.json").read_text()) for n in second]
    assert all(d["chosen_ratio"] == 0.6 for d in done)


def _state(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_decide_stage_is_cached_keyed_and_its_choice_is_trained(tmp_path: Path) -> None:
    """`assistants: auto` + `loss.kind: auto`: --until decide writes only up to it; a second run reuses it; a changed
    trial config gets a new folder; the distill stage trains the decided loss and chain; the report shows the table."""
    out = tmp_path / "run"
    from edgecompress.calibration.config import CalibrationConfig

    cfg = _cfg(assistants="auto", loss={"kind": "auto"}, trials={"min_steps": 8, "kd_temperatures": [1.0, 4.0]})
    cfg = cfg.model_copy(update={"calibration": CalibrationConfig(method="auto")})
    run_pipeline(cfg, out, until="decide", progress=False)
    assert _written(out) == {"data", "teacher", "decide"}
    run_pipeline(cfg, out, progress=False)
    state = _state(out)
    assert {s["name"]: s["cached"] for s in state["stages"]}["decide"] is True  # reused, not retrained
    decide, distill = state["decide"], state["distill"]
    names = [t["name"] for t in decide["trials"]]
    assert names[:7] == ["scratch (ce)", "kd T=1 α=0.5", "kd T=1 α=0.9", "kd T=4 α=0.5", "kd T=4 α=0.9", "dist T=1",
                         "dist T=4"]  # fmt: skip
    chosen = [t for t in decide["trials"] if t["chosen"]]
    assert len(chosen) == 1 and distill["decided"]["choice"] == chosen[0]["name"]
    roles = [m["role"] for m in distill["chain"]["members"]]
    assert roles == ["teacher"] + ["assistant"] * len(decide["ratios"] or []) + ["student"]
    assert distill["decided"]["loss"]["kind"] == decide["loss"]["kind"]
    base = distill["scratch_baseline"]  # on by default: the same student on labels, final budget, and the verdict
    assert base is not None and base["test"]["accuracy"] is not None and base["reason"]
    report = (out / "report.md").read_text()
    assert "## Why this chain" in report and "Scratch baseline" in report and chosen[0]["name"] in report
    cal = state["calibrate"]  # method auto: TS alone and MbLS (m = 5, 10) + TS, one chosen, shown in the report
    assert [c["name"] for c in cal["candidates"]] == ["ts", "mbls m=5 + ts", "mbls m=10 + ts"]
    assert sum(c["chosen"] for c in cal["candidates"]) == 1 and cal["reason"] and "## Calibration\n" in report
    assert cal["method"] == ("ts" if cal["candidates"][0]["chosen"] else "mbls")
    changed = _cfg(assistants="auto", loss={"kind": "auto"}, trials={"min_steps": 9, "kd_temperatures": [1.0, 4.0]})
    run_pipeline(changed, out, until="decide", progress=False)
    assert len(list((out / "stages").glob("decide-*"))) == 2


def test_auto_without_a_teacher_loss_candidate_is_a_config_error() -> None:
    """No KD grid and no DIST leaves loss.kind auto nothing to distill with: one line at config time (was: scratch
    "won" a one-candidate trial). Training on labels alone is loss.kind: ce."""
    from edgecompress.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="no teacher-loss candidate"):
        _cfg(assistants="auto", loss={"kind": "auto"}, trials={"min_steps": 8, "kd_temperatures": [], "dist": False})


def test_students_train_with_the_data_augmentation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the distill stage trained every student without ``data.augment`` (only the teacher had it), so
    the KD teacher never ran on augmented batches. The real trainer runs; the wrapper only records its argument."""
    import edgecompress.distill.chain as chain

    seen: list[object] = []
    real = chain.train_model

    def recording(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("augment_cfg"))
        return real(*args, **kwargs)

    monkeypatch.setattr(chain, "train_model", recording)
    data = json.loads(json.dumps(TINY))
    data["data"]["augment"] = {"crop_pad": 1, "hflip": False}
    data["distill"]["train"]["epochs"] = 2
    run_pipeline(PipelineConfig.model_validate(data), tmp_path / "run", progress=False, until="distill")
    assert seen and all(getattr(a, "crop_pad", None) == 1 for a in seen)


def test_refit_on_a_format_without_a_rescale_hook_is_a_note_not_a_failure(tmp_path: Path) -> None:
    """Regression: `formats: all` died in the export stage ("cannot rescale a executorch artifact in place") when an
    INT8 artifact of a format that cannot be edited in place moved ECE on val. With threshold 0 every INT8 artifact
    is re-fitted: ONNX gets its re-folded twin; ORT keeps its artifact, with a note and a warning naming the numbers."""
    data = json.loads(json.dumps(TINY))
    data["export"]["formats"] = ["onnx:int8", "ort:int8"]
    data["calibration"] = {"refit_threshold": 0.0}
    run_pipeline(PipelineConfig.model_validate(data), tmp_path / "run", progress=False, until="export")
    done = next((tmp_path / "run" / "stages").glob("export-*")) / "_done.json"
    arts = {a["name"]: a for a in json.loads(done.read_text())["artifacts"]}
    assert all(a["ok"] for a in arts.values()), {n: a.get("failure") for n, a in arts.items()}
    assert arts["onnx-int8-refit"]["refit_of"] == "onnx-int8"
    ort = arts["ort-int8"]
    assert "ort-int8-refit" not in arts and ort["test_metrics"]["accuracy"] > 0.5
    assert ort["val_ece_shift"] is not None and "was not folded in" in ort["note"] and "export" in ort["note"]
    assert ort["reliability_png"] and Path(ort["reliability_png"]).is_file()


def test_gate_escalates_a_student_that_misses_then_passes(tmp_path: Path) -> None:
    """Issue 25: a student below distill.max_accuracy_drop is trained again (twice the epochs while it was still
    improving) until it passes; every attempt is recorded and is a row of the report."""
    out = tmp_path / "run"
    short = {"epochs": 1, "batch_size": 32, "lr": 0.3, "warmup_epochs": 0}
    cfg = _cfg(train=short, max_accuracy_drop=0.1, escalation_budget=20.0, scratch_baseline=False)
    run_pipeline(cfg, out, progress=False)
    attempts = _state(out)["distill"]["attempts"]
    assert len(attempts) >= 2 and not attempts[0]["passed"] and attempts[-1]["passed"], attempts
    assert [a["epochs"] for a in attempts] == [2**i for i in range(len(attempts))]  # still improving: x2 epochs
    assert all("twice the epochs" in a["why"] for a in attempts[1:])
    report = json.loads((out / "report.json").read_text())
    assert len(report["attempts"]) == len(attempts)
    assert "the student's attempts" in (out / "report.md").read_text()
    # with on_gate_failure: stop the first miss ends the run with the numbers
    from edgecompress.distill.gates import QualityGateError

    stop = _cfg(train=short, max_accuracy_drop=0.1, on_gate_failure="stop", scratch_baseline=False)
    with pytest.raises(QualityGateError, match="points below the teacher"):
        run_pipeline(stop, tmp_path / "stop", progress=False)


def test_scratch_baseline_and_verdict_in_every_run(tmp_path: Path) -> None:
    """Issue 25: without any 'auto', the scratch baseline still trains and the verdict (difference ± its paired
    standard error on val) is in run.json and the report."""
    out = tmp_path / "run"
    run_pipeline(_cfg(loss={"kind": "kd"}), out, progress=False)
    base = _state(out)["distill"]["scratch_baseline"]
    assert base is not None and not base["same_as_student"]
    assert base["n"] > 0 and base["stderr"] >= 0 and isinstance(base["significant"], bool)
    assert abs(base["difference"]) <= 1 and base["shipped"] == (base["significant"] and base["difference"] < 0)
    md = (out / "report.md").read_text()
    assert "Verdict:" in md and "points (n =" in md
