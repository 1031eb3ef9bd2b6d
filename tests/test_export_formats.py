"""Every format/precision that runs here, exported by one driver and checked through its own runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

from edgecompress.export import export_all, rescale_output, run_artifact  # noqa: E402
from edgecompress.export.config import ExportConfig  # noqa: E402
from edgecompress.export.contract import ExportContract  # noqa: E402

pytestmark = pytest.mark.timeout(240)
FORMATS = ["onnx:fp32", "onnx:fp16", "onnx:int8", "openvino:fp32", "openvino:fp16", "openvino:int8"]
FORMATS += ["tensorrt:fp16", "tensorrt:int8", "ort:fp32", "ort:int8"]


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1x8x8 images; the class is the bright quadrant (0: top-left, 1: top-right, 2: bottom)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(y):
        rows, cols = (
            (slice(0, 4), slice(0, 4))
            if k == 0
            else (slice(0, 4), slice(4, 8))
            if k == 1
            else (slice(4, 8), slice(None))
        )
        x[i, 0, rows, cols] += 1.5
    return x, y.astype(np.int64)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3),
    )  # fmt: skip
    x, y = make_data(256, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    return model.eval()


CONTRACT = ExportContract(input_shape=(1, 8, 8), num_classes=3, max_batch=16, metadata={"temperature": 1.25})
META = {"labels": ["tl", "tr", "bottom"], "preprocessing": {"mean": [0.0], "std": [1.0]}}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return make_model()


@pytest.fixture(scope="module")
def exported(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    out = tmp_path_factory.mktemp("export")
    calib, _ = make_data(64, 1)
    val_x, val_y = make_data(96, 2)
    cfg = ExportConfig(formats=FORMATS, calib_samples=64, keep_head_float=False, max_batch=16)
    arts = export_all(
        model, contract=CONTRACT, calib_x=calib, out_dir=out, metadata=META, cfg=cfg, val_x=val_x, val_y=val_y
    )
    return arts, out


def test_every_format_exported_with_parity(exported: tuple[list, Path]) -> None:
    arts, out = exported
    assert [a.name for a in arts] == [f.replace(":", "-") for f in FORMATS]
    for a in arts:
        assert a.ok and a.model_file.is_file() and a.size_bytes > 0, a
        assert all(f.parent.parent == out for f in a.files)
        assert a.parity_max_abs_diff is not None and a.parity_top1_agreement >= 0.98, a.name
        assert a.export_seconds >= 0
    by = {a.name: a for a in arts}
    assert by["onnx-fp32"].parity_max_abs_diff <= 1e-4
    for a in arts:  # every artifact evaluated on val through its runtime, within the gate
        assert a.failure is None and a.fp32_val_accuracy is not None, a.name
        assert set(a.val_metrics) == {"accuracy", "ece", "nll"}
        assert a.val_metrics["accuracy"] >= a.fp32_val_accuracy - 0.01, a.name
    assert by["onnx-fp32"].val_metrics["accuracy"] == by["onnx-fp32"].fp32_val_accuracy
    assert by["openvino-fp32"].info["runtime_info"]["precision"]  # what OpenVINO executed is recorded
    assert by["openvino-fp16"].info["produced"]["weights"] == "f16"
    assert by["ort-int8"].model_file.suffix == ".ort"
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temp folders left behind


def test_onnx_metadata_and_names(exported: tuple[list, Path]) -> None:
    from edgecompress.export.onnx_export import read_metadata

    arts, _ = exported
    for a in arts:
        if a.model_file.suffix != ".onnx":
            continue
        meta = read_metadata(a.model_file)
        assert json.loads(meta["labels"]) == META["labels"] and meta["temperature"] == "1.25"
        assert "edgecompress.export_config_hash" in meta and "onnxruntime" in json.loads(
            meta["edgecompress.tool_versions"]
        )
        proto = onnx.load(str(a.model_file))
        assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_openvino_rt_info(exported: tuple[list, Path]) -> None:
    from edgecompress.export.openvino_export import read_metadata

    arts, _ = exported
    for a in arts:
        if a.format == "openvino":
            meta = read_metadata(a.model_file)
            assert json.loads(meta["labels"]) == META["labels"] and meta["temperature"] == "1.25"
            assert a.model_file.with_suffix(".bin").stat().st_size > 0


def test_int8_qdq_graph_has_per_channel_weights(exported: tuple[list, Path]) -> None:
    arts, _ = exported
    art = next(a for a in arts if a.name == "onnx-int8")
    proto = onnx.load(str(art.model_file))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in proto.graph.initializer}
    weight_dq = [
        n for n in proto.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[0]].dims) == 4
    ]  # fmt: skip
    assert weight_dq, "no INT8 conv weights"
    for n in weight_dq:
        assert len(inits[n.input[1]].dims) == 1 and inits[n.input[1]].dims[0] == 8  # one scale per out channel
    assert art.info["calibration_method"] in ("minmax", "entropy", "percentile")
    assert art.info["selection_data"] == "val" and len(art.info["selection"]["trials"]) == 3


def test_tensorrt_artifact_is_build_kit(exported: tuple[list, Path]) -> None:
    from edgecompress.export.tensorrt import parse_calibration_cache

    arts, _ = exported
    art = next(a for a in arts if a.name == "tensorrt-int8")
    names = {f.name for f in art.files}
    assert {"model.onnx", "calibration.cache", "model_qdq.onnx", "model.recipe.json"} <= names
    recipe = json.loads((art.model_file.parent / "model.recipe.json").read_text())
    assert recipe["calibration_cache"] == "calibration.cache" and recipe["max_shape"] == [16, 1, 8, 8]
    header, scales = parse_calibration_cache(art.model_file.parent / "calibration.cache")
    assert header.endswith("EntropyCalibration2") and "input" in scales and all(v > 0 for v in scales.values())
    graph_tensors = {o for n in onnx.load(str(art.model_file)).graph.node for o in n.output} | {"input"}
    assert set(scales) <= graph_tensors


def test_calibration_methods_all_run(model: nn.Module, tmp_path: Path) -> None:
    from edgecompress.export.onnx_export import export_onnx, ort_run, quantize_int8

    base = tmp_path / "m.onnx"
    export_onnx(model, CONTRACT, base, exporters=("torchscript",))
    calib, _ = make_data(48, 3)
    x, _ = make_data(32, 4)
    ref = ort_run(base, x)
    for method in ("minmax", "entropy", "percentile"):
        info = quantize_int8(base, tmp_path / f"{method}.onnx", calib, method=method, keep_head_float=True)
        assert info["excluded_nodes"] == info["head_nodes"] and info["head_nodes"]
        y = ort_run(tmp_path / f"{method}.onnx", x)
        assert np.mean(y.argmax(1) == ref.argmax(1)) >= 0.9


def test_keep_stem_float_leaves_the_grayscale_stem_in_float(model: nn.Module, tmp_path: Path) -> None:
    from edgecompress.export.onnx_export import export_onnx, ort_run, quantize_int8

    base = tmp_path / "m.onnx"
    export_onnx(model, CONTRACT, base, exporters=("torchscript",))
    calib, _ = make_data(48, 3)
    x, _ = make_data(32, 4)

    def float_convs(path: Path) -> list[str]:
        proto = onnx.load(str(path))
        producer = {o: n.op_type for n in proto.graph.node for o in n.output}
        convs = [n for n in proto.graph.node if n.op_type == "Conv"]
        return [n.name for n in convs if producer.get(n.input[1]) != "DequantizeLinear"]

    full = quantize_int8(base, tmp_path / "full.onnx", calib)
    stem = quantize_int8(base, tmp_path / "stem.onnx", calib, keep_stem_float=True)
    assert len(stem["stem_nodes"]) == 1 and full["stem_nodes"] == stem["stem_nodes"]  # only the 1-channel conv
    assert float_convs(tmp_path / "full.onnx") == [] and float_convs(tmp_path / "stem.onnx") == stem["stem_nodes"]
    ref = ort_run(base, x)
    assert np.mean(ort_run(tmp_path / "stem.onnx", x).argmax(1) == ref.argmax(1)) >= 0.9


def test_rescale_output_multiplies_logits(exported: tuple[list, Path], tmp_path: Path) -> None:
    arts, _ = exported
    x, _ = make_data(8, 5)
    for name in ("onnx-int8", "openvino-fp32", "tensorrt-fp16"):
        art = next(a for a in arts if a.name == name)
        new = rescale_output(art, 0.5, tmp_path)
        assert new.model_file.parent == tmp_path / name and new.info["output_scale"] == 0.5
        before, _ = run_artifact(art.runtime if art.format != "tensorrt" else "onnxruntime", art.model_file, x)
        after, _ = run_artifact(new.runtime if new.format != "tensorrt" else "onnxruntime", new.model_file, x)
        if name == "openvino-fp32":  # OpenVINO may execute in bf16: compare within that precision
            np.testing.assert_allclose(after, before * 0.5, rtol=2e-2, atol=2e-2)
        else:
            np.testing.assert_array_equal(after, before * np.float32(0.5))


@torch.library.custom_op("edgecompress_test::opaque", mutates_args=())
def _opaque(x: torch.Tensor) -> torch.Tensor:
    """An op with no ONNX translation: both exporters must refuse it."""
    return x.clone()


@_opaque.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _Unexportable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(_opaque(x).flatten(1))


def test_failing_exporter_is_recorded_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = ExportConfig(formats=["onnx:fp32", "openvino:fp32"])
    calib, _ = make_data(8, 6)
    arts = export_all(_Unexportable(), contract=CONTRACT, calib_x=calib, out_dir=tmp_path, cfg=cfg)
    assert [a.name for a in arts] == ["onnx-fp32", "openvino-fp32"]
    for a in arts:  # both need the base ONNX: both fail with the converter's reason, tried once
        assert not a.ok and a.files == [] and a.model_file is None
        assert f"{a.format}:fp32 failed at step 'export'" in a.failure and "torch.onnx.export" in a.failure
        assert "\n" not in a.failure
    assert list(tmp_path.iterdir()) == []  # no half artifact, no temp folder


def test_broken_graph_fails_by_argmax_agreement(model: nn.Module, tmp_path: Path) -> None:
    """A graph that froze a value eager mode recomputes: without val, the parity diagnostic alone judges."""
    calib, _ = make_data(16, 7)

    class Drifting(nn.Module):  # exports fine, but the traced constant differs from eager behaviour
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.calls = model, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            bias = torch.zeros(3)
            bias[self.calls % 3] = 50.0  # the decided class moves with every call
            return self.inner(x) + bias

    (old := tmp_path / "onnx-fp32").mkdir()  # an earlier export's folder must not pass for this one
    arts = export_all(
        Drifting(), contract=CONTRACT, calib_x=calib, out_dir=tmp_path, cfg=ExportConfig(formats=["onnx"])
    )
    assert not arts[0].ok and arts[0].parity_top1_agreement < 0.5 and "computes something else" in arts[0].failure
    assert arts[0].parity_max_abs_diff > 1 and list(tmp_path.iterdir()) == [] and not old.exists()
