"""Sources: Fashion-MNIST IDX files (search path, strict parsing, verified download), image folders."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from edgecompress.data import DataConfig, fashion, load_splits
from edgecompress.errors import DataError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 | arr.ndim
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No system copy, an empty cache, no EDGECOMPRESS_DATA: only what the test puts in place is found."""
    monkeypatch.setattr(fashion, "SYSTEM_DIRS", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGECOMPRESS_DATA", raising=False)
    return tmp_path


@pytest.mark.skipif(
    not SYSTEM_FMNIST.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)
def test_fashion_mnist_from_system_folder(monkeypatch):
    monkeypatch.delenv("EDGECOMPRESS_DATA", raising=False)
    cfg = DataConfig(dataset="fashion-mnist", max_train=2000, max_test=500, calib_size=200, download=False)
    s = load_splits(cfg, seed=0)
    assert s.sizes() == {"train": 1600, "val": 200, "calib": 200, "test": 500}
    assert s.input_shape == (1, 28, 28) and s.labels[0] == "T-shirt/top" and s.labels[9] == "Ankle boot"
    assert s.preprocess.scale == pytest.approx(1 / 255)
    assert set(np.unique(s.test.y)) == set(range(10))
    # the test split is the official t10k set: its pixels are never in train/val/calib
    x_test = fashion.read_idx(SYSTEM_FMNIST / "t10k-images-idx3-ubyte.gz", magic=0x0803, count=10000)
    test_rows = {r.tobytes() for r in s.preprocess.apply(x_test[:, None]).reshape(10000, -1)}
    assert {r.tobytes() for r in np.asarray(s.test.x).reshape(500, -1)} <= test_rows


def test_not_found_is_one_line_with_fix(isolated):
    cfg = DataConfig(dataset="fashion-mnist", path=isolated / "empty", download=False)
    with pytest.raises(DataError, match="Fashion-MNIST not found") as err:
        load_splits(cfg, seed=0)
    msg = str(err.value)
    assert "\n" not in msg and "apt-get install -y dataset-fashion-mnist" in msg and "EDGECOMPRESS_DATA" in msg


def test_partial_folder_names_missing_file(isolated):
    folder = isolated / "fm"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 3, 3)))))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        fashion.locate(folder)


def test_idx_parse_truncated_and_bad_magic(tmp_path):
    arr = np.arange(5 * 4 * 4).reshape(5, 4, 4) % 256
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(fashion.read_idx(good, magic=0x0803, count=5), arr)
    raw = tmp_path / "raw-idx3-ubyte"  # un-gzipped files are accepted too
    raw.write_bytes(_idx_bytes(arr))
    np.testing.assert_array_equal(fashion.read_idx(raw, magic=0x0803), arr)

    short = tmp_path / "short-idx3-ubyte.gz"
    short.write_bytes(gzip.compress(_idx_bytes(arr)[:-7]))
    with pytest.raises(DataError, match="truncated") as err:
        fashion.read_idx(short, magic=0x0803)
    assert "\n" not in str(err.value)
    cut_gz = tmp_path / "cut-idx3-ubyte.gz"
    cut_gz.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        fashion.read_idx(cut_gz, magic=0x0803)
    with pytest.raises(DataError, match="magic"):
        fashion.read_idx(good, magic=0x0801)
    with pytest.raises(DataError, match="expected 60000"):
        fashion.read_idx(good, magic=0x0803, count=60000)


def _serve(folder: Path):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_download_verifies_md5_and_records_sha256(isolated, monkeypatch):
    """A real HTTP download from a local server: bad checksums are refused, good files land in the cache."""
    site = isolated / "site"
    site.mkdir()
    rng = np.random.default_rng(0)
    payloads = {
        "train-images-idx3-ubyte.gz": _idx_bytes(rng.integers(0, 256, (60000, 1, 1))),
        "train-labels-idx1-ubyte.gz": _idx_bytes(np.arange(60000) % 10),
        "t10k-images-idx3-ubyte.gz": _idx_bytes(rng.integers(0, 256, (10000, 1, 1))),
        "t10k-labels-idx1-ubyte.gz": _idx_bytes(np.arange(10000) % 10),
    }
    for name, data in payloads.items():
        (site / name).write_bytes(gzip.compress(data))
    server = _serve(site)
    try:
        monkeypatch.setattr(fashion, "MIRRORS", [f"http://127.0.0.1:{server.server_port}/"])
        with pytest.raises(DataError, match="md5"):  # the official checksums do not match these files
            fashion.download(isolated / "dl")
        assert not (isolated / "dl" / "train-images-idx3-ubyte.gz").exists()
        md5 = {n: hashlib.md5((site / n).read_bytes()).hexdigest() for n in payloads}  # noqa: S324
        monkeypatch.setattr(fashion, "OFFICIAL_MD5", md5)
        x, y, xt, yt = fashion.load_fashion_mnist(None, allow_download=True)
    finally:
        server.shutdown()
    cache = fashion.cache_dir()
    assert x.shape == (60000, 1, 1) and yt.shape == (10000,) and y.dtype == np.int64
    sums = (cache / "SHA256SUMS").read_text()
    assert hashlib.sha256((cache / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest() in sums


def test_download_unreachable_gives_not_found(isolated, monkeypatch):
    monkeypatch.setattr(fashion, "MIRRORS", ["http://127.0.0.1:9/"])  # discard port: connection refused
    with pytest.raises(DataError, match="download failed"):
        load_splits(DataConfig(dataset="fashion-mnist"), seed=0)


def _write_folder(root: Path, sizes=((6, 5),), mode="L", per_class=6, classes=("cat", "dog")):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{k}_{i}.png")


def test_folder_source(tmp_path):
    _write_folder(tmp_path / "imgs", mode="RGB", classes=("zebra", "ant"))
    s = load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1, test_fraction=0.25), seed=0)
    assert s.labels == ["ant", "zebra"] and s.input_shape == (3, 6, 5)
    assert sum(s.sizes().values()) == 12 and s.sizes()["test"] == 3


def test_folder_sizes_differ_needs_image_size(tmp_path):
    _write_folder(tmp_path / "imgs", sizes=((6, 5), (7, 7)))
    with pytest.raises(DataError, match="differ in size") as err:
        load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1), seed=0)
    assert "image_size" in str(err.value) and ".png" in str(err.value)
    s = load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1, image_size=(8, 8)), seed=0)
    assert s.input_shape == (1, 8, 8)


def test_folder_errors(tmp_path):
    (tmp_path / "emptyroot").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_splits(DataConfig(dataset="folder", path=tmp_path / "emptyroot"), seed=0)
    _write_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(DataError, match="only one class"):
        load_splits(DataConfig(dataset="folder", path=tmp_path / "one", calib_size=1), seed=0)
    with pytest.raises(DataError, match="not found"):
        load_splits(DataConfig(dataset="folder", path=tmp_path / "nope"), seed=0)
    _write_folder(tmp_path / "bad")
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_splits(DataConfig(dataset="folder", path=tmp_path / "bad", calib_size=1), seed=0)
