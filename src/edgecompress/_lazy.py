"""Lazy imports of heavy or optional backends, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

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


def require(module: str, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, extra = EXTRAS.get(top, (top, "all"))
        if extra == "core":
            extra = "all"  # a core dependency is missing: the environment is broken; reinstall everything
        raise MissingExtraError(package, extra, purpose) from exc


def available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it twice on success)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
