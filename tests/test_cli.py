"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors, tracebacks only with --debug."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_schema_prints_json_schema():
    res = cli("schema")
    assert res.returncode == 0, res.stderr
    assert "teacher" in json.loads(res.stdout)["properties"]


def test_validate_prints_resolved_config():
    res = cli("validate", str(ROOT / "examples" / "digits.yaml"))
    assert res.returncode == 0, res.stderr
    resolved = yaml.safe_load(res.stdout)
    assert resolved["calibration"]["n_bins"] == 15  # a default made explicit


def test_bad_config_one_line_exit_2(tmp_path):
    data = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    data["export"]["formatz"] = ["onnx:fp32"]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    res = cli("run", str(p), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "export.formatz" in lines[0] and "fix:" in lines[0]
    assert "Traceback" not in res.stderr


def test_debug_shows_traceback(tmp_path):
    res = cli("--debug", "run", str(tmp_path / "missing.yaml"))
    assert res.returncode != 0
    assert "Traceback" in res.stderr and "ConfigError" in res.stderr


def test_unknown_until_stage(tmp_path):
    res = cli("run", str(ROOT / "examples" / "digits.yaml"), "--until", "nope", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "not a stage" in res.stderr


def test_help():
    res = cli("--help")
    assert res.returncode == 0 and "demo" in res.stdout


def test_cli_stage_names_are_the_pipelines() -> None:
    """The CLI lists the stages without importing the pipeline (a light --help); they must be the pipeline's order."""
    from edgecompress.cli import STAGES
    from edgecompress.pipeline import STAGE_NAMES

    assert tuple(STAGES) == STAGE_NAMES
