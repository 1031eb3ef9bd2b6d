"""Registries of pluggable components (torchdistill's ``register_*`` / ``get_*`` idea, Olive's pass registry).

A component registers itself where it is defined, with a decorator on its class::

    @LOSSES.register("kd", summary="Hinton KD")
    class KDLoss(DistillLoss): ...

The config's allowed names, the decide stage's candidates and ``edgecompress schema`` read the registry, and an
unknown name is one line listing the registered ones. A registry knows the modules of its built-in components and
imports them on the first look-up, so ``import edgecompress`` stays light; a user's component registers when its
module is imported (a module the config lists in ``plugins``, trusted like a factory module).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from edgecompress.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, the object (usually a class) and what the registry's users read."""

    name: str
    obj: T
    summary: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named components of one kind (``losses``, ``calibrators``, ``transports``).

    Args:
        kind: what the components are, for messages ("loss", "calibration method").
        builtins: modules whose import registers the built-in components (imported on first look-up).
        field_name: the config field that names a component, for messages ("distill.loss.kind").
    """

    def __init__(
        self, kind: str, builtins: tuple[str, ...] = (), *, builtin_names: tuple[str, ...] = (), field_name: str = ""
    ) -> None:
        self.kind = kind
        self.field_name = field_name or kind
        self._builtins = builtins
        self.builtin_names = builtin_names  # what the built-in modules register (pinned by a test): light checks
        self._loaded = False
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str = "", **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` (a second, different object is refused)."""
        if not name or not name.replace("-", "_").replace(".", "_").isidentifier():
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits, '-', '_' or '.'")

        def add(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and old.obj is not obj and _qualname(old.obj) != _qualname(obj):
                raise ValueError(f"{self.kind} {name!r} is registered twice ({_qualname(old.obj)}, {_qualname(obj)})")
            self._entries[name] = Entry(name, obj, summary or _first_line(obj), dict(meta))
            return obj

        return add

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def known(self) -> list[str]:
        """The names a config may use without importing anything: the built-ins and what is registered so far."""
        return list(dict.fromkeys([*self.builtin_names, *self._entries]))

    def check_name(self, name: str, *, plugins: bool = False) -> str:
        """``name`` if it is known (light), else ``ValueError`` listing the known ones. With ``plugins`` (the config
        lists plugin modules, not imported yet) an unknown name is left to the run's start to check."""
        if name in self.known() or plugins:
            return name
        raise ValueError(
            f"unknown {self.kind} {name!r}; use one of: {', '.join(self.known())} (a {self.kind} of your own: "
            "register it in a module and list the module in the config's plugins)"
        )

    def _ordered(self) -> list[Entry[T]]:
        """The entries, built-ins first in their pinned order (whichever module was imported first), then the rest in
        registration order."""
        self._load()
        first = [self._entries[n] for n in self.builtin_names if n in self._entries]
        return first + [e for n, e in self._entries.items() if n not in self.builtin_names]

    def names(self) -> list[str]:
        """Every registered name: the built-ins in their pinned order, then the others in registration order."""
        return [e.name for e in self._ordered()]

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``, or :class:`ConfigError` listing what is registered."""
        self._load()
        entry = self._entries.get(name)
        if entry is None:
            raise ConfigError(
                f"unknown {self.kind} {name!r} in {self.field_name}",
                f"use one of: {', '.join(self.names())} (a {self.kind} of your own: register it in a module "
                "listed in the config's plugins)",
            )
        return entry

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._ordered())


def load_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import the user's plugin modules (trusted by the user's own config): their components register."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"plugin module {module!r} cannot be imported: {exc}",
                "put it on PYTHONPATH (or in the config's folder) and check its name",
            ) from exc


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


# The registries of the package. Each names the modules whose import registers its built-ins (imported on the first
# look-up, by name: this foundation module imports none of them) and the names they register, for light checks.
LOSSES: Registry[Any] = Registry(  # of distill.losses.DistillLoss subclasses
    "loss",
    ("edgecompress.distill.losses",),
    builtin_names=("ce", "kd", "dist", "bdkd"),
    field_name="distill.loss.kind",
)
TRANSPORTS: Registry[Any] = Registry(  # of devices.transports.Transport subclasses
    "transport",
    (
        "edgecompress.devices.transports.local",
        "edgecompress.devices.transports.ssh",
        "edgecompress.devices.transports.adb",
    ),
    builtin_names=("local", "ssh", "adb"),
    field_name="the device profile's transport",
)
