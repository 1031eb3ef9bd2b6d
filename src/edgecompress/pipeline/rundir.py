"""The content-addressed run directory.

``<run>/stages/<stage>-<hash>/`` holds one stage's outputs; the hash covers (stage, its config, its inputs' hashes),
so a rerun with the same config finds finished stages and skips them, and a changed config gets a fresh folder.
A stage is finished only when its ``_done.json`` marker exists; the marker is written last, atomically, so a stage
killed midway is redone (its own checkpoints inside the folder let it resume where it stopped).

``<run>/.edgecompress/run-dir.json`` marks a folder as a run directory this tool made: ``prepare`` refuses a non-empty
folder without it (``--out`` pointed at a user's project). ``<run>/.edgecompress/ledger.jsonl`` lists every temporary
name this tool made in the run (recorded before the name is created, by :mod:`edgecompress._io`) and every bundle it
published; cleanup removes what the ledger lists and nothing else — never by name pattern over the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from edgecompress._contain import contained
from edgecompress._io import atomic_write_json, register_ledger, sha256_json, unregister_ledger
from edgecompress.errors import ResourceError

log = logging.getLogger(__name__)

DONE = "_done.json"
MIN_FREE_BYTES = 200 * 1024 * 1024
LOCK = ".edgecompress.lock"
META = ".edgecompress"  # the tool's own folder in a run directory: marker and ledger
MARKER = "run-dir.json"
LEDGER = "ledger.jsonl"
MAX_LEDGER_BYTES = 16 << 20
_ROOT_KEY = "_run_root"  # in _done.json: the run directory the stage's recorded paths were written under
# Inside stages/<stage>-<key>/ (folders wholly this tool's) exporters' `.prefix-XXXXXXXX` work folders made with
# tempfile.mkdtemp by versions before _io.make_temp_dir are also swept by name; never anywhere else.
_TEMP_RE = re.compile(r"^\.(.+(\.tmp|-[a-z0-9_]{8})|old-.+-\d+|.+\.old\.\d+)$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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

    @property
    def meta_dir(self) -> Path:
        return self.root / META

    @property
    def ledger_path(self) -> Path:
        return self.meta_dir / LEDGER

    def is_run_dir(self) -> bool:
        """True when the folder carries this tool's marker (or the lock file of a run made before the marker)."""
        for path in (self.meta_dir / MARKER, self.root / LOCK):
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.lstat(path).st_mode):
                    return True
        return False

    def prepare(self) -> None:
        """Create the folder and fail early, in one line, when it cannot be written, the disk is nearly full, or it is
        a non-empty folder this tool did not make (a user's project given as ``--out``)."""
        try:
            if self.root.is_dir() and any(self.root.iterdir()) and not self.is_run_dir():
                raise ResourceError(
                    f"{self.root} is not empty and is not an edgecompress run directory (no {META}/{MARKER})",
                    "choose a new or empty --out folder; edgecompress writes into and cleans up only its own run "
                    "directories",
                )
        except OSError as exc:
            raise ResourceError(
                f"cannot read the run directory {self.root}: {exc.strerror}", "choose a readable --out directory"
            ) from None
        for sub in ("stages", "bundles", "figures", META):
            if (self.root / sub).is_symlink():
                raise ResourceError(
                    f"{self.root / sub} is a symbolic link; a run directory holds its own folders",
                    f"remove the link {self.root / sub} or choose another --out directory",
                )
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
        self.meta_dir.mkdir(exist_ok=True)
        if not (self.meta_dir / MARKER).is_file():
            from edgecompress import __version__

            atomic_write_json(self.meta_dir / MARKER, {"tool": "edgecompress", "version": __version__})
        register_ledger(self.root, self.ledger_path)
        self.sweep()

    def _lock(self) -> None:
        """Hold an exclusive lock on the run directory for this process's life (released by the OS, even on kill)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, and no sweep of other writers' files either
            return
        if self._lock_fh is not None:
            return
        try:  # O_NOFOLLOW: a (dangling) symlink planted as the lock file must not create or truncate its target
            fd = os.open(self.root / LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ResourceError(
                    f"the lock file {self.root / LOCK} is a symbolic link", f"remove {self.root / LOCK} and rerun"
                ) from None
            raise ResourceError(
                f"cannot create the lock file in {self.root}: {exc.strerror}", "choose a writable --out directory"
            ) from None
        fh = os.fdopen(fd, "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ResourceError(
                f"another edgecompress process is using the run directory {self.root}",
                "wait for it to finish, or choose another --out directory",
            ) from None
        self._lock_fh = fh

    def close(self) -> None:
        """Release the lock and stop recording temporary names in the ledger (the OS also does this at exit)."""
        if self._lock_fh is not None:
            unregister_ledger(self.root)
            self._lock_fh.close()
            self._lock_fh = None

    def _ledger(self) -> list[dict[str, str]]:
        """The ledger's valid entries (bad lines of a damaged or hostile ledger are skipped)."""
        try:
            st = os.lstat(self.ledger_path)
        except OSError:
            return []
        if not stat.S_ISREG(st.st_mode):
            return []
        if st.st_size > MAX_LEDGER_BYTES:
            log.warning("ignoring the ledger %s: %d bytes is more than a run writes", self.ledger_path, st.st_size)
            return []
        entries = []
        for line in self.ledger_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("kind") in ("temp", "made") and isinstance(row.get("path"), str):
                entries.append({"kind": row["kind"], "path": row["path"]})
        return entries

    def _write_ledger(self, entries: list[dict[str, str]]) -> None:
        text = "".join(json.dumps(e) + "\n" for e in entries)
        tmp = self.meta_dir / f".{LEDGER}.new"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, self.ledger_path)

    def _inside(self, rel: str) -> Path | None:
        """``root/rel`` when ``rel`` is a plain relative path whose folders are real folders inside the run (no
        links); None otherwise (the entry is ignored)."""
        if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
            return None
        parts = PurePosixPath(rel).parts
        if not parts or any(p in ("", ".", "..") for p in parts):
            return None
        folder = self.root
        for part in parts[:-1]:
            folder = folder / part
            try:
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    return None
            except OSError:
                return None
        return folder / parts[-1]

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return True

    def sweep(self) -> list[Path]:
        """Remove what a killed run of this tool left: the temporary names in the ledger (atomic-write temps, work
        folders, ``bundles/.NAME.old.PID``) and exporters' work folders inside the stage folders.

        Only called with the directory's lock held, so no live writer owns them. Nothing outside the ledger and the
        stage folders is looked at; links are removed, never followed.
        """
        if self._lock_fh is None:
            return []
        removed: list[Path] = []
        if self._remove(self.meta_dir / f".{LEDGER}.new"):  # a kill while the ledger was being compacted
            removed.append(self.meta_dir / f".{LEDGER}.new")
        entries = self._ledger()
        for entry in entries:
            path = self._inside(entry["path"]) if entry["kind"] == "temp" else None
            if path is not None and path.name.startswith(".") and self._remove(path):
                removed.append(path)
        stages = self.root / "stages"
        if stages.is_dir() and not stages.is_symlink():
            for stage in sorted(stages.iterdir()):
                if not stage.is_dir() or stage.is_symlink():
                    continue
                for folder, dirs, files in os.walk(stage):  # followlinks=False: links are names, not folders
                    for name in [*dirs, *files]:
                        if _TEMP_RE.match(name) and self._remove(Path(folder) / name):
                            removed.append(Path(folder) / name)
                    dirs[:] = [d for d in dirs if (Path(folder) / d).is_dir()]
        kept = [e for e in entries if e["kind"] == "made"]
        if len(kept) != len(entries) and self.ledger_path.is_file():
            self._write_ledger(kept)
        if removed:
            log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), self.root)
        return removed

    def remove_stale_bundles(self, keep: set[str]) -> list[Path]:
        """Remove bundle folders and zips under ``bundles/`` that this tool published (ledger) and whose name is not
        in ``keep`` (bundle names; ``NAME.zip`` goes with ``NAME``). Returns the removed paths.

        Called after a run wrote its bundles, so a rerun with another config does not leave the old ones beside them.
        Files a user put in ``bundles/`` are never touched.
        """
        if self._lock_fh is None:
            return []
        removed: list[Path] = []
        entries = self._ledger()
        kept: list[dict[str, str]] = []
        for entry in entries:
            parts = PurePosixPath(entry["path"]).parts
            if entry["kind"] != "made" or len(parts) != 2 or parts[0] != "bundles":
                kept.append(entry)
                continue
            name = parts[1].removesuffix(".zip")
            path = self._inside(entry["path"])
            if name in keep or path is None:
                kept.append(entry)
            elif self._remove(path):
                removed.append(path)
        unique: list[dict[str, str]] = []
        for e in kept:  # a bundle rewritten by several runs is listed once
            if e not in unique:
                unique.append(e)
        if unique != entries and self.ledger_path.is_file():
            self._write_ledger(unique)
        if removed:
            log.info("removed %d bundle(s) of an earlier config from %s", len(removed), self.bundles_dir)
        return removed

    def stage(self, name: str, key_material: dict[str, Any]) -> StageDir:
        key = sha256_json({"stage": name, **key_material})[:12]
        path = contained(
            self.root,
            f"stages/{name}-{key}",
            what=f"the {name} stage's folder",
            error=ResourceError,
            fix="a run directory holds its own folders, never links to elsewhere",
        )
        path.mkdir(parents=True, exist_ok=True)
        return StageDir(name=name, key=key, path=path)

    @property
    def report_dir(self) -> Path:
        return self.root

    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"
