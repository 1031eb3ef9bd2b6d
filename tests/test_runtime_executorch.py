"""ExecuTorch (.pte) through the runtime template (skipped unless executorch is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import INPUT_SHAPE, RuntimeContract, tiny_model, tiny_onnx
from edgecompress.devices.host_runtimes import get_runtime
from edgecompress.errors import MissingExtraError

try:
    import executorch.runtime  # noqa: F401

    SKIP = None
except ImportError:
    SKIP = "executorch is not installed (pip install 'edgecompress[mobile]')"


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
class TestExecuTorch(RuntimeContract):
    runtime_name = "executorch"
    missing_suffix = ".pte"

    @pytest.fixture(scope="class")
    def artifact(self, tmp_path_factory: pytest.TempPathFactory) -> Path:
        import torch
        from executorch.exir import to_edge

        tiny_onnx(tmp_path_factory)  # seeds the shared reference batch
        batch = torch.export.Dim("batch", min=1, max=16)
        exported = torch.export.export(
            tiny_model(), (torch.randn(2, *INPUT_SHAPE),), dynamic_shapes={"input": {0: batch}}
        )
        program = to_edge(exported).to_executorch()
        path = tmp_path_factory.mktemp("et") / "tiny.pte"
        path.write_bytes(program.buffer)
        return path


@pytest.mark.skipif(SKIP is None, reason="executorch is installed here")
def test_missing_executorch_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"edgecompress\[mobile\]"):
        get_runtime("executorch")
