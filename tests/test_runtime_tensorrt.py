"""TensorRT through the runtime template (needs an NVIDIA GPU and the tensorrt package; skipped otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import RuntimeContract, tiny_onnx
from edgecompress.devices.host_runtimes import get_runtime
from edgecompress.errors import DeviceError, MissingExtraError

pytestmark = pytest.mark.gpu


def _have_trt_gpu() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'edgecompress[tensorrt]' on a machine with an NVIDIA GPU)"
    from edgecompress.devices.agent import _gpu_name

    return None if _gpu_name() else "no NVIDIA GPU visible"


SKIP = _have_trt_gpu()


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
class TestTensorRT(RuntimeContract):
    runtime_name = "tensorrt"
    atol = 1e-3
    missing_suffix = ".engine"

    @pytest.fixture(scope="class")
    def artifact(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        onnx_path = tiny_onnx(tmp_path_factory)[0]
        work = tmp_path_factory.mktemp("trt")
        model = work / "tiny.onnx"
        model.write_bytes(onnx_path.read_bytes())
        (work / "tiny.recipe.json").write_text(json.dumps({"precision": "fp32", "max_shape": [8, 3, 8, 8]}))
        return model  # built into an engine on this GPU by load()

    def test_engine_from_elsewhere_is_refused(self, loaded, artifact: Path) -> None:
        engine = next(artifact.parent.glob("*.engine"))
        sidecar = engine.with_name(engine.name + ".json")
        meta = json.loads(sidecar.read_text())
        sidecar.write_text(json.dumps({**meta, "tensorrt_version": "0.0.1"}))
        with pytest.raises(DeviceError, match="engines are not portable"):
            get_runtime("tensorrt").load(engine)
        sidecar.write_text(json.dumps(meta))


@pytest.mark.skipif(SKIP is None, reason="TensorRT is installed here")
def test_missing_tensorrt_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"edgecompress\[tensorrt\]"):
        get_runtime("tensorrt")
