"""Atomic file writes and hashing. Every file the pipeline writes goes through here (temp file + fsync + rename).

Temporary names are recorded *before* they are created in the ledger of the run directory that holds them (see
:func:`register_ledger`; :class:`edgecompress.pipeline.rundir.RunDir` registers its ledger while it holds the lock),
so that a rerun after a kill removes exactly what this tool made and nothing else. Code that makes a temporary folder
inside a run directory calls :func:`make_temp_dir` (not ``tempfile.mkdtemp``) for the same reason.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed over ``path``.

    Use for writers that want a file name (``torch.save``, ``onnx.save``, ``zipfile``). On error the temporary file is
    removed and ``path`` is untouched, so a reader never sees a half-written file.
    """
    path = Path(path)
    check_write(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path.parent, f".{path.name}.", ".tmp", folder=False)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if _disk_full(exc, path.parent):
            from edgecompress.errors import ResourceError

            raise ResourceError(
                f"no space left on the disk of {path.parent} while writing {path.name} (nothing was half-written)",
                "free disk space and rerun the same command: finished stages and epochs are kept",
            ) from exc
        raise


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_LEDGERS: dict[Path, Path] = {}  # run directory root (resolved) -> its ledger file
_LEDGER_LOCK = threading.Lock()


def register_ledger(root: str | os.PathLike[str], ledger: str | os.PathLike[str]) -> None:
    """Record every temporary name made under ``root`` (and every :func:`ledger_record` call) in ``ledger``.

    ``ledger`` is a JSON-lines file: ``{"kind": "temp" | "made", "path": <path relative to root>}`` per line.
    """
    with _LEDGER_LOCK:
        _LEDGERS[Path(root).resolve()] = Path(ledger)


def unregister_ledger(root: str | os.PathLike[str]) -> None:
    """Stop recording names under ``root``."""
    with _LEDGER_LOCK:
        _LEDGERS.pop(Path(root).resolve(), None)


def check_write(folder: str | os.PathLike[str]) -> None:
    """Refuse a write into ``folder`` when it lies in a registered run directory but resolves outside it (a symbolic
    link planted in a received run, e.g. ``figures`` -> elsewhere): one line naming the link
    (:func:`edgecompress._contain.contained`)."""
    if not _LEDGERS:
        return
    full = Path(os.path.abspath(folder))
    with _LEDGER_LOCK:
        roots = [r for r in _LEDGERS if r == full or r in full.parents]
    if roots:
        from edgecompress._contain import contained
        from edgecompress.errors import ResourceError

        contained(
            roots[0],
            full,
            what="a write into the run directory",
            error=ResourceError,
            fix="a run directory holds its own folders, never links to elsewhere",
            label="the run directory",
        )


def ledger_record(path: str | os.PathLike[str], kind: str = "temp") -> bool:
    """Append ``path`` to the ledger of the registered run directory that holds it; False when none holds it.

    ``kind`` is ``"temp"`` for a name to remove when a killed run left it behind, ``"made"`` for an output this tool
    published (bundles), which a later run may replace.
    """
    if not _LEDGERS:
        return False
    path = Path(path)
    full = Path(os.path.abspath(path.parent)).resolve() / path.name
    with _LEDGER_LOCK:
        for root, ledger in _LEDGERS.items():
            if root in full.parents:
                line = json.dumps({"kind": kind, "path": full.relative_to(root).as_posix()}) + "\n"
                try:
                    fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW, 0o644)
                    try:
                        os.write(fd, line.encode("utf-8"))  # one write in append mode: lines never interleave
                    finally:
                        os.close(fd)
                except OSError as exc:  # a full disk or a removed ledger must not fail the write itself
                    logging.getLogger(__name__).debug("cannot record %s in %s: %s", path, ledger, exc)
                    return False
                return True
    return False


def _new_temp(parent: Path, prefix: str, suffix: str, *, folder: bool) -> Path:
    """Create a new temp file or folder with a random name, recorded in the ledger before it exists."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        ledger_record(path, "temp")
        try:
            if folder:
                os.mkdir(path, 0o700)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {parent}")


def make_temp_dir(parent: str | os.PathLike[str], prefix: str, suffix: str = "") -> Path:
    """Create a new private folder ``parent/<prefix>XXXXXXXX<suffix>`` (like ``tempfile.mkdtemp``), recorded first in
    the ledger of the run directory holding ``parent`` so that a rerun removes it if this process is killed."""
    parent = Path(parent)
    check_write(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return _new_temp(parent, prefix, suffix, folder=True)


def _disk_full(exc: BaseException, folder: Path) -> bool:
    """True when a failed write failed because the disk (or quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, RuntimeError):  # torch.save's stream writer hides the errno ("unexpected pos 128 vs 0")
        try:
            return shutil.disk_usage(folder).free < 1 << 20
        except OSError:
            return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys), used to address stage outputs."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()
