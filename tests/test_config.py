"""The config schema: examples validate, bad configs get one line naming field, value and what is allowed."""

from pathlib import Path

import pytest
import yaml

from edgecompress.config import json_schema, load_config, parse_config
from edgecompress.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _digits() -> dict:
    return yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path):
    cfg = load_config(path)
    assert cfg.name


def test_schema_has_sections():
    props = json_schema()["properties"]
    for section in ("data", "teacher", "distill", "calibration", "export", "benchmark", "bundle"):
        assert section in props


def _error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="x.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_key_named():
    data = _digits()
    data["distill"]["lerning_rate"] = 0.1
    msg = _error(data)
    assert "distill.lerning_rate" in msg and "unknown key" in msg


def test_wrong_type_names_path_and_value():
    data = _digits()
    data["distill"]["train"]["epochs"] = "many"
    msg = _error(data)
    assert "distill.train.epochs" in msg and '"many"' in msg


def test_impossible_ratio():
    data = _digits()
    data["distill"]["student"] = {"prune_ratio": 1.5}
    assert "distill.student.prune_ratio" in _error(data)


def test_missing_section():
    data = _digits()
    del data["teacher"]
    msg = _error(data)
    assert "teacher" in msg and "missing" in msg


def test_teacher_needs_source():
    data = _digits()
    del data["teacher"]["train"]
    assert "teacher.checkpoint" in _error(data)


def test_bad_format_item():
    data = _digits()
    data["export"]["formats"] = ["onnx:int4"]
    assert "export.formats" in _error(data)


def test_not_a_mapping():
    assert "mapping" in _error([1, 2])  # type: ignore[arg-type]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_relative_paths_resolve_against_config(tmp_path):
    data = _digits()
    data["teacher"]["checkpoint"] = "teacher.pt"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    assert load_config(p).teacher.checkpoint == tmp_path / "teacher.pt"


# ------------------------------------------------------------------------------------------------ target (budget)


def _with_target(**target: object) -> dict:
    data = _digits()
    data["target"] = target
    return data


def test_target_section_defaults_and_grid():
    cfg = parse_config(_with_target(latency_ms=0.5), source="x.yaml")
    t = cfg.target
    assert t is not None and t.device == "local" and t.batch_size == 1 and t.round_to == 8 and t.search == "largest"
    ratios = t.ratios()
    assert len(ratios) == t.candidates and ratios[0] == pytest.approx(t.max_ratio)
    assert ratios[-1] == pytest.approx(t.min_ratio)
    steps = [a / b for a, b in zip(ratios, ratios[1:], strict=False)]
    assert max(steps) == pytest.approx(min(steps))  # geometric
    assert t.format_pairs(cfg.export.format_pairs()) == cfg.export.format_pairs()  # default: the export formats


def test_target_without_any_budget_is_one_line_naming_the_fix():
    message = _error(_with_target(device="local"))
    assert "target" in message and "latency_ms, size_kb or speedup" in message


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ({"latency_ms": 1, "search": "frontier", "frontier_k": 1}, "target.frontier_k"),
        ({"latency_ms": 1, "min_ratio": 0.5, "max_ratio": 0.2}, "must be below max_ratio"),
        ({"latency_ms": 1, "formats": ["onnx:int3"]}, "target.formats"),
        ({"latency_ms": -1}, "target.latency_ms"),
        ({"speedup": 0.5}, "target.speedup"),
        ({"latency_ms": 1, "margin": 1.5}, "target.margin"),
    ],
)
def test_bad_target_values(target: dict, expect: str):
    assert expect in _error(_with_target(**target))


def test_target_needs_a_pruned_student():
    data = _with_target(latency_ms=1)
    data["distill"]["student"] = {"model": {"family": "cnn", "params": {"channels": [8, 8]}}}
    assert "distill.student.prune_ratio" in _error(data)


def test_target_cache_dir_resolves_against_the_config(tmp_path):
    data = _with_target(latency_ms=1, cache_dir="latency-cache")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).target.cache_dir == (tmp_path / "latency-cache").resolve()
