"""ONNX Runtime (CPU EP) through the runtime template."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RuntimeContract, tiny_onnx
from edgecompress.devices.host_runtimes import get_runtime
from edgecompress.errors import DeviceError


class TestOnnxRuntime(RuntimeContract):
    runtime_name = "onnxruntime"

    @pytest.fixture(scope="class")
    def artifact(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tiny_onnx(tmp_path_factory)[0]

    def test_cpu_provider_and_threads_recorded(self, loaded) -> None:
        info = loaded.info()
        assert info["providers"] == ["CPUExecutionProvider"]
        assert info["threads"] == 1

    def test_absent_provider_is_refused_clearly(self) -> None:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("this machine has the CUDA provider")
        with pytest.raises(DeviceError, match="lacks provider"):
            get_runtime("onnxruntime", providers=["cuda"])

    def test_corrupt_model_is_a_clear_error(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not a model")
        with pytest.raises(DeviceError, match="could not load bad.onnx"):
            get_runtime("onnxruntime").load(bad)
