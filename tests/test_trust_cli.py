"""Every CLI error is one line with the fix (issue 15, finding 8): usage errors, bad option values, unexpected
exceptions and MemoryError; ``--trust-factory`` and the config's ``trust_factories`` (finding 1, the CLI part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIX, cli, one_error_line, record, tiny_config, write_yaml
from edgecompress.cli import app, main

USAGE = {
    "cli-unknown-option": (["run", "examples/digits.yaml", "--bogus"], "No such option: --bogus"),
    "cli-missing-argument": (["predict"], "Missing argument 'BUNDLE'"),
    "cli-top-k-not-a-number": (["predict", "b.zip", "x.png", "--top-k", "abc"], "'--top-k'"),
    "cli-top-k-negative": (["predict", "b.zip", "x.png", "--top-k", "-2"], "greater than or equal to 1"),
    "cli-unknown-command": (["bogus-command"], "No such command 'bogus-command'"),
}


@pytest.mark.parametrize("case", sorted(USAGE))
def test_usage_errors_are_one_line(case: str) -> None:
    args, part = USAGE[case]
    res = cli(*args, timeout=60)
    line = one_error_line(res, 2)
    assert part.lower() in line.lower(), line
    assert "--help" in line.split(FIX, 1)[1]
    record("config", case, " ".join(args), "edgecompress " + args[0], "2", line)


def _raise(kind: str) -> None:
    raise {"memory": MemoryError(), "key": KeyError("role\nsecond line")}[kind]


app.command("trust-test-raise", hidden=True)(_raise)  # a command that fails the way a bug or the OS can


@pytest.mark.parametrize(("kind", "part"), [("memory", "out of memory"), ("key", "unexpected KeyError")])
def test_unexpected_errors_are_one_line_mentioning_debug(kind: str, part: str, capsys) -> None:
    code = main(["trust-test-raise", kind])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: ") and part in err[0] and FIX in err[0] and "--debug" in err[0]
    with pytest.raises((MemoryError, KeyError)):
        main(["--debug", "trust-test-raise", kind])


@pytest.mark.parametrize(
    ("report", "part"),
    [
        ('{"models": [{"name": "x"}]}', "is malformed (KeyError)"),
        ("{}", "is malformed (KeyError)"),
        ('{"models": [{"name": "a", "role": "student", "accuracy": "high"}]}', "is malformed (ValueError)"),
        ('{"models": [', "is malformed (JSONDecodeError)"),
    ],
)
def test_inspect_reads_a_hostile_report_as_data(report: str, part: str, tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(report)
    line = one_error_line(cli("inspect", str(tmp_path), timeout=60), 2)
    assert part in line, line


def test_trust_factory_option_and_config_field(tmp_path: Path) -> None:
    from edgecompress.config import PipelineConfig, parse_config
    from edgecompress.errors import ConfigError

    assert PipelineConfig.model_fields["trust_factories"].default_factory() == []
    cfg = parse_config(tiny_config(trust_factories=["mypkg.models"]))
    assert cfg.trust_factories == ["mypkg.models"]
    res = cli("validate", str(write_yaml(tmp_path / "bad.yaml", tiny_config(trust_factories=["os; rm -rf"]))))
    assert "trust_factories.0: Value error" in one_error_line(res, 2) or "not a module name" in res.stderr
    for command in ("run", "bench"):
        assert "--trust-factory" in cli(command, "--help", timeout=60).stdout
    cfg_file = write_yaml(tmp_path / "cfg.yaml", tiny_config())
    res = cli("run", str(cfg_file), "--out", str(tmp_path / "run"), "--trust-factory", "os;rm", timeout=120)
    line = one_error_line(res, 2)
    assert "--trust-factory: 'os;rm' is not a module name" in line
    assert not (tmp_path / "run").exists()
    for module in ("torch.hub", "os", "builtins", "subprocess"):
        res = cli("run", str(cfg_file), "--out", str(tmp_path / "run"), "--trust-factory", module, timeout=120)
        assert f"'{module}' can run any code" in one_error_line(res, 2)
        with pytest.raises(ConfigError, match="cannot be trusted"):
            parse_config(tiny_config(trust_factories=[module]))


def test_run_refuses_a_user_project_as_out(tmp_path: Path) -> None:
    project = tmp_path / "P"
    for rel in (".my-settings/x", "src/.cache-20240101/y", "docs/.notes.tmp", ".old-thesis-2"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("mine")
    cfg = write_yaml(tmp_path / "cfg.yaml", tiny_config())
    res = cli("run", str(cfg), "--out", str(project), "--until", "data", timeout=300)
    line = one_error_line(res, 2)
    assert "is not an edgecompress run directory" in line
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()) == sorted(
        [".my-settings/x", "src/.cache-20240101/y", "docs/.notes.tmp", ".old-thesis-2"]
    )
    record("resource", "out-user-project", "`--out` a non-empty folder of the user's", "edgecompress run", "2", line)


def test_report_json_with_non_dict_models(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"models": [1, 2]}))
    one_error_line(cli("inspect", str(tmp_path), timeout=60), 2)
