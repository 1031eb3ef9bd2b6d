"""Cleanup only of what this tool made (issue 15, findings 2 and 9): a non-empty --out that is not a run directory is
refused, temporary names are removed through the run's ledger (never by pattern over a user's tree), bundles of an
earlier config are removed, ``.NAME.old.PID`` after a SIGKILL is cleaned, and the lock file never follows a link."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import one_line_message, record
from edgecompress.errors import ResourceError
from edgecompress.pipeline.rundir import LOCK, RunDir

USER_FILES = [".my-settings/", "src/.cache-20240101/", "docs/.notes.tmp", ".old-thesis-2"]


def _plant(root: Path) -> list[Path]:
    """The user's hidden files of the issue's reproduction (folders end with /)."""
    made = []
    for rel in USER_FILES:
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            (path / "keep.txt").write_text("mine")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("mine")
        made.append(path)
    return made


def test_non_empty_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "P"
    made = _plant(project)
    with pytest.raises(ResourceError) as err:
        RunDir(project).prepare()
    msg = one_line_message(err.value)
    assert "is not empty and is not an edgecompress run directory" in msg
    record("resource", "out-user-project-prepare", "`--out` a folder of the user's", "RunDir.prepare", "2", msg)
    assert all(p.exists() for p in made)
    assert not (project / "stages").exists() and not (project / LOCK).exists()


def test_user_files_inside_a_run_directory_survive_a_rerun(tmp_path: Path) -> None:
    """Even inside a run directory, hidden names that look like temp files are the user's unless the ledger says so."""
    run = RunDir(tmp_path / "run")
    run.prepare()
    made = _plant(run.root)
    (run.root / "bundles").mkdir()
    (run.root / "bundles" / ".notes-12345678").write_text("mine")
    run.close()
    again = RunDir(run.root)
    again.prepare()
    assert all(p.exists() for p in made) and (run.root / "bundles" / ".notes-12345678").exists()


def test_empty_folder_and_legacy_run_directory_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").prepare()
    legacy = tmp_path / "legacy"  # a run made before the marker: recognised by its lock file
    (legacy / "stages").mkdir(parents=True)
    (legacy / LOCK).touch()
    RunDir(legacy).prepare()
    assert (legacy / ".edgecompress" / "run-dir.json").is_file()


def _killed(root: Path, body: str) -> None:
    """Run ``body`` in a child process that holds the prepared run directory ``run`` and is SIGKILLed by it."""
    code = textwrap.dedent(
        f"""
        import os, signal, shutil
        from pathlib import Path
        from edgecompress.pipeline.rundir import RunDir
        from edgecompress import _io
        run = RunDir({str(root)!r})
        run.prepare()
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        """
    ) + textwrap.dedent(body)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)  # noqa: S603
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]


def test_temp_of_a_killed_atomic_write_is_removed_through_the_ledger(tmp_path: Path) -> None:
    root = tmp_path / "run"
    _killed(
        root,
        """
        with _io.atomic_path(run.root / "stages" / "report.md") as tmp:
            tmp.write_text("half")
            work = _io.make_temp_dir(run.root / "stages" / "export-abc", ".onnx-fp32-")
            die()
        """,
    )
    left = [p for p in root.rglob(".*") if ".edgecompress" not in p.parts and p.name != LOCK]
    assert len(left) == 2, left  # the temp file and the work folder
    entries = [json.loads(line)["path"] for line in (root / ".edgecompress" / "ledger.jsonl").read_text().splitlines()]
    assert sorted(entries) == sorted(p.relative_to(root).as_posix() for p in left)
    removed = RunDir(root)
    removed.prepare()
    assert not any(p.exists() for p in left)


def test_old_bundle_folder_left_by_sigkill_is_removed(tmp_path: Path) -> None:
    """Finding 9: a kill between moving the old bundle aside and removing it leaves ``bundles/.NAME.old.PID``."""
    root = tmp_path / "run"
    art = tmp_path / "m.onnx"
    art.write_bytes(b"onnx")
    fields = {
        "model": {"format": "onnx", "precision": "fp32", "runtime": "onnxruntime"},
        "input_shape": [1, 2, 2],
        "preprocessing": {"mean": [0.0], "std": [1.0], "size": [2, 2], "channels": 1},
        "labels": ["a", "b"],
    }
    _killed(
        root,
        f"""
        from edgecompress.bundle import write_bundle
        kw = dict(name="b1", files=[{str(art)!r}], model_file={str(art)!r}, manifest_fields={fields!r},
                  out_dir=run.bundles_dir)
        write_bundle(**kw)
        calls, real_rmtree = [], shutil.rmtree
        def rmtree(*a, **k):  # the kill lands right after the old bundle was moved aside (second rmtree)
            calls.append(a)
            return die() if len(calls) == 2 else real_rmtree(*a, **k)
        shutil.rmtree = rmtree
        write_bundle(**kw)
        """,
    )
    old = [p for p in (root / "bundles").iterdir() if p.name.startswith(".b1.old.")]
    assert len(old) == 1 and (root / "bundles" / "b1" / "manifest.json").is_file()
    RunDir(root).prepare()
    assert not old[0].exists() and (root / "bundles" / "b1" / "manifest.json").is_file()


def test_remove_stale_bundles_keeps_the_current_ones_and_user_files(tmp_path: Path) -> None:
    from edgecompress.bundle import write_bundle, zip_bundle

    run = RunDir(tmp_path / "run")
    run.prepare()
    art = tmp_path / "m.onnx"
    art.write_bytes(b"onnx")
    fields = {
        "model": {"format": "onnx", "precision": "fp32", "runtime": "onnxruntime"},
        "input_shape": [1, 2, 2],
        "preprocessing": {"mean": [0.0], "std": [1.0], "size": [2, 2], "channels": 1},
        "labels": ["a", "b"],
    }
    for name in ("old-int8", "new-fp32"):
        bundle = write_bundle(name=name, files=[art], model_file=art, manifest_fields=fields, out_dir=run.bundles_dir)
        zip_bundle(bundle)
    (run.bundles_dir / "notes.txt").write_text("mine")
    (run.bundles_dir / "mine").mkdir()
    removed = run.remove_stale_bundles({"new-fp32"})
    assert sorted(p.name for p in removed) == ["old-int8", "old-int8.zip"]
    assert sorted(p.name for p in run.bundles_dir.iterdir()) == ["mine", "new-fp32", "new-fp32.zip", "notes.txt"]
    assert run.remove_stale_bundles({"new-fp32"}) == []


def test_hostile_ledger_deletes_nothing_outside_the_run(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.prepare()
    outside = tmp_path / "outside"
    (outside / ".secret.tmp").mkdir(parents=True)
    (outside / ".keys.tmp").write_text("mine")
    os.symlink(outside, run.root / "docs")
    lines = ["../outside/.keys.tmp", str(outside / ".keys.tmp"), "docs/.keys.tmp", "docs/.secret.tmp", "stages/.."]
    with open(run.ledger_path, "a") as fh:
        fh.write("".join(json.dumps({"kind": "temp", "path": p}) + "\n" for p in lines) + "not json\n")
        fh.write(json.dumps({"kind": "made", "path": "../outside"}) + "\n")
    run.close()
    again = RunDir(run.root)
    again.prepare()
    again.remove_stale_bundles(set())
    assert (outside / ".keys.tmp").is_file() and (outside / ".secret.tmp").is_dir() and (run.root / "docs").exists()


def test_lock_file_does_not_follow_a_dangling_symlink(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.prepare()
    target = tmp_path / "created-through-the-link"
    (run.root / LOCK).unlink()
    run.close()
    os.symlink(target, run.root / LOCK)
    with pytest.raises(ResourceError) as err:
        RunDir(run.root).prepare()
    msg = one_line_message(err.value)
    assert "is a symbolic link" in msg
    record("resource", "lock-file-link", "a dangling link as the run's lock file", "RunDir.prepare", "2", msg)
    assert not target.exists()
