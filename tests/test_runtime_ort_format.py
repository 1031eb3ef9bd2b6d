"""ONNX Runtime loading an ORT-format (.ort) model through the runtime template."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RuntimeContract, tiny_onnx


class TestOrtFormat(RuntimeContract):
    runtime_name = "onnxruntime"
    missing_suffix = ".ort"

    @pytest.fixture(scope="class")
    def artifact(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        import onnxruntime as ort

        onnx_path = tiny_onnx(tmp_path_factory)[0]
        ort_path = tmp_path_factory.mktemp("ort") / "tiny.ort"
        # the same mechanism onnxruntime.tools.convert_onnx_models_to_ort uses: save the optimized model as ORT
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(ort_path)
        so.add_session_config_entry("session.save_model_format", "ORT")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
        assert ort_path.is_file()
        return ort_path

    def test_file_is_ort_format(self, artifact: Path) -> None:
        # ORT-format files are flatbuffers with the "ORTM" identifier at byte 4
        assert artifact.read_bytes()[4:8] == b"ORTM"
