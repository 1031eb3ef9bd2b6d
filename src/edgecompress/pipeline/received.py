"""A run directory's records are data: every path they name is resolved inside the run, every name is a plain name.

``run.json`` and each stage's ``_done.json`` record paths (stage folders, model files, reliability diagrams, the
data-free sample grid). Before anything reads or writes through them, :func:`contain_paths` walks the typed result,
resolves each path field with the one containment rule (:func:`edgecompress._contain.contained`: relative, absolute,
``..`` and symbolic links alike) and replaces it by its resolved form; a field that leads outside the run is refused
in one line. Names that become folder names (an artifact's ``name`` and ``refit_of``) must be plain names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from edgecompress._contain import contained
from edgecompress.errors import ConfigError
from edgecompress.export import Artifact
from edgecompress.measurements import BenchRow
from edgecompress.pipeline.results import CalibrateResult, DistillResult, StageRecord

M = TypeVar("M", bound=BaseModel)

FIX = "a run directory is data: rerun the pipeline to rewrite it; never edit its records by hand"
# the fields of each record type that name a file or folder of the run
PATH_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {
    StageRecord: ("output_dir",),
    CalibrateResult: ("reliability_png",),
    DistillResult: ("sample_grid", "bank"),
    Artifact: ("files", "model_file", "reliability_png"),
    BenchRow: ("logits_file",),
}
# the fields that become a folder name
NAME_FIELDS: dict[type[BaseModel], tuple[str, ...]] = {Artifact: ("name", "refit_of")}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def contain_paths(record: M, root: Path, what: str) -> M:
    """``record`` with every path field resolved inside ``root`` (recursively through nested records and lists).

    Raises:
        ConfigError: a path field leads outside the run (``..``, an absolute path elsewhere, a link that leaves),
            or a name field is not a plain name.
    """
    return _walk(record, Path(root), what)


def _walk(value: Any, root: Path, what: str) -> Any:
    if isinstance(value, BaseModel):
        update: dict[str, Any] = {}
        for name in NAME_FIELDS.get(type(value), ()):
            check_name_field(getattr(value, name), what, name)
        paths = PATH_FIELDS.get(type(value), ())
        for name in type(value).model_fields:
            field = getattr(value, name)
            if name in paths:
                update[name] = _resolve(field, root, what)
            elif isinstance(field, BaseModel | list | tuple | dict):
                walked = _walk(field, root, what)
                if walked is not field:
                    update[name] = walked
        return value.model_copy(update=update) if update else value
    if isinstance(value, list | tuple):
        items = [_walk(v, root, what) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else type(value)(items)
    if isinstance(value, dict):
        walked = {k: _walk(v, root, what) for k, v in value.items()}
        return value if all(walked[k] is v for k, v in value.items()) else walked
    return value


def _resolve(field: Any, root: Path, what: str) -> Any:
    if field is None:
        return None
    if isinstance(field, list):
        return [_resolve(f, root, what) for f in field]
    resolved = contained(root, str(field), what=what, fix=FIX)
    return resolved if isinstance(field, Path) else str(resolved)


def check_name_field(value: Any, what: str, field: str) -> None:
    """Refuse a recorded name that is not a plain folder name (letters, digits, ``._-``; no ``/`` or ``..``)."""
    if value is not None and (not isinstance(value, str) or not _NAME_RE.match(value)):
        from edgecompress._text import printable

        raise ConfigError(f"{what} records the {field} {printable(repr(value))[:120]}, which is not a plain name", FIX)


def check_stage_folder(record: StageRecord, root: Path, what: str) -> None:
    """A stage record's folder must be the run's own ``stages/<name>-<key>`` (resolved: not a link elsewhere)."""
    if record.output_dir is None:
        return
    stages = contained(root, "stages", what=what, fix=FIX)
    folder = Path(record.output_dir)
    if folder.parent != stages or not folder.name.startswith(f"{record.name}-"):
        raise ConfigError(f"{what} records the folder {folder} for stage {record.name!r}, not one of {stages}", FIX)
