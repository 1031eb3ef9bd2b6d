"""edgecompress.export: format table, export contract, ONNX / OpenVINO / TensorRT / mobile exporters, one driver.

Light on import: the format table, config and contract are plain Python; exporters load torch, ONNX Runtime,
OpenVINO, NNCF, TensorRT and ExecuTorch only when called.
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports
from edgecompress.export.config import ExportConfig
from edgecompress.export.formats import FORMATS, FormatSpec, available_here, parse_formats

_LAZY = {
    "ExportContract": "edgecompress.export.contract",
    "Tolerance": "edgecompress.export.contract",
    "Artifact": "edgecompress.export.artifact",
    "run_artifact": "edgecompress.export.artifact",
    "export_all": "edgecompress.export.driver",
    "rescale_output": "edgecompress.export.rescale",
    "choose_int8": "edgecompress.export.int8_choice",
    "metrics_of": "edgecompress.export.int8_choice",
    "judge": "edgecompress.export.gate",
}

__all__ = ["FORMATS", "ExportConfig", "FormatSpec", "available_here", "parse_formats", *_LAZY]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
