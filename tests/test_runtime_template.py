"""Template tests every runtime backend must pass; subclassed per backend in tests/test_runtime_<backend>.py.

The tiny model is a real torch CNN exported with ``torch.onnx.export`` once per session; its torch logits are the
reference each runtime is compared with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.devices.runtimes import get_runtime
from edgecompress.errors import DeviceError

INPUT_SHAPE = (3, 8, 8)
NUM_CLASSES = 5


def tiny_model():
    """The tiny CNN (same weights on every call: seeded)."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, NUM_CLASSES),
    ).eval()


def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The tiny CNN as ONNX (dynamic batch) plus a probe batch and its torch logits; built once per session."""
    root = tmp_path_factory.getbasetemp() / "tiny-model"
    model_path, ref_path = root / "tiny.onnx", root / "reference.npz"
    if not model_path.is_file():
        import torch

        model = tiny_model()
        x = torch.randn(6, *INPUT_SHAPE)
        root.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(
            model,
            (x[:1],),
            str(model_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        with torch.no_grad():
            np.savez(ref_path, x=x.numpy(), logits=model(x).numpy())
    ref = np.load(ref_path)
    return model_path, ref["x"], ref["logits"]


class RuntimeContract:
    """Subclasses set ``runtime_name`` (and ``options``) and provide the ``artifact`` fixture (a model file path)."""

    runtime_name: str = ""
    options: dict = {}
    atol: float = 1e-4
    missing_suffix: str = ".onnx"

    @pytest.fixture(scope="class")
    def reference(self, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
        _, x, logits = tiny_onnx(tmp_path_factory)
        return x, logits

    @pytest.fixture(scope="class")
    def loaded(self, artifact: Path):
        rt = get_runtime(self.runtime_name, **self.options)
        rt.load(artifact, threads=1)
        return rt

    def test_runtime_name(self, loaded) -> None:
        assert loaded.name == self.runtime_name

    def test_run_shape_and_dtype(self, loaded, reference) -> None:
        x, _ = reference
        out = loaded.run(x)
        assert out.shape == (len(x), NUM_CLASSES)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()

    def test_matches_torch_reference(self, loaded, reference) -> None:
        x, logits = reference
        np.testing.assert_allclose(loaded.run(x), logits, atol=self.atol, rtol=self.atol)

    def test_batch_one_matches_batch_n(self, loaded, reference) -> None:
        x, _ = reference
        full = loaded.run(x)
        singles = np.concatenate([loaded.run(x[i : i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(singles, full, atol=self.atol, rtol=self.atol)

    def test_info_fields(self, loaded) -> None:
        info = loaded.info()
        for key in ("runtime", "version", "providers", "precision", "threads"):
            assert key in info, key
        assert info["runtime"] == self.runtime_name
        assert info["version"]

    def test_missing_file_is_a_clear_error(self, tmp_path: Path) -> None:
        rt = get_runtime(self.runtime_name, **self.options)
        with pytest.raises(DeviceError, match="not found"):
            rt.load(tmp_path / f"missing{self.missing_suffix}")

    def test_harness_measures_it(self, loaded, reference) -> None:
        from edgecompress.devices.agent import measure

        x, _ = reference
        m = measure(loaded, x[:2], warmup=1, min_time_s=0.0, min_iters=3, repeats=2)
        assert m["batch"] == 2 and m["iterations"] >= 6 and m["repeats"] == 2
        assert 0 < m["p50"] <= m["p99"] and m["throughput"] > 0
