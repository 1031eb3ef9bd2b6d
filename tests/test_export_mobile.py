"""ExecuTorch (.pte, XNNPACK) FP32/INT8 through the export driver and the ExecuTorch runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress import _lazy
from edgecompress.errors import MissingExtraError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

pytestmark = pytest.mark.timeout(300)
HAS_ET = _lazy.available("executorch")


def _model_and_data() -> tuple[nn.Module, np.ndarray]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 3),
    )  # fmt: skip
    with torch.no_grad():  # large head weights: clear margins, so INT8 keeps the top-1
        model[-1].weight.mul_(8.0)
    rng = np.random.default_rng(0)
    return model.eval(), rng.standard_normal((32, 1, 8, 8), dtype=np.float32)


@pytest.mark.skipif(not HAS_ET, reason="executorch is not installed (pip install 'edgecompress[mobile]')")
def test_executorch_fp32_and_int8(tmp_path: Path) -> None:
    from edgecompress.export import export_all, run_artifact
    from edgecompress.export.config import ExportConfig
    from edgecompress.export.contract import ExportContract

    model, calib = _model_and_data()
    contract = ExportContract(input_shape=(1, 8, 8), num_classes=3, max_batch=8)
    cfg = ExportConfig(formats=["executorch:fp32", "executorch:int8"], max_batch=8)
    arts = export_all(model, contract=contract, calib_x=calib, out_dir=tmp_path, cfg=cfg, parity_x=calib[:8])
    fp32, int8 = arts
    assert fp32.ok and int8.ok, [a.failure for a in arts]
    assert fp32.model_file.suffix == ".pte" and fp32.parity_max_abs_diff <= 1e-4
    assert int8.info["quantizer"] == "XNNPACKQuantizer" and int8.parity_top1_agreement >= 0.98
    assert fp32.info["export_batch"] == 8
    for batch in (1, 3):  # bounded dynamic batch: smaller batches than the export example run
        y, _ = run_artifact("executorch", fp32.model_file, calib[:batch])
        assert y.shape == (batch, 3)


@pytest.mark.skipif(HAS_ET, reason="executorch is installed here")
def test_executorch_missing_names_extra(tmp_path: Path) -> None:
    from edgecompress.export.contract import ExportContract
    from edgecompress.export.mobile import export_executorch

    model, _ = _model_and_data()
    with pytest.raises(MissingExtraError, match=r"edgecompress\[mobile\]"):
        export_executorch(model, ExportContract(input_shape=(1, 8, 8), num_classes=3), tmp_path / "m.pte")
