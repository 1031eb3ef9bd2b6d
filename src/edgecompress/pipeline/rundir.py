"""The content-addressed run directory.

``<run>/stages/<stage>-<hash>/`` holds one stage's outputs; the hash covers (stage, its config, its inputs' hashes),
so a rerun with the same config finds finished stages and skips them, and a changed config gets a fresh folder.
A stage is finished only when its ``_done.json`` marker exists; the marker is written last, atomically, so a stage
killed midway is redone (its own checkpoints inside the folder let it resume where it stopped).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress._io import atomic_write_json, sha256_json
from edgecompress.errors import ResourceError

log = logging.getLogger(__name__)

DONE = "_done.json"
MIN_FREE_BYTES = 200 * 1024 * 1024
LOCK = ".edgecompress.lock"
_ROOT_KEY = "_run_root"  # in _done.json: the run directory the stage's recorded paths were written under
# `.name.XXXXXXXX.tmp` of _io.atomic_path and `.prefix-XXXXXXXX` folders of tempfile.mkdtemp (exporters, bundles)
_TEMP_RE = re.compile(r"^\.(.+(\.tmp|-[a-z0-9_]{8})|old-.+-\d+)$")  # and `.old-<name>-<pid>` swap leftovers


@dataclass(frozen=True)
class StageDir:
    """One stage's folder and its identity."""

    name: str
    key: str
    path: Path

    @property
    def done(self) -> bool:
        return (self.path / DONE).is_file()

    def result(self) -> dict[str, Any]:
        """The stage's recorded result; paths recorded under another run root (the run was moved) are re-rooted."""
        data = json.loads((self.path / DONE).read_text())
        old = data.pop(_ROOT_KEY, None)
        return reroot(data, Path(old), self.path.parent.parent) if old else data

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.path / DONE, {**result, _ROOT_KEY: str(self.path.parent.parent)})
        return result


def reroot(value: Any, old: Path, new: Path) -> Any:
    """``value`` (JSON-like) with every string path under ``old`` moved under ``new`` (a moved or copied run)."""
    if old == new:
        return value
    prefix = f"{old}/"

    def walk(v: Any) -> Any:
        if isinstance(v, str) and v.startswith(prefix):
            return str(new / v[len(prefix) :])
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


class RunDir:
    """A run directory: resolved config, stage folders, report and bundles."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._lock_fh: Any = None

    def prepare(self) -> None:
        """Create the folder and fail early, in one line, when it cannot be written or the disk is nearly full."""
        try:
            (self.root / "stages").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResourceError(
                f"cannot create the run directory {self.root}: {exc.strerror}", "choose a writable --out directory"
            ) from None
        if not os.access(self.root, os.W_OK):
            raise ResourceError(f"the run directory {self.root} is not writable", "choose a writable --out directory")
        free = shutil.disk_usage(self.root).free
        if free < MIN_FREE_BYTES:
            raise ResourceError(
                f"only {free // 2**20} MiB free on the disk of {self.root}; a run needs at least "
                f"{MIN_FREE_BYTES // 2**20} MiB",
                "free disk space or choose another --out directory",
            )
        self._lock()
        self.sweep()

    def _lock(self) -> None:
        """Hold an exclusive lock on the run directory for this process's life (released by the OS, even on kill)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, and no sweep of other writers' files either
            return
        if self._lock_fh is not None:
            return
        fh = open(self.root / LOCK, "a")  # noqa: SIM115 (kept open: the lock lives as long as the file handle)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ResourceError(
                f"another edgecompress process is using the run directory {self.root}",
                "wait for it to finish, or choose another --out directory",
            ) from None
        self._lock_fh = fh

    def sweep(self) -> list[Path]:
        """Remove temporary files and folders left by a killed run (atomic-write temps, exporter work folders).

        Only called with the directory's lock held, so no live writer owns them.
        """
        if self._lock_fh is None:
            return []
        stale = [p for p in self.root.rglob(".*") if _TEMP_RE.match(p.name)]
        for p in sorted(stale, key=lambda q: len(q.parts), reverse=True):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", len(stale), self.root)
        return stale

    def stage(self, name: str, key_material: dict[str, Any]) -> StageDir:
        key = sha256_json({"stage": name, **key_material})[:12]
        path = self.root / "stages" / f"{name}-{key}"
        path.mkdir(parents=True, exist_ok=True)
        return StageDir(name=name, key=key, path=path)

    @property
    def report_dir(self) -> Path:
        return self.root

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"
