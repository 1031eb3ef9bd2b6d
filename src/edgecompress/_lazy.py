"""Lazy imports of heavy or optional backends, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from edgecompress.errors import MissingExtraError

# module name -> (pip package, edgecompress extra)
EXTRAS: dict[str, tuple[str, str]] = {
    "onnx": ("onnx", "core"),
    "onnxruntime": ("onnxruntime", "core"),
    "openvino": ("openvino", "core"),
    "nncf": ("nncf", "core"),
    "torch_pruning": ("torch-pruning", "core"),
    "onnxslim": ("onnxslim", "core"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "pycuda": ("cuda-python", "tensorrt"),
    "executorch": ("executorch", "mobile"),
    "matplotlib": ("matplotlib", "core"),
    "sklearn": ("scikit-learn", "core"),
    "PIL": ("pillow", "core"),
}


# Called with the module's name after ``require`` imports it: the command line re-routes a library's own console
# handlers (NNCF prints to stdout on import) into its log (``edgecompress.console``). Empty in library use.
AFTER_IMPORT: list[Callable[[str], object]] = []


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = EXTRAS.get(top, (top, "all"))
        if extra == "core":
            extra = "all"  # a core dependency is missing: the environment is broken; reinstall everything
        raise MissingExtraError(package, extra, purpose) from exc
    for hook in AFTER_IMPORT:
        hook(module)
    return imported


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it twice on success)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` for a package whose public names load on first use (PEP 562).

    Args:
        package: the package's ``__name__``.
        exports: public name -> module holding it, absolute ("edgecompress.data.splits") or relative to the package
            ("splits").

    Usage in a package ``__init__``: ``__getattr__, __dir__ = lazy_exports(__name__, {"load_splits": "splits"})``.
    """
    import sys

    def _module_of(name: str) -> str:
        target = exports[name]
        return target if target.startswith("edgecompress.") else f"{package}.{target}"

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(_module_of(name)), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
