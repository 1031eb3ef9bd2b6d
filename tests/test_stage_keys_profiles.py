"""Issue 27 bugs: the benchmark and budget stage keys follow the device profiles' contents (an edited profile is
measured anew, not answered from stale rows); the benchmarks run on Python 3.10 (no ``datetime.UTC``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT, write_yaml
from edgecompress.config import PipelineConfig
from edgecompress.pipeline.budget_stage import BUDGET
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.deploy_stages import BENCHMARK
from edgecompress.pipeline.rundir import RunDir


def _ctx(tmp_path: Path, profiles: Path) -> Context:
    cfg = PipelineConfig.model_validate({
        "data": {"dataset": "digits"},
        "teacher": {"model": {"family": "cnn"}, "train": {}},
        "export": {"formats": ["onnx:fp32"]},
        "benchmark": {"devices": ["board"], "profiles_dir": str(profiles)},
        "target": {"device": "board", "latency_ms": 1.0, "cache_dir": str(tmp_path / "cache")},
    })  # fmt: skip
    ctx = Context(cfg=cfg, run=RunDir(tmp_path / "run"))
    ctx.keys.update({"data": "d", "teacher": "t", "export": "e"})
    return ctx


@pytest.mark.parametrize("edit", [{"host": "10.0.0.9"}, {"threads": 2}, {"runtimes": ["openvino"]}])
def test_editing_a_profile_changes_the_benchmark_and_budget_keys(tmp_path: Path, edit: dict) -> None:
    profiles = tmp_path / "profiles"
    board = {"name": "board", "transport": "ssh", "host": "10.0.0.8", "user": "pi", "description": "my board"}
    write_yaml(profiles / "board.yaml", board)
    ctx = _ctx(tmp_path, profiles)
    before = (BENCHMARK.key(ctx), BUDGET.key(ctx))
    write_yaml(profiles / "board.yaml", {**board, "description": "reworded"})  # free text: not what is measured
    assert (BENCHMARK.key(ctx), BUDGET.key(ctx)) == before
    write_yaml(profiles / "board.yaml", {**board, **edit})  # same name, different device settings
    after = (BENCHMARK.key(ctx), BUDGET.key(ctx))
    assert after[0] != before[0] and after[1] != before[1]


def _uses_datetime_utc(tree: ast.AST) -> list[int]:
    """Lines that read ``datetime.UTC`` (new in Python 3.11) through any alias of the module, or import it."""
    aliases = {"datetime"}
    aliases |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                if a.name == "datetime"}  # fmt: skip
    lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "UTC"
             and isinstance(n.value, ast.Name) and n.value.id in aliases]  # fmt: skip
    lines += [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "datetime"
              and any(a.name == "UTC" for a in n.names)]  # fmt: skip
    return lines


def test_no_python_311_datetime_utc_in_src_benchmarks_or_scripts() -> None:
    assert _uses_datetime_utc(ast.parse("import datetime as _dt\n_dt.datetime.now(_dt.UTC)\n")) == [2]  # it finds it
    assert _uses_datetime_utc(ast.parse("from datetime import UTC\n")) == [1]
    found = []
    for folder in ("src", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found += [f"{path.relative_to(ROOT)}:{line}" for line in _uses_datetime_utc(ast.parse(path.read_text()))]
    assert not found, (
        f"datetime.UTC needs Python 3.11 (requires-python allows 3.10): use datetime.timezone.utc: {found}"
    )


def test_machine_info_of_the_benchmarks_dates_in_utc() -> None:
    import importlib

    info = importlib.import_module("benchmarks._experiments").machine_info(1)
    assert info["date_utc"].endswith(" UTC") and len(info["date_utc"]) == len("2026-01-31 12:00 UTC")
