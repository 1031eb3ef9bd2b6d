"""What CI runs is what the README says, and the suite keeps the shape CI relies on.

- ``.ci/run`` = the README's first command (``scripts/bootstrap.sh``) + its second (``scripts/check.sh``);
- ``scripts/check.sh`` runs ruff, ruff format, mypy, the fast tests and then the slow ones, with ``--durations``;
- the package ships ``py.typed`` (and the mypy config checks ``src/``);
- end-to-end files are marked slow; test files import helpers from ``conftest`` only, never from each other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, flags=re.S)
    assert block, "README has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_commands() -> None:
    setup, check = _readme_commands()[:2]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "bash scripts/bootstrap.sh" in ci and setup.startswith("bash scripts/bootstrap.sh")
    assert check in ci, f"README's check command {check!r} is not what .ci/run runs"
    assert ci.index("bash scripts/bootstrap.sh") < ci.index(check)


def test_check_script_runs_every_gate_in_order() -> None:
    text = (ROOT / "scripts" / "check.sh").read_text()
    gates = [
        "-m ruff check .",
        "-m ruff format --check .",
        "-m mypy",
        '-m pytest -m "not slow" --durations=15',
        "-m pytest -m slow --durations=15",
    ]
    where = [text.find(g) for g in gates]
    assert all(i >= 0 for i in where), dict(zip(gates, where, strict=True))
    assert where == sorted(where), "the gates run in this order: lint, format, types, fast tests, slow tests"
    assert '"$rc" -eq 5' in text  # no slow tests collected is not a failure
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


def test_py_typed_ships_and_mypy_checks_src() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python >= 3.11")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert (ROOT / "src" / "edgecompress" / "py.typed").is_file()
    assert "py.typed" in cfg["tool"]["setuptools"]["package-data"]["edgecompress"]
    assert cfg["tool"]["mypy"]["files"] == ["src/edgecompress"]
    assert any(dep.startswith("mypy") for dep in cfg["project"]["optional-dependencies"]["dev"])
    assert any(m.startswith("slow:") for m in cfg["tool"]["pytest"]["ini_options"]["markers"])


def _marks(path: Path) -> set[str]:
    """Marker names in the module's ``pytestmark``."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            return {
                n.attr
                for n in ast.walk(node.value)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"
            }
    return set()


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_e2e_*.py")), ids=lambda p: p.stem)
def test_end_to_end_files_are_slow(path: Path) -> None:
    assert "slow" in _marks(path), f"{path.name}: add `pytestmark = pytest.mark.slow`"


def test_test_files_do_not_import_each_other() -> None:
    own = {p.stem for p in TESTS.glob("test_*.py")}  # modules such as zoo_models (factory targets) are not tests
    bad = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            bad += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in own]
    assert not bad, "shared helpers belong in tests/conftest.py:\n" + "\n".join(bad)
