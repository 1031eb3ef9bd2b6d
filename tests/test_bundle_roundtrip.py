"""Bundle round trip through a real ONNX model and ONNX Runtime: write, zip, extract, verify, load, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.bundle import load_bundle, safe_extract, verify_bundle, write_bundle, zip_bundle
from edgecompress.bundle.manifest import MANIFEST_NAME, SCHEMA_NAME, Manifest
from edgecompress.errors import DataError

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

LABELS = ["cat", "dog", "bird"]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(LABELS)),
    ).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


def _fields(*, folded: bool = True, temperature: float = 1.0, batch: int | str = "batch") -> dict:
    return {
        "model": {
            "format": "onnx",
            "precision": "fp32",
            "runtime": "onnxruntime",
            "input": {"names": ["input"], "shape": [batch, 3, 8, 8], "dtype": "float32", "layout": "NCHW"},
            "output": {"name": "logits", "kind": "logits", "calibrated": folded},
        },
        "preprocessing": {"mean": MEAN, "std": STD, "size": [8, 8], "channels": 3, "scale": 1 / 255, "layout": "NCHW"},
        "labels": LABELS,
        "temperature": {"value": temperature, "folded": folded},
        "metrics": {"accuracy": 0.5, "ece": 0.1, "latency_p50_ms": {"1": 0.2}, "device": "local"},
        "config_hash": "abc",
        "source": {"teacher": "resnet", "student": "cnn"},
    }


def _ort_logits(model: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0].astype(np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_round_trip_zip_extract_verify_predict(onnx_model: Path, tmp_path: Path) -> None:
    bundle = write_bundle(
        name="tiny", files=[onnx_model], model_file=onnx_model, manifest_fields=_fields(), out_dir=tmp_path / "out"
    )
    assert bundle == tmp_path / "out" / "tiny"
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == 1
    assert manifest["model"]["file"] == "model/model.onnx"
    assert set(manifest["files"]) == {"model/model.onnx", SCHEMA_NAME, "run.py", "requirements.txt"}
    assert "onnxruntime" in (bundle / "requirements.txt").read_text()
    assert json.loads((bundle / SCHEMA_NAME).read_text()) == Manifest.model_json_schema()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp leftovers

    zipped = zip_bundle(bundle)
    extracted = safe_extract(zipped, tmp_path / "unzipped")
    assert (extracted / "tiny" / MANIFEST_NAME).is_file()
    assert verify_bundle(extracted).name == "tiny"
    assert verify_bundle(zipped).model.input.shape == ["batch", 3, 8, 8]

    x = np.random.default_rng(0).normal(size=(5, 3, 8, 8)).astype(np.float32)
    expected = _softmax(_ort_logits(onnx_model, x))
    for source in (zipped, bundle):
        with load_bundle(source) as predictor:
            probs = predictor.predict(x)
        assert probs.dtype == np.float32 and probs.shape == (5, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_unfolded_temperature_is_applied(onnx_model: Path, tmp_path: Path) -> None:
    bundle = write_bundle(
        name="warm",
        files=[onnx_model],
        model_file=onnx_model,
        manifest_fields=_fields(folded=False, temperature=2.5),
        out_dir=tmp_path,
    )
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    with load_bundle(bundle) as predictor:
        np.testing.assert_allclose(predictor.predict(x), _softmax(_ort_logits(onnx_model, x) / 2.5), atol=1e-5)


def test_wrong_input_shape_and_dtype_are_clear_errors(onnx_model: Path, tmp_path: Path) -> None:
    bundle = write_bundle(
        name="shape", files=[onnx_model], model_file=onnx_model, manifest_fields=_fields(), out_dir=tmp_path
    )
    with load_bundle(bundle) as predictor:
        with pytest.raises(DataError, match=r"axis 1 is 1, not 3") as err:
            predictor.predict(np.zeros((2, 1, 8, 8), np.float32))
        assert "\n" not in str(err.value) and "fix:" in str(err.value)
        with pytest.raises(DataError, match=r"add a batch axis"):
            predictor.predict(np.zeros((3, 8, 8), np.float32))
        with pytest.raises(DataError, match=r"preprocess"):
            predictor.predict(np.zeros((1, 3, 8, 8), np.uint8))
        with pytest.raises(DataError, match=r"axis 3 is 9, not 8"):
            predictor.predict(np.zeros((1, 3, 8, 9), np.float32))


def test_preprocess_and_predict_images(onnx_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    bundle = write_bundle(
        name="imgs", files=[onnx_model], model_file=onnx_model, manifest_fields=_fields(), out_dir=tmp_path
    )
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    with load_bundle(bundle) as predictor:
        x = predictor.preprocess([img])
        manual = ((img.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None]
        np.testing.assert_allclose(x, manual, atol=1e-6)
        gray = predictor.preprocess(img[:, :, 0])
        assert gray.shape == (1, 3, 8, 8)
        with pytest.raises(DataError, match="8x8"):
            predictor.preprocess([np.zeros((9, 8, 3), np.uint8)])

        big = tmp_path / "big.png"
        Image.fromarray(rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)).save(big)
        (result,) = predictor.predict_images([big], top_k=2)
        assert [t["label"] for t in result["top"]][0] in LABELS and len(result["top"]) == 2
        assert result["top"][0]["probability"] >= result["top"][1]["probability"]
        resized = np.asarray(Image.open(big).convert("RGB").resize((8, 8), Image.BILINEAR))
        expected = predictor.predict(predictor.preprocess([resized]))[0]
        assert result["top"][0]["probability"] == pytest.approx(float(expected.max()), abs=1e-6)


def test_fixed_batch_model_runs_in_chunks(onnx_model: Path, tmp_path: Path) -> None:
    bundle = write_bundle(
        name="fixed", files=[onnx_model], model_file=onnx_model, manifest_fields=_fields(batch=2), out_dir=tmp_path
    )
    x = np.random.default_rng(3).normal(size=(5, 3, 8, 8)).astype(np.float32)
    with load_bundle(bundle) as predictor:
        np.testing.assert_allclose(predictor.predict(x), _softmax(_ort_logits(onnx_model, x)), atol=1e-5)


def test_runner_script_prints_top_k(onnx_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    bundle = write_bundle(
        name="runner", files=[onnx_model], model_file=onnx_model, manifest_fields=_fields(), out_dir=tmp_path
    )
    img = np.random.default_rng(4).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    image = tmp_path / "x.png"
    Image.fromarray(img).save(image)
    proc = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, str(bundle / "run.py"), str(image), "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    with load_bundle(bundle) as predictor:
        probs = predictor.predict(predictor.preprocess([img]))[0]
    top = int(np.argmax(probs))
    assert lines[1].split()[0] == LABELS[top]
    assert float(lines[1].split()[1].rstrip("%")) == pytest.approx(100 * probs[top], abs=0.01)


def test_openvino_bundle_two_files_and_runner(onnx_model: Path, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    from PIL import Image

    ir = tmp_path / "ir" / "model.xml"
    ir.parent.mkdir()
    ov.save_model(ov.convert_model(str(onnx_model)), str(ir), compress_to_fp16=False)
    fields = _fields()
    fields["model"].update(format="openvino", runtime="openvino")
    bundle = write_bundle(
        name="ov", files=[ir, ir.with_suffix(".bin")], model_file=ir, manifest_fields=fields, out_dir=tmp_path / "b"
    )
    assert {"model/model.xml", "model/model.bin"} <= set(verify_bundle(zip_bundle(bundle)).files)
    assert "openvino" in (bundle / "requirements.txt").read_text()
    img = np.random.default_rng(5).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    with load_bundle(bundle) as predictor:
        x = predictor.preprocess([img])
        probs = predictor.predict(x)
    np.testing.assert_allclose(probs, _softmax(_ort_logits(onnx_model, x)), atol=1e-3)

    image = tmp_path / "y.png"
    Image.fromarray(img).save(image)
    proc = subprocess.run(  # noqa: S603 - fixed argument list
        [sys.executable, str(bundle / "run.py"), str(image), "--top-k", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[0] == LABELS[int(np.argmax(probs[0]))]
