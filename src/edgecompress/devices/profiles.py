"""Device profiles: built-in YAML files shipped with the package, plus user directories."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgecompress.devices.config import DeviceProfile
from edgecompress.errors import DeviceError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

BUILTIN_DIR = Path(__file__).with_name("profiles")


def _dirs(extra_dirs: Iterable[Path | str | None] = ()) -> list[Path]:
    # user directories first, so a user profile named like a built-in one replaces it
    return [Path(d).expanduser() for d in extra_dirs if d] + [BUILTIN_DIR]


def list_profiles(extra_dirs: Iterable[Path | str | None] = ()) -> dict[str, Path]:
    """Known profile names -> their YAML file (user directories take precedence over built-ins)."""
    found: dict[str, Path] = {}
    for d in _dirs(extra_dirs):
        if d.is_dir():
            for f in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                found.setdefault(f.stem, f)
    return found


def _read(path: Path) -> DeviceProfile:
    import yaml

    from edgecompress.config import safe_load_yaml

    try:  # bounded: a profile is a file from outside (an alias bomb is refused, not expanded)
        data = safe_load_yaml(path.read_text(encoding="utf-8"), source=str(path)) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DeviceError(f"cannot read device profile {path}: {exc}", "fix the YAML file") from exc
    if not isinstance(data, dict):
        raise DeviceError(f"device profile {path} is not a mapping", "write 'name: ...', 'transport: ...' keys")
    data.setdefault("name", path.stem)
    try:
        return DeviceProfile(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "profile"
        raise DeviceError(
            f"device profile {path.name}: {where}: {_describe(first)}",
            "fix that field; see the built-in profiles in edgecompress/devices/profiles/",
        ) from exc


def _describe(error: ErrorDetails) -> str:
    msg = str(error["msg"])
    if msg.startswith("Value error, "):  # our validators already quote the bad value
        return msg.removeprefix("Value error, ")
    return f"{msg} (got {error.get('input')!r})"


def load_profile(name_or_path: str | Path, extra_dirs: Iterable[Path | str | None] = ()) -> DeviceProfile:
    """Load a profile by name (user dirs, then built-ins) or from a YAML path.

    Raises:
        DeviceError: unknown name (the message lists the known ones) or an invalid profile file.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise DeviceError(f"device profile file not found: {path}", "check the path")
        return _read(path)
    known = list_profiles(extra_dirs)
    if text not in known:
        raise DeviceError(
            f"unknown device profile '{text}'; known: {', '.join(sorted(known))}",
            "use one of those names, a path to a profile YAML, or add <name>.yaml to benchmark.profiles_dir",
        )
    return _read(known[text])


def profile_contents(names: Iterable[str | Path], extra_dirs: Iterable[Path | str | None] = ()) -> list[dict[str, Any]]:
    """What a stage key records of its devices: each profile's contents, not its name (editing a profile's host,
    threads or runtimes changes the key, so rows measured with the old profile are not reused).

    Raises:
        DeviceError: a name that is no profile (the message lists the known ones).
    """
    dirs = list(extra_dirs)
    return [load_profile(n, dirs).model_dump(mode="json", exclude={"description"}) for n in names]
