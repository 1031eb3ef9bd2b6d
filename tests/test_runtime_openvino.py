"""OpenVINO (CPU) through the runtime template; the inference precision actually used is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RuntimeContract, tiny_onnx
from edgecompress.devices.host_runtimes import get_runtime
from edgecompress.errors import DeviceError


def _ir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import openvino as ov

    onnx_path = tiny_onnx(tmp_path_factory)[0]
    xml = tmp_path_factory.getbasetemp() / "tiny-ir" / "tiny.xml"
    if not xml.is_file():
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


class TestOpenVINOf32(RuntimeContract):
    runtime_name = "openvino"
    options = {"precision": "f32"}
    missing_suffix = ".xml"

    @pytest.fixture(scope="class")
    def artifact(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return _ir(tmp_path_factory)

    def test_precision_is_read_back(self, loaded) -> None:
        info = loaded.info()
        assert info["precision"] == "f32" and info["precision_asked"] == "f32"
        assert info["threads"] == 1


class TestOpenVINODefaultPrecision(RuntimeContract):
    """Without a hint OpenVINO may pick bf16 on this CPU: the contract holds at bf16 tolerance, and it is recorded."""

    runtime_name = "openvino"
    atol = 5e-2  # bf16 has an 8-bit mantissa
    missing_suffix = ".xml"

    @pytest.fixture(scope="class")
    def artifact(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return _ir(tmp_path_factory)

    def test_actual_precision_is_recorded(self, loaded) -> None:
        import openvino as ov

        expected = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
        assert loaded.info()["precision"] == expected
        assert loaded.info()["precision_asked"] is None


def test_unknown_precision_hint_is_refused() -> None:
    with pytest.raises(DeviceError, match="unknown OpenVINO precision hint 'int4'"):
        get_runtime("openvino", precision="int4")


def test_openvino_reads_onnx_too(tmp_path_factory: pytest.TempPathFactory) -> None:
    onnx_path, x, logits = tiny_onnx(tmp_path_factory)
    rt = get_runtime("openvino", precision="f32")
    rt.load(onnx_path, threads=1)
    assert rt.run(x).shape == logits.shape
