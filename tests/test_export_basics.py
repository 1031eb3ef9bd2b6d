"""Export config, format table, contract and TensorRT recipe/cache: no model export needed."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress import _lazy
from edgecompress.devices.agent import AgentError, check_engine_compat
from edgecompress.errors import ConfigError, ExportError, MissingExtraError
from edgecompress.export.config import ExportConfig, load_export_config
from edgecompress.export.contract import ExportContract, effective_precision
from edgecompress.export.formats import FORMATS, allowed_items, available_here, parse_formats
from edgecompress.export.gate import Parity, judge
from edgecompress.export.int8_choice import choose_int8, fidelity_scorer, label_scorer, metrics_of


def test_format_table_is_keyed_by_name() -> None:
    assert set(FORMATS) == {"onnx", "openvino", "tensorrt", "executorch", "ort"}
    for name, spec in FORMATS.items():
        assert spec.name == name and spec.precisions and spec.runtime
    assert FORMATS["tensorrt"].needs_gpu_to_build and FORMATS["tensorrt"].builds_on_target
    assert FORMATS["executorch"].extra == "mobile" and FORMATS["executorch"].suffix == ".pte"
    assert FORMATS["ort"].runtime == "onnxruntime"


def test_each_format_row_carries_its_behaviour(tmp_path: Path) -> None:
    for spec in FORMATS.values():
        assert callable(spec.export_fn()), spec.name
    assert FORMATS["onnx"].parity_of("int8", tmp_path / "model.onnx") == (
        "onnxruntime",
        tmp_path / "model.onnx",
        "int8",
    )
    kit = tmp_path / "model.onnx"  # TensorRT without an engine here: the ONNX it is built from is checked
    assert FORMATS["tensorrt"].parity_of("int8", kit) == ("onnxruntime", tmp_path / "model_qdq.onnx", "int8")
    assert FORMATS["tensorrt"].parity_of("fp16", kit) == ("onnxruntime", kit, "fp32")
    engine = tmp_path / "model.fp16.engine"
    assert FORMATS["tensorrt"].parity_of("fp16", engine) == ("tensorrt", engine, "fp16")
    assert {n for n, spec in FORMATS.items() if spec.rescale_fn() is not None} == {"onnx", "openvino", "tensorrt"}


def test_parse_formats() -> None:
    assert parse_formats(["onnx:int8", "OpenVINO:fp16", "onnx:int8", "ort"]) == [
        ("onnx", "int8"),
        ("openvino", "fp16"),
        ("ort", "fp32"),
    ]
    assert len(parse_formats("all")) == len(allowed_items()) == 13


@pytest.mark.parametrize("bad", ["onnx:int4", "tflite:fp32", "executorch:fp16"])
def test_bad_format_string_names_item_and_allowed(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_export_config({"formats": ["onnx:fp32", bad]})
    msg = str(err.value)
    assert bad in msg and "onnx:int8" in msg and "export.formats" in msg
    assert "\n" not in msg


def test_config_defaults_and_strictness() -> None:
    cfg = ExportConfig()
    assert cfg.format_pairs() == [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    assert cfg.int8_calibration == "auto" and cfg.calib_samples == 512 and cfg.opset == 18
    assert ExportConfig(formats="all").format_pairs() == parse_formats("all")
    assert ExportConfig(keep_head_float=True).keep_head_float is True
    with pytest.raises(ConfigError):
        load_export_config({"bogus": 1})
    with pytest.raises(ConfigError):
        load_export_config({"int8_calibration": "kl"})


def test_available_here() -> None:
    assert available_here("onnx", "int8") == (True, "ok")
    ok, why = available_here("executorch", "fp16")
    assert not ok and "fp16" in why
    ok, why = available_here("tensorrt", "fp16")
    if not _lazy.available("tensorrt"):
        assert not ok and "target" in why


def test_contract() -> None:
    c = ExportContract(input_shape=(1, 8, 8), num_classes=3, max_batch=16, metadata={"temperature": 1.5})
    assert c.input_names == ["input"] and c.output_names == ["logits"]
    assert c.dynamic_axes == {"input": {0: "batch"}, "logits": {0: "batch"}}
    assert c.example_input().shape == (1, 1, 8, 8) and c.max_batch_input().shape == (16, 1, 8, 8)
    assert np.array_equal(c.example_input(4), c.example_input(4))
    assert c.string_metadata()["temperature"] == "1.5"
    p = ExportContract(input_shape=(1, 8, 8), num_classes=3, output_probabilities=True, dynamic_batch=False)
    assert p.output_names == ["probabilities"] and p.dynamic_axes == {}
    ref = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)  # std 1.479
    assert c.tolerance("fp32").check(5e-5, 1.0, ref)[0]
    assert not c.tolerance("fp32").check(1e-2, 1.0, ref)[0]
    assert not c.tolerance("int8").check(0.01, 0.8, ref)[0]  # below the diagnostic's agreement bar
    assert c.tolerance("int8").check(0.01, 0.9, ref)[0]  # near-ties may flip: the val accuracy gate judges
    assert c.tolerance("int8").check(1.4, 0.9, ref)[0] and not c.tolerance("int8").check(1.6, 0.9, ref)[0]


def test_parity_is_judged_relative_to_the_logits_spread() -> None:
    """The same relative INT8 noise on small (calibrated) and large logits gets the same verdict."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(64, 10)).astype(np.float32)
    noise = rng.normal(size=ref.shape).astype(np.float32) * 0.3
    tol = ExportContract(input_shape=(1, 8, 8), num_classes=10).tolerance("int8")
    for scale in (0.05, 1.0, 20.0):  # a T of 20 folded in, plain, a very confident model
        diff = float(np.abs(noise * scale).max())
        assert tol.relative_diff(diff, ref * scale) == pytest.approx(tol.relative_diff(float(np.abs(noise).max()), ref))
        assert tol.check(diff, 0.9, ref * scale)[0]
    fc = ExportContract.from_config(ExportConfig(max_batch=8, opset=17), input_shape=(1, 8, 8), num_classes=3)
    assert fc.max_batch == 8 and fc.opset == 17 and fc.output_name == "logits"
    assert effective_precision("fp32", "bf16") == "bf16" and effective_precision("int8", "bf16") == "int8"


def _parity(within: bool, agree: float = 0.9) -> Parity:
    return Parity(5.7, 1.2, agree, within, "max |diff| 5.7 = 1.2 × std of FP32 logits exceeds 1", "int8")


def test_accuracy_decides_and_parity_is_a_diagnostic() -> None:
    ok_parity, bad_parity = _parity(True), _parity(False)
    assert judge("onnx-int8", "int8", ok_parity, 0.895, 0.90, 0.01) is None
    assert judge("onnx-int8", "int8", bad_parity, 0.90, 0.90, 0.01) is None  # matches FP32 on val: never rejected
    msg = judge("openvino-int8", "int8", ok_parity, 0.612, 0.670, 0.01)
    assert msg.startswith("openvino-int8: val accuracy 61.2 % vs FP32 67.0 % (drop 5.8 > 1.0 points)")
    assert "keep_head_float" in msg and " — fix: " in msg and "\n" not in msg
    assert "parity" in judge("onnx-int8", "int8", bad_parity, 0.80, 0.90, 0.01)  # both reasons named
    broken = judge("onnx-fp32", "fp32", _parity(False, agree=0.3), 0.90, 0.90, 0.01)
    assert "top-1 agreement with PyTorch 0.30" in broken and "computes something else" in broken
    assert judge("onnx-int8", "int8", ok_parity, None, None, 0.01) is None
    assert "no val split" in judge("onnx-int8", "int8", bad_parity, None, None, 0.01)  # parity is all there is


def test_int8_scoring_uses_the_calibration_metrics() -> None:
    from edgecompress.calibration import compute_metrics, softmax

    rng = np.random.default_rng(3)
    logits, y = rng.normal(size=(200, 4)) * 2, rng.integers(0, 4, 200)
    want = compute_metrics(logits, y)
    assert label_scorer(y)(logits) == {k: want[k] for k in ("accuracy", "ece", "nll")}
    probs = softmax(logits, axis=1)
    got = metrics_of(probs, y, probabilities=True)  # a graph ending in softmax is scored as probabilities
    assert got["accuracy"] == want["accuracy"] and got["ece"] == pytest.approx(want["ece"], abs=1e-12)


def test_choose_int8_accuracy_first_then_ece() -> None:
    ref = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0]])
    outputs = {
        ("minmax", False): ref[:, ::-1].copy(),  # all wrong
        ("entropy", False): ref * 0.5,  # right, less confident (larger prob gap)
        ("percentile", False): ref * 0.95,  # right, closest
        ("percentile", True): ref,  # head float: exact
    }
    built: list[tuple[str, bool]] = []

    def build(method: str, head: bool) -> tuple[str, bool]:
        built.append((method, head))
        return (method, head)

    chosen, record = choose_int8(build, lambda c: outputs[c], fidelity_scorer(ref), method="auto")
    assert chosen == ("percentile", True) and record["keep_head_float"] is True
    assert built == [("minmax", False), ("entropy", False), ("percentile", False), ("percentile", True)]
    chosen, _ = choose_int8(build, lambda c: outputs[c], fidelity_scorer(ref), keep_head_float=False)
    assert chosen == ("percentile", False)


def test_tensorrt_recipe_and_cache_roundtrip(tmp_path: Path) -> None:
    from edgecompress.export import tensorrt as trx

    c = ExportContract(input_shape=(3, 32, 32), num_classes=10, max_batch=64)
    r = trx.make_recipe("model.onnx", c, precision="int8", calibration_cache="calibration.cache", opt_batch=8)
    assert r["min_shape"] == [1, 3, 32, 32] and r["opt_shape"] == [8, 3, 32, 32] and r["max_shape"] == [64, 3, 32, 32]
    assert "--maxShapes=input:64x3x32x32" in r["trtexec"] and "--int8" in r["trtexec"]
    assert "--calib=calibration.cache" in r["trtexec"] and r["trtexec"][0] == "trtexec"
    assert "--fp16" in trx.make_recipe("model.onnx", c, precision="fp16")["trtexec"]
    with pytest.raises(ExportError):
        trx.make_recipe("model.onnx", c, precision="int8")

    amax = {"input": 2.5, "/conv/Conv_output_0": 12.0, "logits": 0.125}
    path = trx.write_calibration_cache(amax, tmp_path / "calibration.cache", trt_version="10.3.0")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert lines[1] == "input: " + struct.pack(">f", 2.5 / 127).hex()
    header, scales = trx.parse_calibration_cache(path)
    assert header == lines[0] and set(scales) == set(amax)
    for name, value in amax.items():
        assert scales[name] == pytest.approx(value / 127, rel=1e-6)
    with pytest.raises(ExportError):
        trx.parse_calibration_cache("not a cache\nx: 1")
    assert trx.trt_version_number("8.6.1") == 8601


def test_engine_compat_check() -> None:
    """The agent's check is the only one: the runtime on a device and the package both use it."""
    side = {"tensorrt_version": "10.3.0", "gpu_name": "Orin"}
    check_engine_compat(side, trt_version="10.3.0", gpu_name="Orin")
    check_engine_compat(side, trt_version="10.3.0", gpu_name=None)  # GPU unknown here: not held against the engine
    with pytest.raises(AgentError, match=r"TensorRT 10\.3\.0 \(here 10\.7\.0\).*not portable"):
        check_engine_compat(side, trt_version="10.7.0", gpu_name="Orin")
    with pytest.raises(AgentError, match="GPU 'Orin'"):
        check_engine_compat(side, trt_version="10.3.0", gpu_name="NVIDIA H100")


def test_one_engine_builder() -> None:
    from edgecompress.devices import agent
    from edgecompress.export import tensorrt as trx

    assert not hasattr(trx, "build_engine") and not hasattr(trx, "check_engine_compat")
    assert callable(agent.build_engine)


@pytest.mark.skipif(_lazy.available("tensorrt"), reason="tensorrt is installed here")
def test_build_engine_without_tensorrt_names_extra(tmp_path: Path) -> None:
    from edgecompress.export.tensorrt import build_engine_here

    with pytest.raises(MissingExtraError) as err:
        build_engine_here(tmp_path / "m.onnx", {"precision": "fp16"})
    assert "edgecompress[tensorrt]" in str(err.value)


def test_import_export_package_is_light() -> None:
    code = (
        "import sys, edgecompress.export, edgecompress.export.config, edgecompress.export.formats;"
        "mods=('torch','onnx','onnxruntime','openvino','nncf','tensorrt','executorch');"
        "heavy=[m for m in mods if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert proc.returncode == 0, proc.stdout + proc.stderr
