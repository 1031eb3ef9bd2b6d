"""Limits on everything read from outside (issue 15, findings 6 and 8): zip entries and totals without the exact-1 MiB
hole, damaged or unsupported zip entries, manifest size and depth, preprocessing.size, YAML alias bombs, FIFOs and
decompression-bomb images — each a one-line error, quickly."""

from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, digits_fields, digits_onnx, one_error_line, one_line_message, record, write_yaml
from edgecompress.bundle import safe_extract, verify_bundle
from edgecompress.bundle.manifest import MANIFEST_NAME, SUMS_NAME
from edgecompress.bundle.writer import sums_text
from edgecompress.errors import BundleError, ConfigError, DataError


def _refused(fn, exc_type=BundleError, *parts: str, case: str = "", given: str = "", how: str = "") -> str:
    with pytest.raises(exc_type) as err:
        fn()
    msg = one_line_message(err.value)
    for part in parts:
        assert part in msg, msg
    if case:
        group = "config" if exc_type is ConfigError else "bundle"
        record(group, case, given, how, "2", msg)
    return msg


# ------------------------------------------------------------------------------------------------------------- zips
def test_many_entries_of_exactly_one_mib_are_a_bomb(tmp_path: Path) -> None:
    """The old ratio check skipped entries of exactly 1 MiB: 2,048 of them wrote 2 GiB. 40 show the hole."""
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"b/z{i}.bin", bytes(1 << 20))
    _refused(
        lambda: safe_extract(bomb, tmp_path / "d"),
        BundleError,
        "compressed more than",
        case="zip-1mib-entries",
        given="40 entries of exactly 1 MiB of zeros",
        how="edgecompress verify",
    )
    assert not (tmp_path / "d").exists()


def test_archive_ratio_is_bounded_even_when_each_entry_is_below_the_entry_ratio(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(20):  # 1 MiB of which 4 KiB random: about 250:1 each, below the 1000:1 entry bound
            zf.writestr(f"b/z{i}.bin", rng.bytes(4096) + bytes((1 << 20) - 4096))
    _refused(
        lambda: safe_extract(bomb, tmp_path / "d"),
        BundleError,
        "more than 100:1",
        case="zip-archive-ratio",
        given="20 entries of 1 MiB, each about 250:1",
        how="edgecompress verify",
    )


def _stored_zip(path: Path, name: str = "b/manifest.json", data: bytes = b'{"HELLO": "DATA"}') -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(name, data)
    return path


def _patch(path: Path, local_off: int, central_off: int, value_fn) -> None:
    """Patch a 2-byte field of the (single) local header and central-directory entry."""
    raw = bytearray(path.read_bytes())
    for sig, off in ((b"PK\x03\x04", local_off), (b"PK\x01\x02", central_off)):
        at = raw.index(sig) + off
        (old,) = struct.unpack_from("<H", raw, at)
        struct.pack_into("<H", raw, at, value_fn(old))
    path.write_bytes(bytes(raw))


def _bad_crc(path: Path) -> Path:
    raw = bytearray(_stored_zip(path).read_bytes())
    at = raw.index(b"HELLO")
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    return path


def _method_99(path: Path) -> Path:
    _patch(_stored_zip(path), 8, 10, lambda _: 99)
    return path


def _encrypted(path: Path) -> Path:
    _patch(_stored_zip(path), 6, 8, lambda flags: flags | 0x1)
    return path


def _long_name(path: Path) -> Path:
    return _stored_zip(path, name="b/" + "a" * 300 + ".json")


ZIP_VARIANTS = {
    "zip-bad-crc": (_bad_crc, "damaged or unsupported entry"),
    "zip-method-99": (_method_99, "unknown compression method (99)"),
    "zip-encrypted": (_encrypted, "is encrypted"),
    "zip-300-char-name": (_long_name, "name longer than a file system allows"),
}


@pytest.mark.parametrize("case", sorted(ZIP_VARIANTS))
def test_damaged_zip_variants_are_one_line(case: str, tmp_path: Path) -> None:
    make, part = ZIP_VARIANTS[case]
    path = make(tmp_path / "bundle.zip")
    _refused(lambda: verify_bundle(path), BundleError, part)
    res = cli("verify", str(path))
    line = one_error_line(res, 2)
    assert part in line
    record("bundle", case, case.removeprefix("zip-").replace("-", " ") + " in bundle.zip", "edgecompress verify", "2",
           line)  # fmt: skip


# -------------------------------------------------------------------------------------------------------- manifests
@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    from edgecompress.bundle import write_bundle

    model, _, _ = digits_onnx(tmp_path / "m.onnx")
    return write_bundle(
        name="d", files=[model], model_file=model, manifest_fields=digits_fields(), out_dir=tmp_path / "out"
    )


def _rewrite(bundle: Path, text: str) -> None:
    (bundle / MANIFEST_NAME).write_text(text)
    (bundle / SUMS_NAME).write_text(sums_text(bundle))


def test_deep_manifest_is_refused_without_recursion_error(bundle: Path) -> None:
    _rewrite(bundle, "[" * 100_000 + "]" * 100_000)
    _refused(
        lambda: verify_bundle(bundle),
        BundleError,
        "nested deeper than a manifest is",
        case="manifest-100k-deep",
        given="manifest.json of 100,000 nested lists (SHA256SUMS rewritten)",
        how="edgecompress verify",
    )


def test_huge_manifest_is_refused_before_reading(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["labels"] = [f"label-{i}" for i in range(400_000)]  # about 6 MB
    _rewrite(bundle, json.dumps(data))
    _refused(
        lambda: verify_bundle(bundle),
        BundleError,
        "more than a manifest holds",
        case="manifest-huge",
        given="a 6 MB manifest.json",
        how="edgecompress verify",
    )


def test_huge_preprocessing_size_is_refused(bundle: Path) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["preprocessing"]["size"] = [60000, 60000]
    _rewrite(bundle, json.dumps(data))
    _refused(
        lambda: verify_bundle(bundle),
        BundleError,
        "preprocessing.size",
        case="manifest-huge-size",
        given="preprocessing.size [60000, 60000]",
        how="edgecompress verify",
    )


# -------------------------------------------------------------------------------------------------- predict inputs
def test_fifo_is_refused_before_opening(bundle: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    from edgecompress.bundle import predict_images

    _refused(lambda: predict_images(bundle, [fifo]), DataError, "is not a regular file")
    res = cli("predict", str(bundle), str(fifo), timeout=120)  # the old code blocked here forever
    line = one_error_line(res, 2)
    record("bundle", "predict-fifo", "`predict` on a FIFO named pipe.png", "edgecompress predict", "2", line)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width x height`` pixels (the data is a few bytes)."""
    from PIL import Image

    Image.fromarray(np.zeros((1, 1), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"IHDR")
    struct.pack_into(">II", raw, at + 4, width, height)
    struct.pack_into(">I", raw, at + 17, zlib.crc32(bytes(raw[at : at + 17])))
    path.write_bytes(bytes(raw))
    return path


def test_decompression_bomb_png_is_one_line(bundle: Path, tmp_path: Path) -> None:
    image = _png_claiming(tmp_path / "bomb.png", 100_000, 100_000)
    res = cli("predict", str(bundle), str(image))
    line = one_error_line(res, 2)
    assert "than the limit" in line
    record("bundle", "predict-pixel-bomb", "a PNG claiming 100000x100000 pixels", "edgecompress predict", "2", line)
    from edgecompress.bundle import predict_images

    large = _png_claiming(tmp_path / "large.png", 9000, 9000)  # below Pillow's own bound, above ours
    _refused(lambda: predict_images(bundle, [large]), DataError, "9000x9000", "than the limit")


def test_float_tiff_of_unknown_range_is_refused(bundle: Path, tmp_path: Path) -> None:
    from PIL import Image

    from edgecompress.bundle import predict_images

    path = tmp_path / "f.tiff"
    Image.fromarray(np.ones((8, 8), np.float32), "F").save(path)
    _refused(
        lambda: predict_images(bundle, [path]),
        DataError,
        "whose range is unknown",
        case="predict-float-tiff",
        given="a float32 TIFF",
        how="edgecompress predict",
    )


# ------------------------------------------------------------------------------------------------------------- YAML
BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    ]
)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    from edgecompress.config import load_config

    path = write_yaml(tmp_path / "bomb.yaml", BOMB + "\n")
    assert path.stat().st_size < 1000
    _refused(lambda: load_config(path), ConfigError, "through YAML aliases (alias bomb?)")
    res = cli("validate", str(path), timeout=60)  # the old code took > 90 s and GBs here
    line = one_error_line(res, 2)
    record("config", "yaml-alias-bomb", "a 700-byte YAML 'billion laughs' alias bomb", "edgecompress validate", "2",
           line)  # fmt: skip


def test_yaml_too_many_aliases_recursive_alias_and_size(tmp_path: Path) -> None:
    from edgecompress.config import load_config

    many = write_yaml(tmp_path / "many.yaml", "a: &a 1\nb: [" + ", ".join(["*a"] * 1500) + "]\n")
    _refused(lambda: load_config(many), ConfigError, "more than 1000 YAML aliases")
    recursive = write_yaml(tmp_path / "rec.yaml", "a: &a [*a]\n")
    _refused(lambda: load_config(recursive), ConfigError, "recursive YAML alias")
    big = write_yaml(tmp_path / "big.yaml", "x: " + "y" * (2 << 20) + "\n")
    _refused(lambda: load_config(big), ConfigError, "more than a config holds")
