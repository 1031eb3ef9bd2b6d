"""Bundles that can be trusted (issue 15, findings 3 and 4): SHA256SUMS over every file with the manifest included,
verify failing on unlisted files, links and ONNX external data, run.py that a file beside it cannot hijack, and the
input contract — 8- and 16-bit PNGs of scikit-learn's digits predicted right by a bundle whose raw range is [0, 16]."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import digits_fields, digits_onnx, one_line_message, record
from edgecompress.bundle import load_bundle, verify_bundle, write_bundle
from edgecompress.bundle.manifest import MANIFEST_NAME, SUMS_NAME
from edgecompress.bundle.writer import sums_text
from edgecompress.errors import BundleError


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    tmp = tmp_path_factory.mktemp("digits")
    model, x, y = digits_onnx(tmp / "model.onnx")
    bundle = write_bundle(
        name="digits", files=[model], model_file=model, manifest_fields=digits_fields(), out_dir=tmp / "bundles"
    )
    return bundle, x, y


@pytest.fixture()
def bundle(digits, tmp_path: Path) -> Path:
    """A private copy of the digits bundle, free to tamper with."""
    return Path(shutil.copytree(digits[0], tmp_path / "digits"))


def _refused(path: Path, *parts: str, case: str, given: str) -> str:
    with pytest.raises(BundleError) as err:
        verify_bundle(path)
    msg = one_line_message(err.value)
    for part in parts:
        assert part in msg, msg
    record("bundle", case, given, "edgecompress verify", "2", msg)
    return msg


# ------------------------------------------------------------------------------------------------------- checksums
def test_sha256sum_c_reads_the_sums_and_they_cover_the_manifest(bundle: Path) -> None:
    res = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=bundle, capture_output=True, text=True)  # noqa: S603,S607
    assert res.returncode == 0, res.stdout + res.stderr
    listed = [line.split("  ", 1)[1] for line in (bundle / SUMS_NAME).read_text().splitlines()]
    assert listed == sorted(listed)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert listed == [f for f in files if f != SUMS_NAME] and MANIFEST_NAME in listed


def test_reversed_labels_fail_verify(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["labels"] = data["labels"][::-1]
    (bundle / MANIFEST_NAME).write_text(json.dumps(data, indent=2))
    _refused(
        bundle,
        "'manifest.json' does not match its sha256",
        case="bundle-reversed-labels",
        given="manifest.json with its labels reversed",
    )


def test_unlisted_text_file_fails_verify(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("hello")
    _refused(bundle, "not listed in SHA256SUMS: 'notes.txt'", case="bundle-unlisted-file", given="a notes.txt added")


def test_model_folder_symlink_fails_verify(bundle: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.move(bundle / "model", elsewhere)
    os.symlink(elsewhere, bundle / "model")
    _refused(
        bundle, "'model' is a symbolic link", case="bundle-model-dir-link", given="model/ a link to another folder"
    )


def test_onnx_external_data_fails_verify(tmp_path: Path) -> None:
    import onnx

    model, _, _ = digits_onnx(tmp_path / "plain.onnx")
    proto = onnx.load(str(model))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save_model(proto, str(ext / "model.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    written = write_bundle(
        name="ext",
        files=[ext / "model.onnx", ext / "w.bin"],
        model_file=ext / "model.onnx",
        manifest_fields=digits_fields(),
        out_dir=tmp_path / "out",
    )
    _refused(
        written,
        "references external data ('w.bin')",
        case="bundle-onnx-external-data",
        given="model.onnx with its weights in an external w.bin",
    )


def test_runtime_beside_run_py_fails_verify_and_is_never_imported(bundle: Path, tmp_path: Path) -> None:
    """A fake ``onnxruntime.py`` beside run.py, even listed in a rewritten SHA256SUMS, is not imported by run.py."""
    from PIL import Image

    marker = tmp_path / "pwned"
    (bundle / "onnxruntime.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit('hijacked')\n")
    _refused(
        bundle,
        "not listed in SHA256SUMS: 'onnxruntime.py'",
        case="bundle-hijack-runtime",
        given="an onnxruntime.py beside run.py",
    )
    (bundle / SUMS_NAME).write_text(sums_text(bundle))  # sums are not a signature: an attacker can rewrite them
    image = tmp_path / "seven.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    for cwd in (bundle, tmp_path):  # `python run.py` in the bundle folder and from elsewhere, without -I
        res = subprocess.run(  # noqa: S603
            [sys.executable, str(bundle / "run.py"), str(image), "--top-k", "1"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert not marker.exists(), "run.py imported onnxruntime.py from the bundle folder"
        assert "%" in res.stdout


def test_run_py_refuses_a_tampered_bundle(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    (bundle / "numpy.py").write_text("raise SystemExit('hijacked')\n")
    res = subprocess.run(  # noqa: S603
        [sys.executable, "-I", str(bundle / "run.py"), str(image)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0 and "numpy.py is not listed in SHA256SUMS" in res.stderr, res.stderr


# --------------------------------------------------------------------------------------------------- input contract
def _accuracy(rows: list[dict], y: np.ndarray) -> float:
    return float(np.mean([int(r["top"][0]["label"]) == t for r, t in zip(rows, y, strict=True)]))


def test_8_bit_pngs_of_digits_get_the_accuracy_of_the_arrays(digits, tmp_path: Path) -> None:
    """Finding 4: a [0, 16] contract fed 8-bit PNGs (0..255) maps v / 255 * 16; the accuracy is the arrays' one."""
    from PIL import Image

    bundle, x, y = digits
    pngs = []
    for i, img in enumerate(x):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.round(img * 255.0 / 16.0).astype(np.uint8)).save(path)
        pngs.append(path)
    with load_bundle(bundle) as predictor:
        acc_arrays = float(np.mean(predictor.predict(predictor.preprocess(list(x))).argmax(axis=1) == y))
        rows = predictor.predict_images(pngs, top_k=1)
    acc_pngs = _accuracy(rows, y)
    assert acc_arrays > 0.9, acc_arrays
    assert abs(acc_pngs - acc_arrays) <= 1.0 / len(y), (acc_pngs, acc_arrays)  # rounding to 8 bits may flip one

    res = subprocess.run(  # noqa: S603 (the standalone runner agrees with the library on the first images)
        [sys.executable, "-I", str(bundle / "run.py"), *map(str, pngs[:20]), "--top-k", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    top1 = [line.split()[0] for line in res.stdout.splitlines() if line.startswith("  ")]
    assert top1 == [r["top"][0]["label"] for r in rows[:20]]


def test_16_bit_png_is_scaled_not_clipped(digits, tmp_path: Path) -> None:
    from PIL import Image

    from edgecompress.bundle.inputs import load_image

    bundle, x, y = digits
    pngs = []
    for i, img in enumerate(x[:200]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.round(img * 65535.0 / 16.0).astype(np.uint16)).save(path)
        pngs.append(path)
    with load_bundle(bundle) as predictor:
        raw = load_image(pngs[0], predictor.manifest.preprocessing)
        np.testing.assert_allclose(raw[:, :, 0], x[0], atol=1e-3)  # back in [0, 16], not clipped at 255
        acc_arrays = float(np.mean(predictor.predict(predictor.preprocess(list(x[:200]))).argmax(axis=1) == y[:200]))
        acc_pngs = _accuracy(predictor.predict_images(pngs, top_k=1), y[:200])
    assert acc_pngs == acc_arrays


def test_npy_arrays_in_and_out_of_the_contract(digits, tmp_path: Path) -> None:
    from edgecompress.errors import DataError

    bundle, x, y = digits
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, x[0])
    np.save(bad, x[0] * 100.0)
    with load_bundle(bundle) as predictor:
        probs = predictor.predict(predictor.preprocess([x[0]]))
        assert predictor.predict_images([good], top_k=1)[0]["top"][0]["index"] == int(probs.argmax())
        with pytest.raises(DataError) as err:
            predictor.predict_images([bad])
    assert "input contract is [0, 16]" in one_line_message(err.value)


def test_old_manifest_without_contract_fields_still_parses() -> None:
    from edgecompress.bundle.manifest import Preprocessing

    pre = Preprocessing(mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], size=(4, 4), channels=3)
    assert pre.value_range == (0.0, 255.0) and pre.input_dtype == "uint8" and pre.color_mode == "RGB"


# ---------------------------------------------------------------------------------------------------------- signing
@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (OpenSSH) is not installed")
def test_signed_bundle_verifies_and_a_resummed_tamper_does_not(bundle: Path, tmp_path: Path) -> None:
    from edgecompress.bundle import sign_bundle, zip_bundle

    key = tmp_path / "key"
    subprocess.run(  # noqa: S603,S607
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me", "-f", str(key)], check=True, timeout=60
    )
    signers = tmp_path / "allowed_signers"
    signers.write_text(f'me@example.com namespaces="edgecompress-bundle" {key.with_suffix(".pub").read_text()}')
    sign_bundle(bundle, key)
    assert verify_bundle(bundle, allowed_signers=signers, identity="me@example.com").name == "digits"
    zipped = zip_bundle(bundle, tmp_path / "signed.zip")
    verify_bundle(zipped, allowed_signers=signers, identity="me@example.com")
    with pytest.raises(BundleError, match="does not verify for 'someone@else'"):
        verify_bundle(bundle, allowed_signers=signers, identity="someone@else")

    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["labels"] = data["labels"][::-1]
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    (bundle / SUMS_NAME).write_text(sums_text(bundle))  # checksums alone no longer catch it ...
    assert verify_bundle(bundle).labels == data["labels"]
    with pytest.raises(BundleError) as err:  # ... the signature does
        verify_bundle(bundle, allowed_signers=signers, identity="me@example.com")
    msg = one_line_message(err.value)
    assert "does not verify" in msg
    record("bundle", "bundle-signature-tampered", "labels reversed and SHA256SUMS rewritten in a signed bundle",
           "edgecompress verify --allowed-signers", "2", msg)  # fmt: skip
    (bundle / "SHA256SUMS.sig").unlink()
    with pytest.raises(BundleError, match="is not signed"):
        verify_bundle(bundle, allowed_signers=signers, identity="me@example.com")
