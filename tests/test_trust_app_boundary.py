"""Outputs and inputs checked at the app boundary (issue 26, items 5 and 6): `predict`, `verify`, `inspect` and the
bundle's own `run.py` on hostile bundles and inputs.

Untrusted text is printed with control characters escaped; NaN logits are an error; a graph that never ends is
stopped by the time limit; EXIF orientation is applied; run.py enforces the pixel limit, the file types, bounded
``.npy`` headers and a plain ``model.file``, and reports every bad input in one line, never a traceback. A FIFO in
place of SHA256SUMS does not hang run.py; an OpenVINO model that is ONNX with its weights outside the bundle fails
verify.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, digits_fields, digits_onnx, one_error_line, one_line_message, png_claiming, record
from edgecompress._text import printable
from edgecompress.bundle import load_bundle, write_bundle
from edgecompress.bundle.manifest import MANIFEST_NAME, SUMS_NAME
from edgecompress.bundle.writer import sums_text
from edgecompress.errors import BundleError

ESC = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"  # title, clear screen, 8-bit CSI, right-to-left override
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def _graph_bundle(root: Path, name: str, nodes: list, inits: list, labels: int = 3, **model: object) -> Path:
    """A bundle of a hand-made ONNX graph: input [batch, 1, 8, 8] -> logits [batch, labels]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = root / name / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save_model(proto, str(path))
    fields = digits_fields()
    fields["labels"] = [f"c{i}" for i in range(labels)]
    fields["model"]["output"]["name"] = "logits"
    fields["model"].update(model)
    return write_bundle(name=name, files=[path], model_file=path, manifest_fields=fields, out_dir=root / "bundles")


def _linear(root: Path, name: str, w: np.ndarray) -> Path:
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("Gemm", ["flat", "w"], ["logits"],
                                                                                 transB=1)]  # fmt: skip
    return _graph_bundle(root, name, nodes, [numpy_helper.from_array(w.astype(np.float32), "w")], labels=len(w))


def _endless(root: Path) -> Path:
    """A graph whose Loop runs 10^15 iterations (each a no-op): it never finishes."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
    )  # fmt: skip
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["z"], transB=1),
        helper.make_node("Loop", ["trips", "go", "z"], ["logits"], body=body),
    ]
    inits = [
        numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "go"),
        numpy_helper.from_array(np.ones((3, 64), np.float32), "w"),
    ]
    return _graph_bundle(root, "endless", nodes, inits)


def _resum(bundle: Path) -> None:
    (bundle / SUMS_NAME).write_text(sums_text(bundle))


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> Path:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    _resum(bundle)
    return bundle


def run_py(bundle: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603 (argument list)
        [sys.executable, "-I", str(bundle / "run.py"), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundles and inputs the cases use (each case copies what it changes)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("boundary")
    model, x, _ = digits_onnx(root / "digits.onnx")
    fields = digits_fields()
    fields["labels"] = [f"{i}{ESC}" if i == 0 else str(i) for i in range(10)]
    out = {
        "digits": write_bundle(
            name="digits", files=[model], model_file=model, manifest_fields=fields, out_dir=root / "bundles"
        ),  # fmt: skip
        "nan": _linear(root, "nan", np.full((3, 64), np.nan)),
        "endless": _endless(root),
        "image": root / "zero.png",
        "root": root,
    }
    Image.fromarray(np.round(x[0] * 255 / 16).astype(np.uint8)).save(out["image"])
    return out


@dataclass(frozen=True)
class Case:
    """``make(dir, made)`` returns the command: ``["cli", ...]`` for edgecompress, ``["run.py", bundle, ...]``."""

    id: str
    given: str
    make: Callable[[Path, dict[str, Path]], list[str]]
    expect: tuple[str, ...]


def _copy(made: dict[str, Path], key: str, d: Path) -> Path:
    return Path(shutil.copytree(made[key], d / key))


def _sums_fifo(d: Path, made: dict[str, Path]) -> list[str]:
    bundle = _copy(made, "digits", d)
    (bundle / SUMS_NAME).unlink()
    os.mkfifo(bundle / SUMS_NAME)
    return ["run.py", str(bundle), str(made["image"])]


def _abs_model_file(d: Path, made: dict[str, Path]) -> list[str]:
    bundle = _edit_manifest(_copy(made, "digits", d), lambda m: m["model"].update(file=str(d / "elsewhere.onnx")))
    return ["run.py", str(bundle), str(made["image"])]


def _sparse_npy(d: Path, name: str = "big.npy") -> Path:
    path = d / name
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (8000, 8000, 4)})
        fh.truncate(8000 * 8000 * 4 * 8 + 128)  # 2 GB, almost all holes
    return path


def _file(d: Path, name: str, data: bytes) -> Path:
    (d / name).write_bytes(data)
    return d / name


def _npy(d: Path, name: str, array: np.ndarray, cut: int | None = None) -> Path:
    np.save(d / name, array, allow_pickle=True)
    if cut is not None:
        (d / name).write_bytes((d / name).read_bytes()[:cut])
    return d / name


def _manifest(edit: Callable[[dict], None]) -> Callable[[Path, dict[str, Path]], list[str]]:
    return lambda d, made: ["run.py", str(_edit_manifest(_copy(made, "digits", d), edit)), str(made["image"])]


def _ov_outside(d: Path, made: dict[str, Path]) -> list[str]:
    """An OpenVINO bundle whose model.xml is really ONNX with external weights outside the bundle."""
    from onnx import TensorProto, helper, numpy_helper

    (d / "weights.bin").write_bytes(np.ones((10, 64), np.float32).tobytes())
    w = numpy_helper.from_array(np.zeros((10, 64), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", str(d / "weights.bin")), ("offset", "0"), ("length", str(10 * 64 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["logits"], transB=1)],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [w],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (d / "ir").mkdir()
    (d / "ir" / "model.xml").write_bytes(proto.SerializeToString())
    (d / "ir" / "model.bin").write_bytes(b"\0" * 16)
    fields = digits_fields()
    fields["model"].update(format="openvino", runtime="openvino")
    bundle = write_bundle(name="ov", files=[d / "ir" / "model.xml", d / "ir" / "model.bin"],
                          model_file=d / "ir" / "model.xml", manifest_fields=fields, out_dir=d / "b")  # fmt: skip
    return ["cli", "verify", str(bundle)]


CASES = [
    Case("run-py-sums-fifo", "a FIFO in place of SHA256SUMS", _sums_fifo, ("SHA256SUMS", "not a regular file")),
    Case("run-py-absolute-model-file", "manifest `model.file` an absolute path (SHA256SUMS rewritten)",
         _abs_model_file, ("model.file", "not a plain path")),
    Case("run-py-pixel-bomb", "a PNG claiming 100000x100000 pixels",
         lambda d, m: ["run.py", str(m["digits"]), str(_file(d, "bomb.png", png_claiming(100_000, 100_000)))],
         ("more pixels",)),
    Case("run-py-sparse-npy", "a sparse .npy whose header claims 8000x8000x4 float64 (2 GB)",
         lambda d, m: ["run.py", str(m["digits"]), str(_sparse_npy(d))], ("more than an input image",)),
    Case("predict-sparse-npy", "a sparse .npy whose header claims 8000x8000x4 float64 (2 GB)",
         lambda d, m: ["cli", "predict", str(m["digits"]), str(_sparse_npy(d))], ("more than an input image needs",)),
    Case("run-py-missing-image", "an image path that does not exist",
         lambda d, m: ["run.py", str(m["digits"]), str(d / "nope.png")], ("cannot read input",)),
    Case("run-py-folder-image", "a folder given as the image",
         lambda d, m: ["run.py", str(m["digits"]), str(d)], ("not a regular file",)),
    Case("run-py-text-as-png", "a text file named .png",
         lambda d, m: ["run.py", str(m["digits"]), str(_file(d, "n.png", b"hello"))], ("cannot read image",)),
    Case("run-py-truncated-npy", "a truncated .npy",
         lambda d, m: ["run.py", str(m["digits"]), str(_npy(d, "t.npy", np.zeros((8, 8), np.float32), cut=100))],
         ("cannot read array",)),
    Case("run-py-object-npy", "a .npy of pickled objects",
         lambda d, m: ["run.py", str(m["digits"]), str(_npy(d, "o.npy", np.array([{"a": 1}], dtype=object)))],
         ("cannot read array",)),
    Case("run-py-manifest-not-json", "manifest.json cut short (SHA256SUMS rewritten)",
         lambda d, m: ["run.py", str(_broken_manifest(_copy(m, "digits", d))), str(m["image"])], ("malformed",)),
    Case("run-py-manifest-no-labels", "manifest.json without labels (SHA256SUMS rewritten)",
         _manifest(lambda m: m.pop("labels")), ("malformed", "KeyError")),
    Case("run-py-labels-repeated", "manifest labels `0, 0, 2, ...` (SHA256SUMS rewritten)",
         _manifest(lambda m: m["labels"].__setitem__(1, m["labels"][0])), ("label twice",)),
    Case("run-py-top-k-zero", "`--top-k 0`", lambda d, m: ["run.py", str(m["digits"]), str(m["image"]), "--top-k",
                                                           "0"], ("--top-k",)),  # fmt: skip
    Case("run-py-nan-logits", "a model whose weights are NaN",
         lambda d, m: ["run.py", str(m["nan"]), str(m["image"])], ("NaN or infinite",)),
    Case("predict-nan-logits", "a model whose weights are NaN",
         lambda d, m: ["cli", "predict", str(m["nan"]), str(m["image"])], ("NaN or infinite",)),
    Case("predict-endless-loop", "an ONNX Loop of 10^15 iterations, `--time-limit 2`",
         lambda d, m: ["cli", "predict", str(m["endless"]), str(m["image"]), "--time-limit", "2"],
         ("did not finish within 2 s",)),
    Case("run-py-endless-loop", "an ONNX Loop of 10^15 iterations, `--time-limit 2`",
         lambda d, m: ["run.py", str(m["endless"]), str(m["image"]), "--time-limit", "2"],
         ("did not finish within 2 s",)),
    Case("verify-labels-repeated", "manifest labels `0, 0, 2, ...` (SHA256SUMS rewritten)",
         lambda d, m: ["cli", "verify", str(_edit_manifest(_copy(m, "digits", d), lambda x: x["labels"].__setitem__(
             1, x["labels"][0])))], ("twice",)),  # fmt: skip
    Case("verify-openvino-onnx-outside", "an OpenVINO bundle whose model.xml is ONNX with weights outside the bundle",
         _ov_outside, ("references external data",)),
    Case("predict-escape-in-file-name", "an image path holding terminal escape sequences",
         lambda d, m: ["cli", "predict", str(m["digits"]), str(d / f"x{ESC}.png")], ("cannot read",)),
]  # fmt: skip


def _broken_manifest(bundle: Path) -> Path:
    text = (bundle / MANIFEST_NAME).read_text()
    (bundle / MANIFEST_NAME).write_text(text[: len(text) // 2])
    _resum(bundle)
    return bundle


@pytest.fixture(scope="module")
def observed(made: dict[str, Path]) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    import time

    root = made["root"] / "cases"

    def go(case: Case) -> tuple[str, tuple[subprocess.CompletedProcess, float]]:
        d = root / case.id
        d.mkdir(parents=True)
        args = case.make(d, made)
        start = time.monotonic()
        res = cli(*args[1:], timeout=120) if args[0] == "cli" else run_py(Path(args[1]), *args[2:], timeout=60)
        return case.id, (res, time.monotonic() - start)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(go, CASES))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_at_the_app_boundary_is_one_line(case: Case, observed) -> None:
    res, seconds = observed[case.id]
    line = one_error_line(res, 2)
    for part in case.expect:
        assert part in line, f"{part!r} not in: {line}"
    assert not any(c in res.stderr + res.stdout for c in RAW)
    if "endless" in case.id:
        assert seconds < 60, seconds  # stopped by the limit, not by the test's timeout
    where = "edgecompress " + res.args[3] if "edgecompress" in res.args else "bundle run.py"
    record("app", case.id, case.given, where, str(res.returncode), line)


def test_escapes_are_printed_escaped_everywhere(made: dict[str, Path], tmp_path: Path) -> None:
    bundle = made["digits"]
    outputs = [
        cli("verify", str(bundle), timeout=120),
        cli("inspect", str(bundle), timeout=120),
        cli("predict", str(bundle), str(made["image"]), "--top-k", "10", timeout=120),
        run_py(bundle, str(made["image"]), "--top-k", "10"),
    ]
    for res in outputs:
        assert res.returncode == 0, res.stderr[-2000:]
        assert not any(c in res.stdout + res.stderr for c in RAW), res.stdout
    assert "0\\x1b]0;pwned\\x07" in outputs[3].stdout  # run.py prints the label, escaped
    rows = json.loads(outputs[2].stdout.splitlines()[0])  # predict: JSON escapes, and the label survives a round trip
    assert f"0{ESC}" in [t["label"] for t in rows["top"]]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"models": [{"name": f"evil{ESC}", "role": "student", "accuracy": 0.5}]}))
    res = cli("inspect", str(tmp_path), timeout=120)
    assert res.returncode == 0 and "evil\\x1b]0;pwned" in res.stdout and not any(c in res.stdout for c in RAW)
    shown = next(line for line in outputs[3].stdout.splitlines() if "pwned" in line).strip()
    record("app", "labels-with-escapes", "a label `0` + OSC title, clear-screen, 8-bit CSI and RLO characters",
           "verify, inspect, predict, run.py", "0 (printed escaped)", shown)  # fmt: skip


def test_report_md_escapes_control_characters(tmp_path: Path) -> None:
    from edgecompress.report import ModelEntry, Report, write_report

    entry = ModelEntry(name=f"student{ESC}", role="student", format="pytorch", precision="fp32", params=1, macs=1,
                       size_bytes=None, accuracy=0.5, ece=0.1, nll=1.0, brier=0.5, temperature=1.0, latency_ms={},
                       device=f"host{ESC}")  # fmt: skip
    out = write_report(Report(name="r", models=[entry], warnings=[f"warn{ESC}"]), tmp_path, plots=False)
    text = out["md"].read_text()
    assert "student\\x1b]0;pwned" in text and not any(c in text for c in RAW)
    row = next(line for line in text.splitlines() if "student" in line and "|" in line)
    record(
        "app",
        "report-md-escapes",
        "a model and device name holding escape sequences",
        "report.md",
        "written",
        row[:120],
    )


def test_printable_and_its_copy_in_run_py_agree() -> None:
    import importlib.util

    from edgecompress.bundle import runner_script

    spec = importlib.util.spec_from_file_location("runner_copy", runner_script.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    samples = [ESC, "plain é ü 中文", "\t\n\r\x00\x7f\x85\u2028\u2066\u061c", "".join(map(chr, range(0x250)))]
    assert [copy.printable(s) for s in samples] == [printable(s) for s in samples]
    assert copy.MAX_IMAGE_PIXELS == __import__("edgecompress.bundle.inputs").bundle.inputs.MAX_IMAGE_PIXELS


def test_exif_orientation_is_applied(made: dict[str, Path], tmp_path: Path) -> None:
    """A phone photo stored sideways (EXIF orientation 6: rotate 90° clockwise to view) is read upright."""
    from PIL import Image

    from edgecompress.bundle.inputs import load_image

    upright = np.zeros((8, 8), np.uint8)
    upright[1:7, 2] = 255  # a vertical bar on the left: a '1'-like stroke, not symmetric under rotation
    upright[1, 2:6] = 255
    Image.fromarray(upright).save(tmp_path / "upright.png")
    stored = Image.fromarray(np.rot90(upright, k=1))  # how the camera stored it: rotated a quarter turn left
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100, subsampling=0)
    stored.save(tmp_path / "phone-no-exif.jpg", quality=100, subsampling=0)
    with load_bundle(made["digits"]) as predictor:
        pre = predictor.manifest.preprocessing
        a, b = load_image(tmp_path / "upright.png", pre), load_image(tmp_path / "phone.jpg", pre)
        sideways = load_image(tmp_path / "phone-no-exif.jpg", pre)
    assert np.abs(a - b).max() < 1.5  # JPEG rounding only
    assert np.abs(a - sideways).max() > 8  # without the tag the pixels really are elsewhere
    res = run_py(made["digits"], str(tmp_path / "upright.png"), str(tmp_path / "phone.jpg"), "--top-k", "1")
    assert res.returncode == 0, res.stderr
    tops = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")]
    assert tops[0] == tops[1]
    record(
        "app",
        "exif-orientation",
        "a JPEG stored sideways with EXIF orientation 6",
        "predict, run.py",
        "0 (read upright)",
        f"pixels equal the upright PNG's to {np.abs(a - b).max():.2f}; same top-1 label",
    )


def test_library_predict_cancels_an_endless_onnx_graph(made: dict[str, Path]) -> None:
    from edgecompress.bundle.predict import PredictTimeout

    with load_bundle(made["endless"], time_limit_s=1.0) as predictor:
        x = np.zeros((1, 1, 8, 8), np.float32)
        with pytest.raises(PredictTimeout) as err:
            predictor.predict(x)
    assert not err.value.stuck  # ONNX Runtime's terminate flag stopped the run
    msg = one_line_message(err.value)
    record("app", "library-endless-loop", "an ONNX Loop of 10^15 iterations, `load_bundle(..., time_limit_s=1)`",
           "Predictor.predict", "PredictTimeout (run cancelled)", msg)  # fmt: skip


def test_non_finite_logits_are_refused_by_the_library(made: dict[str, Path]) -> None:
    with load_bundle(made["nan"]) as predictor, pytest.raises(BundleError, match="NaN or infinite outputs"):
        predictor.predict(np.zeros((2, 1, 8, 8), np.float32))
