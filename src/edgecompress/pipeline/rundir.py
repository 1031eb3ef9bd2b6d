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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress._io import atomic_write_json, sha256_json
from edgecompress.errors import ResourceError

log = logging.getLogger(__name__)

DONE = "_done.json"
MIN_FREE_BYTES = 200 * 1024 * 1024


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
        return json.loads((self.path / DONE).read_text())

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        atomic_write_json(self.path / DONE, result)
        return result


class RunDir:
    """A run directory: resolved config, stage folders, report and bundles."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

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
