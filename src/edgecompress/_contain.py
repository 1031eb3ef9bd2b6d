"""The one containment rule for everything received: a path read from a run directory, a bundle, a manifest or a
received config must resolve, symbolic links included, to a place inside its root — for reading and for writing.

A run directory or bundle from elsewhere is data. Its records name files (a reliability diagram, an artifact's file
list, a stage folder); :func:`contained` resolves such a name one component at a time, as the operating system would,
and refuses it when any step leaves the root: a ``..`` above the root, an absolute path elsewhere, or a symbolic link
whose target lies outside (the message names that link). Writers call it too, so a ``figures`` link planted in a
received run cannot make the tool write elsewhere.

Example:
    >>> contained(run_root, "stages/export-1a2b/artifacts/onnx-fp32/model.onnx", what="run.json")
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgecompress.errors import ConfigError, EdgeCompressError

_MAX_LINKS = 40  # like the kernel's ELOOP limit
DEFAULT_FIX = "a received run directory or bundle is data: use the original, or rerun the pipeline to rewrite it"


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` is ``root`` or below it (both already resolved; no file system access)."""
    return path == root or root in path.parents


def contained(
    root: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[EdgeCompressError] = ConfigError,
    fix: str = DEFAULT_FIX,
    label: str = "the run directory",
) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved, every symbolic link followed; it must stay in ``root``.

    The path is walked one component at a time from the resolved root: ``.`` is skipped, ``..`` goes up (never above
    the root), a symbolic link is replaced by its fully resolved target, which must lie inside the root. Components
    that do not exist yet are kept as they are (the path of a file about to be written). An absolute ``path`` must
    lie under ``root`` (as given or resolved) to begin with.

    Args:
        root: the folder everything must stay in (a run directory, a bundle folder).
        path: the name read from a record, manifest or config.
        what: what named the path (e.g. ``"run.json"``, ``"manifest.json"``), for the message.
        error: the error type to raise (``ConfigError`` for run directories, ``BundleError`` for bundles).
        fix: the fix the message gives.
        label: what the root is, for the message ("the run directory", "the bundle").

    Returns:
        The resolved absolute path, inside the resolved root.

    Raises:
        EdgeCompressError: (of type ``error``) one line naming the path and, for a link that leaves, the link.
    """
    text = os.fspath(path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    given = Path(root).absolute()
    where = f"{label} {_shown(str(given))}"
    base = Path(os.path.realpath(given))
    shown = _shown(text)
    if not text or "\x00" in text:
        raise error(f"{what} names the path {shown}, which is empty or holds a NUL byte", fix)
    try:
        text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise error(f"{what} names the path {shown}, which is not a valid file name", fix) from None
    candidate = Path(text)
    if candidate.is_absolute():
        rel = _relative_to_any(candidate, (given, base))
        if rel is None:
            raise error(f"{what} names the path {shown}, which is outside {where}", fix)
        parts = rel.parts
    else:
        parts = candidate.parts
    current = base
    links = 0
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if current == base:
                raise error(f"{what} names the path {shown}, which leads out of {where} ('..')", fix)
            current = current.parent
            continue
        step = current / part
        try:
            is_link = stat.S_ISLNK(os.lstat(step).st_mode)
        except OSError:  # not there (yet): nothing below it can be a link either
            is_link = False
        if is_link:
            links += 1
            target = Path(os.path.realpath(step))
            if links > _MAX_LINKS or not is_inside(target, base):
                raise error(
                    f"{what} names the path {shown}: {_shown(str(step))} is a symbolic link to {_shown(str(target))}, "
                    f"outside {where}",
                    f"remove the link {_shown(str(step))}; {fix}",
                )
            current = target
        else:
            current = step
    return current


def _relative_to_any(path: Path, roots: tuple[Path, ...]) -> Path | None:
    for r in roots:
        try:
            return path.relative_to(r)
        except ValueError:
            continue
    return None


def _shown(text: str, limit: int = 200) -> str:
    """A path as it may appear in a one-line message: control characters escaped, long ones shortened."""
    from edgecompress._text import printable

    safe = printable(text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."
