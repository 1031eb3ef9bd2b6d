"""The import arrows of docs/architecture.md hold in src/edgecompress.

    cli → pipeline → (distill, calibration, export, devices, report, bundle) → (models, data) → foundations

Foundations are ``errors``, ``_io``, ``_schema``, ``_lazy``, ``measurements``, the package root and every config module
(``edgecompress.config`` and each ``<subpackage>/config.py``, which compose one another). A module may import its
own subpackage and anything in a lower layer; an import upward or sideways (into another package of the same layer)
fails the test with its file:line. The doc's two exceptions: ``export`` may call the ``devices`` runtimes (the
agent's, also served by ``devices.host_runtimes``) for parity and evaluation, and ``distill`` may call ``calibration``
(and ``models``, which is below it anyway). ``devices/agent.py`` ships alone to devices, so it imports nothing of
the package.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``, relative or absolute. Strings
(the lazy ``__init__`` tables, ``"pkg.mod:fn"`` factories) are not imports.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "edgecompress"

FOUNDATIONS = "foundations"
LAYER = {
    FOUNDATIONS: 0,
    "models": 1,
    "data": 1,
    "distill": 2,
    "calibration": 2,
    "export": 2,
    "devices": 2,
    "report": 2,
    "bundle": 2,
    "budget": 2.5,  # composes models, export and devices; the pipeline calls it
    "pipeline": 3,
    "cli": 4,
}
# measurements: typed records between packages (pydantic + stdlib), a foundation by its own docstring; the doc's list
# of foundations is to name it too
TOP_FOUNDATIONS = {"errors", "_io", "_schema", "_lazy", "_registry", "_contain", "_text", "config", "measurements"}
# console: the command line's logging and headline output; presets: the commands that make the shipped teachers
TOP_CLI = {"cli", "console", "__main__", "presets"}
# (importing package, imported module or package prefix): the doc's allowed sideways arrows
EXCEPTIONS = {
    ("export", "edgecompress.devices.agent"),
    ("export", "edgecompress.devices.host_runtimes"),
    ("bundle", "edgecompress.devices.agent"),  # a bundle's predictor and run.py use the agent's runtimes
    ("bundle", "edgecompress.devices.host_runtimes"),
    ("devices", "edgecompress.calibration.metrics"),  # the one ECE rule: the host recomputes a device's metrics
    ("export", "edgecompress.calibration.metrics"),  # the one ECE rule: an artifact's metrics through its runtime
    ("foundations", "edgecompress.export.formats"),  # export's config checks names against the (plain) format table
    ("distill", "edgecompress.calibration"),
}
SELF_CONTAINED = {"edgecompress.devices.agent"}  # shipped alone: imports nothing of the package


@dataclass(frozen=True)
class Arrow:
    """One import: ``source`` (module name, file, line) imports ``target`` (a module or package of the package)."""

    source: str
    target: str
    file: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    """``root/edgecompress/distill/config.py`` -> ``edgecompress.distill.config`` (``__init__`` -> the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def group(module: str) -> str:
    """The architecture box a module belongs to: a package name of :data:`LAYER`, or ``foundations``."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(module)
    if len(parts) == 1 or parts[-1] == "config" or parts[1] in TOP_FOUNDATIONS:
        return FOUNDATIONS
    if parts[1] in TOP_CLI:
        return "cli"
    if parts[1] not in LAYER:
        raise AssertionError(f"{module}: not in docs/architecture.md's layers; add it to the doc and to LAYER here")
    return parts[1]


def _exists(module: str, root: Path) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(node: ast.ImportFrom, module: str, is_package: bool, root: Path) -> list[str]:
    """The package modules a ``from ... import ...`` names (a name that is a submodule counts as that module)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        stem = ".".join([*base, node.module] if node.module else base)
    else:
        stem = node.module or ""
    if stem.split(".")[0] != PACKAGE:
        return []
    out = []
    for alias in node.names:
        sub = f"{stem}.{alias.name}"
        out.append(sub if _exists(sub, root) else stem)
    return out


def arrows(root: Path) -> list[Arrow]:
    """Every import of a package module by a package module under ``root`` (a folder holding ``edgecompress/``)."""
    found = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        source = module_name(path, root)
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(node, source, is_package, root)
            else:
                continue
            found += [Arrow(source, t, path, node.lineno) for t in targets]
    return found


def violation(arrow: Arrow) -> str | None:
    """Why ``arrow`` breaks the doc's rule, or None when it is allowed."""
    if arrow.source in SELF_CONTAINED and arrow.target != arrow.source:
        return f"{arrow.source} ships alone to devices and must not import {arrow.target}"
    src, dst = group(arrow.source), group(arrow.target)
    if src == dst or LAYER[dst] < LAYER[src]:
        return None
    if any(arrow.target == p or arrow.target.startswith(p + ".") for s, p in EXCEPTIONS if s == src):
        return None
    way = "upward" if LAYER[dst] > LAYER[src] else "sideways"
    return f"{src} (layer {LAYER[src]}) imports {arrow.target} ({dst}, layer {LAYER[dst]}): {way}"


def violations(root: Path) -> list[str]:
    out = []
    for arrow in arrows(root):
        why = violation(arrow)
        if why:
            out.append(f"{arrow.where(root)}: {why}")
    return out


def test_import_arrows_follow_the_architecture() -> None:
    bad = violations(SRC)
    assert not bad, (
        f"{len(bad)} import(s) against docs/architecture.md "
        "(cli → pipeline → stage packages → models/data → foundations):\n" + "\n".join(bad)
    )


def test_every_module_is_in_a_layer() -> None:
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        assert group(module_name(path, SRC)) in LAYER


# ----------------------------------------------------------------------------------------------------------------------
# The checker itself, on a made-up package: it catches what it must and passes what the doc allows


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    return _tree(
        tmp_path,
        {
            "__init__.py": "from edgecompress.errors import E\n",
            "errors.py": "",
            "config.py": "from edgecompress.distill.config import D\n",
            "cli.py": "from edgecompress.pipeline import run\n",
            "pipeline/__init__.py": "",
            "pipeline/run.py": "from edgecompress.export import x\nfrom . import rundir\n",
            "pipeline/rundir.py": "",
            "models/__init__.py": "",
            "models/build.py": "from ..errors import E\n",
            "data/__init__.py": "",
            "distill/__init__.py": "",
            "distill/config.py": "from edgecompress._schema import S\n",
            "distill/chain.py": "def f():\n    from edgecompress.calibration.fold import fold\n",
            "calibration/__init__.py": "",
            "calibration/fold.py": "from edgecompress.models import build\n",
            "export/__init__.py": "",
            "export/x.py": "from edgecompress.devices.agent import get_runtime\n",
            "devices/__init__.py": "",
            "devices/agent.py": "import numpy\n",
            "_schema.py": "",
        },
    )


def test_checker_passes_the_allowed_arrows(fake: Path) -> None:
    assert violations(fake) == []
    targets = {(a.source, a.target) for a in arrows(fake)}
    assert ("edgecompress.pipeline.run", "edgecompress.pipeline.rundir") in targets  # relative import resolved
    assert ("edgecompress.models.build", "edgecompress.errors") in targets
    assert ("edgecompress.distill.chain", "edgecompress.calibration.fold") in targets  # function-level import


@pytest.mark.parametrize(
    ("rel", "text", "expect"),
    [
        ("models/build.py", "from edgecompress.distill import trainer\n", "upward"),
        ("data/splits.py", "def f():\n    import edgecompress.models.build\n", "sideways"),
        ("report/render.py", "from edgecompress.bundle.writer import w\n", "sideways"),
        ("export/x.py", "from edgecompress.devices.bench import bench\n", "sideways"),
        ("calibration/fold.py", "from edgecompress.distill.losses import L\n", "sideways"),
        (
            "distill/config.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..distill import x\n",
            "upward",
        ),
        ("errors.py", "from edgecompress.pipeline import run\n", "upward"),
        ("pipeline/run.py", "from edgecompress.cli import main\n", "upward"),
        ("devices/agent.py", "from edgecompress.errors import E\n", "ships alone"),
    ],
)
def test_checker_catches_a_wrong_arrow(fake: Path, rel: str, text: str, expect: str) -> None:
    _tree(fake, {"report/__init__.py": "", "bundle/__init__.py": "", "bundle/writer.py": "", rel: text})
    bad = violations(fake)
    assert len(bad) == 1 and bad[0].startswith(f"{PACKAGE}/{rel}:") and expect in bad[0], bad
