"""A received run reads, writes and runs nothing outside itself (issue 26, items 1, 2, 4 and 7), through the real CLI.

Each case copies a finished run (:func:`conftest.synthetic_run`: the digits logistic regression as its one artifact,
built without training) or writes a config, then runs ``edgecompress`` in a subprocess (3 at a time). A case ends in
one stderr line naming the problem and the fix, nothing outside the run is read, written or executed, and no message
says "unexpected" for an input it can name.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, one_error_line, png_claiming, record, synthetic_run, tiny_config, write_yaml

SECRET = b"\x89PNG\r\n\x1a\nOUTSIDE-SECRET-c41d"


@dataclass(frozen=True)
class Case:
    """``make(dir, run)`` prepares the input (``run`` is a fresh copy of the finished run) and returns CLI args."""

    id: str
    group: str
    given: str
    make: Callable[[Path, Path], list[str]]
    expect: tuple[str, ...]
    code: int = 2


def _edit(run: Path, edit: Callable[[dict], None]) -> None:
    state = json.loads((run / "run.json").read_text())
    edit(state)
    (run / "run.json").write_text(json.dumps(state))


def _art(state: dict) -> dict:
    return state["export"]["artifacts"][0]


def _bench(edit: Callable[[dict], None]) -> Callable[[Path, Path], list[str]]:
    def make(d: Path, run: Path) -> list[str]:
        _edit(run, edit)
        return ["bench", str(run)]

    return make


def _symlinked_file(d: Path, run: Path) -> list[str]:
    folder = Path(json.loads((run / "run.json").read_text())["export"]["artifacts"][0]["model_file"]).parent
    os.symlink(d / "secret.png", folder / "notes.png")
    _edit(run, lambda s: _art(s)["files"].append(str(folder / "notes.png")))
    return ["bench", str(run)]


def _figures_link(d: Path, run: Path) -> list[str]:
    (d / "elsewhere").mkdir()
    (d / "elsewhere" / "latency_accuracy.png").write_bytes(b"mine")
    os.symlink(d / "elsewhere", run / "figures")
    return ["bench", str(run)]


def _profile_in_run(d: Path, run: Path) -> list[str]:
    """The run's config points profiles_dir at a folder in the run whose local profile runs a script of the run."""
    (run / "profiles").mkdir()
    script = run / "agent.sh"
    script.write_text(f"#!/bin/sh\ntouch {d / 'pwned'}\n")
    script.chmod(0o755)
    (run / "profiles" / "local.yaml").write_text(f"name: local\ntransport: local\npython: {script}\n")
    cfg = (run / "config.resolved.yaml").read_text()
    (run / "config.resolved.yaml").write_text(cfg.replace("profiles_dir: null", f"profiles_dir: {run / 'profiles'}"))
    return ["bench", str(run)]


def _profile_file_in_run(d: Path, run: Path) -> list[str]:
    (run / "dev.yaml").write_text("name: dev\ntransport: local\n")
    return ["bench", str(run), "--device", str(run / "dev.yaml")]


def _relative_python(d: Path, run: Path) -> list[str]:
    (d / "dev.yaml").write_text("name: dev\ntransport: local\npython: ./agent.sh\n")
    return ["bench", str(run), "--device", str(d / "dev.yaml")]


def _deep_state(d: Path, run: Path) -> list[str]:
    (run / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["bench", str(run)]


def _garbage_eval(d: Path, run: Path) -> list[str]:
    next(run.glob("stages/benchmark-*/eval.npz")).write_bytes(b"garbage")
    return ["bench", str(run)]


def _validate(cfg: dict | str) -> Callable[[Path, Path], list[str]]:
    return lambda d, run: ["validate", str(write_yaml(d / "cfg.yaml", cfg))]


def _factory_module(d: Path, body: str, factory: str) -> list[str]:
    (d / "ec_recv_factories.py").write_text(body)
    cfg = tiny_config(trust_factories=["ec_recv_factories"])
    cfg["teacher"]["model"] = {"factory": f"ec_recv_factories:{factory}"}
    return ["validate", str(write_yaml(d / "cfg.yaml", cfg))]


def _data_run(d: Path, **data: object) -> list[str]:
    cfg = tiny_config(data={"val_fraction": 0.2, "calib_size": 2, "test_fraction": 0.2, **data})
    return ["run", str(write_yaml(d / "cfg.yaml", cfg)), "--out", str(d / "out"), "--until", "data"]


def _npz_labels(labels: np.ndarray) -> Callable[[Path, Path], list[str]]:
    def make(d: Path, run: Path) -> list[str]:
        rng = np.random.default_rng(0)
        np.savez(d / "d.npz", x_train=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y_train=np.arange(40) % 4,
                 labels=labels)  # fmt: skip
        return _data_run(d, dataset="npz", path=str(d / "d.npz"))

    return make


def _nul_path(d: Path, run: Path) -> list[str]:
    return _data_run(d, dataset="npz", path="data\x00.npz")


def _truncated_npz(d: Path, run: Path) -> list[str]:
    np.savez(d / "d.npz", x_train=np.zeros((40, 8, 8), np.uint8), y_train=np.arange(40) % 4)
    data = (d / "d.npz").read_bytes()
    (d / "d.npz").write_bytes(data[: len(data) // 2])
    return _data_run(d, dataset="npz", path=str(d / "d.npz"))


def _folder_bomb(d: Path, run: Path) -> list[str]:
    from PIL import Image

    for k in "ab":
        (d / "imgs" / k).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / "imgs" / k / f"{i}.png")
    (d / "imgs" / "a" / "bomb.png").write_bytes(png_claiming(30000, 30000))
    return _data_run(d, dataset="folder", path=str(d / "imgs"))


DUP_YAML = "name: a\nname: b\ndata: {dataset: digits}\nteacher: {model: {family: cnn}, train: {epochs: 1}}\n"
NOT_FROM_MODULE = "from numpy import load\n"
NOT_A_MODULE_CLASS = "class Net:\n    pass\n"
ANNOTATED_INT = "def net(num_classes: int) -> int:\n    return num_classes\n"

CASES = [
    # item 1: containment of run.json paths
    Case("run-json-relative-diagram", "received", "run.json `calibrate.reliability_png: ../secret.png`",
         _bench(lambda s: s["calibrate"].update(reliability_png="../secret.png")), ("leads out of the run directory",)),
    Case("run-json-relative-artifact-file", "received", "run.json artifact `files` + `../../secret.png`",
         _bench(lambda s: _art(s)["files"].append("../../secret.png")), ("leads out of the run directory",)),
    Case("run-json-refit-of-dotdot", "received", "run.json artifact `refit_of: ../../../..`",
         _bench(lambda s: _art(s).update(refit_of="../../../..")), ("not a plain name",)),
    Case("run-json-artifact-name-path", "received", "run.json artifact `name: ../../evil`",
         _bench(lambda s: _art(s).update(name="../../evil")), ("not a plain name",)),
    Case("run-json-stage-folder-elsewhere", "received", "run.json stage `output_dir` of another stage's folder",
         _bench(lambda s: s["stages"][-1].update(output_dir=s["stages"][0]["output_dir"])), ("for stage 'benchmark'",)),
    Case("run-json-link-out", "received", "an artifact file that is a symbolic link to a file outside the run",
         _symlinked_file, ("is a symbolic link to", "remove the link")),
    Case("figures-link-out", "received", "`figures` a symbolic link to a folder outside the run", _figures_link,
         ("figures is a symbolic link",)),
    Case("run-json-nested-deeply", "received", "run.json of 100,000 nested lists", _deep_state, ("nested too deeply",)),
    Case("eval-npz-garbage", "received", "the benchmark stage's eval.npz replaced by garbage", _garbage_eval,
         ("eval.npz", "not a readable .npz")),
    # item 2: received configs name no executables
    Case("profile-file-in-run", "device", "`bench RUN --device RUN/dev.yaml` (a profile inside the received run)",
         _profile_file_in_run, ("inside the run directory", "received run is data")),
    Case("profile-relative-python", "device", "a profile with `python: ./agent.sh`", _relative_python,
         ("python", "relative path is never resolved")),
    # item 4: trust_factories
    Case("trust-factories-timeit", "config", "`trust_factories: [timeit]`", _validate(tiny_config(
        trust_factories=["timeit"])), ("'timeit' can run any code", "standard-library")),
    Case("trust-factories-cprofile", "config", "`trust_factories: [cProfile]`", _validate(tiny_config(
        trust_factories=["cProfile"])), ("'cProfile' can run any code",)),
    Case("factory-reexported", "config", "a trusted module whose factory is `numpy.load` re-exported",
         lambda d, run: _factory_module(d, NOT_FROM_MODULE, "load"), ("not a function defined in",)),
    Case("factory-not-a-module-class", "config", "a trusted factory that is a class but not an nn.Module",
         lambda d, run: _factory_module(d, NOT_A_MODULE_CLASS, "Net"), ("not an nn.Module",)),
    Case("factory-returns-int", "config", "a trusted factory annotated `-> int`",
         lambda d, run: _factory_module(d, ANNOTATED_INT, "net"), ("annotated to return int",)),
    # item 7: specific errors, YAML keys, labels
    Case("yaml-duplicate-key", "config", "a config giving `name:` twice", _validate(DUP_YAML),
         ("'name' appears twice", "lines 1 and 2")),
    Case("seed-overflow", "config", "`seed: 10**30`", _validate(tiny_config(seed=10**30)), ("seed",)),
    Case("config-path-nul", "config", "`data.path` holding a NUL byte", _nul_path, ("NUL byte",)),
    Case("npz-truncated", "data", "a truncated .npz", _truncated_npz, ("not a readable .npz",)),
    Case("folder-pixel-bomb", "data", "a 30000x30000 PNG in an image folder", _folder_bomb, ("decompression bomb",)),
    Case("npz-labels-repeated", "data", "npz `labels: [a, a, b, c]`", _npz_labels(np.array(["a", "a", "b", "c"])),
         ("names the class 'a' twice",)),
    Case("npz-labels-numbers", "data", "npz `labels: [1.5, 2, 3, 4]`", _npz_labels(np.array([1.5, 2, 3, 4])),
         ("not a list of class names",)),
]  # fmt: skip
IDS = [c.id for c in CASES]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_run(tmp_path_factory.mktemp("finished") / "run")


@pytest.fixture(scope="module")
def observed(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess,
                                                                                           Path]]:  # fmt: skip
    root = tmp_path_factory.mktemp("received")

    def go(case: Case) -> tuple[str, tuple[subprocess.CompletedProcess, Path]]:
        d = root / case.id
        d.mkdir()
        (d / "secret.png").write_bytes(SECRET)
        run = Path(shutil.copytree(finished, d / "run", symlinks=True))
        old = str(finished)
        for f in (run / "run.json", run / "config.resolved.yaml"):  # a copy: the records name the copy's folders
            f.write_text(f.read_text().replace(old, str(run)))
        args = case.make(d, run)
        env = {"PYTHONPATH": f"{d}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # the cases' factory modules
        return case.id, (cli(*args, timeout=300, env=env), d)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(go, CASES))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_received_input_gets_one_specific_line(case: Case, observed) -> None:
    res, d = observed[case.id]
    line = one_error_line(res, case.code)
    for part in case.expect:
        assert part.lower() in line.lower(), f"{part!r} not in: {line}"
    assert "unexpected" not in line
    record(case.group, case.id, case.given, "edgecompress " + res.args[3], str(res.returncode), line)
    leaked = base64.b64encode(SECRET).decode()
    for written in (d / "run").rglob("*"):
        if written.is_file() and not written.is_symlink() and written.suffix in (".html", ".md", ".json", ".onnx"):
            assert leaked not in written.read_text(errors="ignore"), written
    assert not (d / "pwned").exists()
    if (d / "elsewhere").is_dir():
        assert [p.name for p in (d / "elsewhere").iterdir()] == ["latency_accuracy.png"]
        assert (d / "elsewhere" / "latency_accuracy.png").read_bytes() == b"mine"


def test_the_run_itself_benchmarks_and_bundles(finished: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))
    for f in (run / "run.json", run / "config.resolved.yaml"):
        f.write_text(f.read_text().replace(str(finished), str(run)))
    res = cli("bench", str(run), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert cli("verify", str(run / "bundles" / "onnx-fp32"), timeout=120).stdout.startswith("ok:")


def test_the_runs_own_profiles_are_never_used(finished: Path, tmp_path: Path) -> None:
    """The run's config names a profiles_dir inside the run whose `local` runs a script: bench uses the built-in."""
    run = Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))
    for f in (run / "run.json", run / "config.resolved.yaml"):
        f.write_text(f.read_text().replace(str(finished), str(run)))
    _profile_in_run(tmp_path, run)
    res = cli("bench", str(run), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "pwned").exists()
    rows = json.loads((run / "report.json").read_text())["benchmarks"]
    assert rows and all(r["ok"] for r in rows)
    record("device", "profiles-dir-in-run", "the received run's config points `benchmark.profiles_dir` at a profile "
           "in the run whose `python` is a script of the run", "edgecompress bench", "0 (built-in `local` used)",
           "the script did not run: bench takes profiles only from --device / --profiles-dir")  # fmt: skip


def test_validate_says_what_a_trusted_factory_means(tmp_path: Path) -> None:
    (tmp_path / "ec_recv_good.py").write_text(
        "from torch import nn\ndef net(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64 * in_channels, num_classes))\n"
    )
    cfg = tiny_config(trust_factories=["ec_recv_good"])
    cfg["teacher"]["model"] = {"factory": "ec_recv_good:net"}
    env = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = cli("validate", str(write_yaml(tmp_path / "cfg.yaml", cfg)), env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("# ec_recv_good:net is code you chose to run: importing ec_recv_good runs")
    cfg["trust_factories"] = []
    res = cli("validate", str(write_yaml(tmp_path / "cfg.yaml", cfg)), env=env)
    assert "is not trusted" in one_error_line(res, 2)


def _fail(kind: str) -> None:
    from PIL import Image

    raise {
        "oserror": PermissionError(13, "Permission denied", "/data/cfg.yaml"),
        "recursion": RecursionError("maximum recursion depth exceeded while decoding a JSON array"),
        "eof": EOFError("Ran out of input"),
        "bomb": Image.DecompressionBombError("Image size (900000000 pixels) exceeds limit"),
        "nul": ValueError("embedded null byte"),
        "zip": __import__("zipfile").BadZipFile("File is not a zip file"),
    }[kind]


@pytest.mark.parametrize(
    ("kind", "part"),
    [("oserror", "cannot use /data/cfg.yaml: Permission denied"), ("recursion", "nested too deeply"),
     ("eof", "ends before its end"), ("bomb", "more pixels than allowed"), ("nul", "NUL byte"),
     ("zip", "is damaged")],
)  # fmt: skip
def test_library_failures_a_stage_missed_are_named_not_unexpected(kind: str, part: str, capsys) -> None:
    """What reaches the CLI uncaught (the click ``Abort`` that wraps an EOFError included) is still one named line."""
    from edgecompress.cli import app, main

    app.command("trust-test-fail", hidden=True)(_fail)
    code = main(["trust-test-fail", kind])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and part in err[0] and " — fix: " in err[0] and "unexpected" not in err[0]
    given = {"oserror": "PermissionError on a named file", "recursion": "RecursionError", "eof": "EOFError (typer "
             "wraps it in Abort)", "bomb": "PIL DecompressionBombError", "nul": "ValueError: embedded null byte",
             "zip": "zipfile.BadZipFile"}[kind]  # fmt: skip
    record("config", f"uncaught-{kind}", f"{given}, reaching the CLI", "edgecompress (any command)", "2", err[0])
