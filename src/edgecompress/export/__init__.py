"""edgecompress.export: format table, export contract, ONNX / OpenVINO / TensorRT / mobile exporters, one wrapper.

Light on import: the format table, config and contract are plain Python; exporters load torch, ONNX Runtime,
OpenVINO, NNCF, TensorRT and ExecuTorch only when called.
"""

from __future__ import annotations

from typing import Any

from edgecompress.export.config import ExportConfig
from edgecompress.export.formats import FORMATS, FormatSpec, available_here, parse_formats

_LAZY = {
    "ExportContract": "edgecompress.export.contract",
    "Tolerance": "edgecompress.export.contract",
    "Artifact": "edgecompress.export.wrapper",
    "export_all": "edgecompress.export.wrapper",
    "rescale_output": "edgecompress.export.wrapper",
    "run_artifact": "edgecompress.export.wrapper",
    "choose_int8": "edgecompress.export.quantize",
    "check_accuracy_drop": "edgecompress.export.quantize",
}

__all__ = ["FORMATS", "ExportConfig", "FormatSpec", "available_here", "parse_formats", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompress.export' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
