"""`import edgecompress` (and the config schema) must not load the heavy backends (torchao's test_lean_import idea)."""

import subprocess
import sys

HEAVY = [
    "torch",
    "onnx",
    "onnxruntime",
    "openvino",
    "nncf",
    "torch_pruning",
    "tensorrt",
    "executorch",
    "matplotlib",
    "sklearn",
]


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_import_edgecompress_is_light():
    loaded = _loaded_after("import edgecompress")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_config_schema_is_light():
    loaded = _loaded_after("import edgecompress.config as c; c.json_schema()")
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_subpackages_are_light():
    stmt = "; ".join(
        f"import edgecompress.{p}"
        for p in ["data", "models", "distill", "calibration", "export", "devices", "report", "bundle", "pipeline"]
    )
    loaded = _loaded_after(stmt)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
