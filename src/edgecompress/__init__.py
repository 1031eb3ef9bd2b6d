"""edgecompress: turn a trained classifier into a compact, calibrated, quantized model for edge devices.

``import edgecompress`` is deliberately light: torch, ONNX Runtime, OpenVINO, TensorRT and the mobile runtimes
load lazily inside the functions that need them (see ``tests/test_lean_import.py``).
"""

from edgecompress.errors import EdgeCompressError

__version__ = "0.1.0"
__all__ = ["EdgeCompressError", "__version__"]
