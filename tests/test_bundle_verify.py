"""Bundle verification and safe unzipping: checksums, schema versions, malformed manifests, zip-slip, zip bombs."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest

from edgecompress.bundle import BundleConfig, safe_extract, verify_bundle, write_bundle, zip_bundle
from edgecompress.bundle.manifest import MANIFEST_NAME, SUMS_NAME
from edgecompress.bundle.writer import sums_text
from edgecompress.errors import BundleError


def _fields() -> dict:
    return {
        "model": {
            "format": "openvino",
            "precision": "int8",
            "runtime": "openvino",
            "input": {"names": ["input"], "shape": ["batch", 1, 4, 4]},
            "output": {"name": "logits", "kind": "logits", "calibrated": True},
        },
        "preprocessing": {"mean": [0.5], "std": [0.5], "size": [4, 4], "channels": 1},
        "labels": ["a", "b"],
    }


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.xml").write_text("<net/>")
    (art / "model.bin").write_bytes(bytes(range(256)))
    return write_bundle(
        name="b1",
        files=[art / "model.xml", art / "model.bin"],
        model_file=art / "model.xml",
        manifest_fields=_fields(),
        out_dir=tmp_path / "out",
    )


def _edit_manifest(bundle: Path, text: str) -> None:
    """Rewrite manifest.json and SHA256SUMS as someone who edits both would: only the schema checks stop it."""
    (bundle / MANIFEST_NAME).write_text(text)
    (bundle / SUMS_NAME).write_text(sums_text(bundle))


def _one_line(err: pytest.ExceptionInfo[BundleError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_written_bundle_verifies(bundle: Path) -> None:
    manifest = verify_bundle(bundle)
    assert manifest.model.file == "model/model.xml"
    assert {"model/model.xml", "model/model.bin"} <= set(manifest.files)
    assert manifest.tool_versions["edgecompress"]


def test_rewrite_replaces_existing_bundle(bundle: Path, tmp_path: Path) -> None:
    (bundle / "stale.txt").write_text("old")
    art = tmp_path / "art"
    again = write_bundle(
        name="b1",
        files=[art / "model.xml", art / "model.bin"],
        model_file=art / "model.xml",
        manifest_fields=_fields(),
        out_dir=tmp_path / "out",
        include_runner=False,
    )
    assert again == bundle and not (bundle / "stale.txt").exists() and not (bundle / "run.py").exists()
    verify_bundle(bundle)


def test_checksum_mismatch(bundle: Path) -> None:
    (bundle / "model" / "model.bin").write_bytes(b"tampered")
    with pytest.raises(BundleError, match=r"model/model.bin' does not match its sha256") as err:
        verify_bundle(bundle)
    _one_line(err)


def test_missing_file(bundle: Path) -> None:
    (bundle / "model" / "model.bin").unlink()
    with pytest.raises(BundleError, match=r"model/model.bin' is missing") as err:
        verify_bundle(bundle)
    _one_line(err)


def test_unlisted_model_file(bundle: Path) -> None:
    (bundle / "model" / "other.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"not listed in SHA256SUMS: 'model/other.onnx'"):
        verify_bundle(bundle)


def test_newer_schema_version(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["schema_version"] = 2
    data["something_new"] = True
    _edit_manifest(bundle, json.dumps(data))
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle)
    assert _one_line(err) == (
        "bundle schema version 2 is newer than this edgecompress supports (1) — fix: upgrade edgecompress"
    )


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("labels"), r"malformed: labels: Field required"),
        (lambda d: d["model"].update(file="../escape.xml"), r"malformed: model.file"),
        (lambda d: d.update(extra_key=1), r"malformed: extra_key"),
        (lambda d: d["files"].update({"x": "nothex"}), r"malformed: files"),
        (lambda d: d.update(created="yesterday"), r"malformed: created"),
    ],
)
def test_malformed_manifest(bundle: Path, edit, match: str) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(data)
    _edit_manifest(bundle, json.dumps(data))
    with pytest.raises(BundleError, match=match) as err:
        verify_bundle(bundle)
    _one_line(err)


def test_manifest_not_json(bundle: Path) -> None:
    _edit_manifest(bundle, "{not json")
    with pytest.raises(BundleError, match="not valid JSON") as err:
        verify_bundle(bundle)
    _one_line(err)


def test_bad_name_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    with pytest.raises(BundleError, match="not a safe folder name"):
        write_bundle(name="../up", files=[f], model_file=f, manifest_fields=_fields(), out_dir=tmp_path)
    with pytest.raises(BundleError, match="does not exist"):
        write_bundle(name="ok", files=[tmp_path / "nope"], model_file=f, manifest_fields=_fields(), out_dir=tmp_path)
    bad = {**_fields(), "labels": "not-a-list"}
    with pytest.raises(BundleError, match="labels"):
        write_bundle(name="ok", files=[f], model_file=f, manifest_fields=bad, out_dir=tmp_path)
    assert not (tmp_path / "ok").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_zip_is_deterministic(bundle: Path, tmp_path: Path) -> None:
    first = zip_bundle(bundle, tmp_path / "one.zip").read_bytes()
    second = zip_bundle(bundle, tmp_path / "two.zip").read_bytes()
    assert first == second
    names = zipfile.ZipFile(tmp_path / "one.zip").namelist()
    assert names == sorted(names) and all(n.startswith("b1/") for n in names)
    assert verify_bundle(tmp_path / "one.zip").name == "b1"


def test_zip_checksum_mismatch_detected(bundle: Path, tmp_path: Path) -> None:
    (bundle / "model" / "model.xml").write_text("<changed/>")
    with pytest.raises(BundleError, match="does not match its sha256"):
        verify_bundle(zip_bundle(bundle, tmp_path / "z.zip"))


def _zip_with(path: Path, name: str, data: bytes = b"x", *, link: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok/manifest.json", "{}")
        info = zipfile.ZipInfo(name)
        if link:
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("entry", "link", "match"),
    [
        ("../evil.txt", False, r"'\.\.' component"),
        ("ok/../../evil.txt", False, r"'\.\.' component"),
        ("/etc/evil.txt", False, "absolute path"),
        ("C:/evil.txt", False, "absolute path"),
        ("ok/link", True, "symbolic link"),
    ],
)
def test_zip_slip_refused(tmp_path: Path, entry: str, link: bool, match: str) -> None:
    data = b"../../../../etc/passwd" if link else b"x"
    zpath = _zip_with(tmp_path / "evil.zip", entry, data, link=link)
    with pytest.raises(BundleError, match=match) as err:
        safe_extract(zpath, tmp_path / "dest")
    _one_line(err)
    assert not (tmp_path / "dest").exists() and not (tmp_path / "evil.txt").exists()
    with pytest.raises(BundleError, match=match):
        verify_bundle(zpath)


def test_zip_bomb_bounds(tmp_path: Path) -> None:
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(12):
            zf.writestr(f"b/f{i}.txt", "x")
    with pytest.raises(BundleError, match="12 entries"):
        safe_extract(many, tmp_path / "d1", max_files=10)

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("b/zeros.bin", bytes(8 << 20))  # 8 MiB of zeros compresses > 1000:1
    with pytest.raises(BundleError, match="compressed more than"):
        safe_extract(bomb, tmp_path / "d2")

    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as zf:
        zf.writestr("b/data.bin", bytes(4096))
    with pytest.raises(BundleError, match="unpacks to"):
        safe_extract(big, tmp_path / "d3", max_total_bytes=1000)
    assert not any(p.exists() for p in (tmp_path / "d1", tmp_path / "d2", tmp_path / "d3"))


def test_not_a_zip_and_duplicates(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable zip"):
        safe_extract(junk, tmp_path / "d")
    dup = tmp_path / "dup.zip"
    with zipfile.ZipFile(dup, "w") as zf, pytest.warns(UserWarning):
        zf.writestr("b/a.txt", "1")
        zf.writestr("b/a.txt", "2")
    with pytest.raises(BundleError, match="appears twice"):
        safe_extract(dup, tmp_path / "d")


def test_bundle_config() -> None:
    assert BundleConfig().targets == "all" and BundleConfig().zip
    cfg = BundleConfig(targets="onnx:int8")
    assert cfg.targets == ["onnx:int8"]
    assert cfg.selects("any", "onnx", "int8") and not cfg.selects("any", "onnx", "fp32")
    assert BundleConfig(targets=["openvino"]).selects("ov_fp16", "openvino", "fp16")
    with pytest.raises(ValueError, match="targets"):
        BundleConfig(targets=[])
    with pytest.raises(ValueError, match="extra"):
        BundleConfig(unknown=1)


def test_artifact_dict_and_shortcut_fields(tmp_path: Path) -> None:
    """The pipeline passes an artifact dict, ``input_shape`` and ``metrics.latency_ms``; they fill the manifest."""
    f = tmp_path / "m.onnx"
    f.write_bytes(b"onnx")
    art = {"name": "onnx_int8", "format": "onnx", "precision": "int8", "runtime": "onnxruntime", "files": [str(f)],
           "model_file": str(f), "info": {}}  # fmt: skip
    fields = {
        "labels": ["a", "b"],
        "preprocessing": {"mean": [0.5], "std": [0.5], "size": [4, 4], "channels": 1, "layout": "NCHW", "scale": 1.0},
        "temperature": {"value": None, "folded": True},
        "metrics": {"accuracy": 0.9, "latency_ms": {"1": 0.5, "8": {"p50": 2.0, "p90": 3.0}}, "device": "local"},
        "input_shape": [1, 4, 4],
        "output_kind": "probabilities",
    }
    manifest = verify_bundle(write_bundle(art, manifest_fields=fields, out_dir=tmp_path / "out"))
    assert manifest.name == "onnx_int8" and manifest.model.precision == "int8"
    assert manifest.model.input.shape == ["batch", 1, 4, 4] and manifest.model.input.names == ["input"]
    assert manifest.model.output.kind == "probabilities" and manifest.model.output.name == "probabilities"
    assert manifest.metrics.latency_p50_ms == {"1": 0.5, "8": 2.0}
    assert manifest.temperature.value is None
    bad = {**fields, "preprocessing": {**fields["preprocessing"], "mean": [0.5, 0.5]}}
    with pytest.raises(BundleError, match="one per channel"):
        write_bundle(art, manifest_fields=bad, out_dir=tmp_path / "out")
