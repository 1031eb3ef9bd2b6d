"""Fashion-MNIST from its IDX files: strict parsing, a local search path, and a checksum-verified download.

Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017, arXiv 1708.07747): 60,000 training and 10,000 test grayscale 28x28
images of 10 clothing classes, stored as gzip-compressed IDX files.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from edgecompress._io import atomic_path, atomic_write_text, sha256_file
from edgecompress.errors import DataError

log = logging.getLogger(__name__)

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# file stem -> (IDX magic, expected count). Magic 0x0803 = unsigned byte, 3 dims; 0x0801 = unsigned byte, 1 dim.
FILES: dict[str, tuple[int, int]] = {
    "train-images-idx3-ubyte": (0x00000803, 60000),
    "train-labels-idx1-ubyte": (0x00000801, 60000),
    "t10k-images-idx3-ubyte": (0x00000803, 10000),
    "t10k-labels-idx1-ubyte": (0x00000801, 10000),
}

# MD5 of the official .gz files as published in the Fashion-MNIST README (the same values torchvision checks).
# Only downloads are checked against them: distribution packages (e.g. /usr/share/datasets) may recompress the
# files, so local copies are verified by strict IDX parsing (magic, dimensions, exact byte count) instead.
OFFICIAL_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

MIRRORS: list[str] = [
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
]
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets/fashion-mnist")]
DOWNLOAD_TIMEOUT_S = 15.0
INSTALL_FIX = (
    "apt-get install -y dataset-fashion-mnist, or set data.path / EDGECOMPRESS_DATA to a folder with the IDX files"
)


def cache_dir() -> Path:
    """Where downloads go: ``$XDG_CACHE_HOME/edgecompress/fashion-mnist`` (default ``~/.cache``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgecompress" / "fashion-mnist"


def search_dirs(path: Path | None) -> list[Path]:
    """The folders searched, in order: ``path``, ``$EDGECOMPRESS_DATA`` (and its ``fashion-mnist``), system, cache."""
    dirs: list[Path] = []
    if path is not None:
        dirs.append(Path(path))
    env = os.environ.get("EDGECOMPRESS_DATA")
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    return dirs + list(SYSTEM_DIRS) + [cache_dir()]


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def locate(path: Path | None) -> Path | None:
    """The first searched folder holding all four IDX files (gzip or not), else None.

    An explicit ``path`` must exist and hold the files: it is never silently replaced by another copy.
    """
    if path is not None and not Path(path).is_dir():
        raise DataError(f"Fashion-MNIST not found in {path}: data.path does not exist or is not a folder", INSTALL_FIX)
    for folder in search_dirs(path):
        found = [_find_file(folder, stem) for stem in FILES]
        if all(found):
            return folder
        if path is not None and folder == Path(path):
            missing = [stem for stem, f in zip(FILES, found, strict=True) if f is None]
            what = "Fashion-MNIST not found in" if not any(found) else "Fashion-MNIST folder"
            raise DataError(f"{what} {folder}: it lacks {', '.join(missing)} (.gz)", INSTALL_FIX)
    return None


def read_idx(path: Path, *, magic: int, count: int | None = None) -> np.ndarray:
    """Parse one IDX file (gzip or raw) strictly: magic number, dimensions, exact payload size.

    Args:
        path: the ``*-ubyte`` or ``*-ubyte.gz`` file.
        magic: the expected magic number (0x0803 images, 0x0801 labels).
        count: the expected number of items, if known.

    Returns:
        A uint8 array shaped by the header's dimensions.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"IDX file {path} is unreadable or truncated ({exc})", f"re-download it; {INSTALL_FIX}"
        ) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, header needs {header}", INSTALL_FIX)
    (got_magic,) = struct.unpack(">I", data[:4])
    if got_magic != magic:
        raise DataError(f"IDX file {path} has magic {got_magic:#010x}, expected {magic:#010x}", INSTALL_FIX)
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(data) != header + size:
        raise DataError(
            f"IDX file {path} is truncated or padded: header says {dims} ({header + size} bytes), file has {len(data)}",
            f"re-download it; {INSTALL_FIX}",
        )
    if count is not None and dims[0] != count:
        raise DataError(f"IDX file {path} holds {dims[0]} items, expected {count}", INSTALL_FIX)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def download(dest: Path) -> Path:
    """Fetch the four .gz files into ``dest`` (atomic writes, MD5-verified); record their SHA-256 in ``SHA256SUMS``."""
    dest.mkdir(parents=True, exist_ok=True)
    sums = []
    for name, md5 in OFFICIAL_MD5.items():
        target = dest / name
        if not (target.is_file() and _md5(target) == md5):
            _fetch_one(name, md5, target)
        sums.append(f"{sha256_file(target)}  {name}")
    atomic_write_text(dest / "SHA256SUMS", "\n".join(sums) + "\n")
    return dest


def _fetch_one(name: str, md5: str, target: Path) -> None:
    errors = []
    for base in MIRRORS:
        url = base + name
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:  # noqa: S310 (fixed https/http URLs)
                payload = resp.read()
        except (OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        got = hashlib.md5(payload).hexdigest()  # noqa: S324 (checksum, not security)
        if got != md5:
            errors.append(f"{url}: md5 {got} != {md5}")
            continue
        with atomic_path(target) as tmp:
            tmp.write_bytes(payload)
        log.info("downloaded %s", url)
        return
    raise DataError(f"could not download {name} ({'; '.join(errors)})", INSTALL_FIX)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324


def load_fashion_mnist(path: Path | None, *, allow_download: bool) -> tuple[np.ndarray, ...]:
    """Return ``(x_train, y_train, x_test, y_test)`` as uint8 ``[N,28,28]`` images and int64 labels."""
    folder = locate(path)
    if folder is None and allow_download:
        log.info("Fashion-MNIST not found locally; trying the public download into %s", cache_dir())
        try:
            folder = download(cache_dir())
        except DataError as exc:
            log.warning("Fashion-MNIST download failed: %s", exc.problem)
            folder = None
    if folder is None:
        where = ", ".join(str(d) for d in search_dirs(path))
        tried = " (download failed or unavailable)" if allow_download else " (download disabled)"
        raise DataError(f"Fashion-MNIST not found in {where}{tried}", INSTALL_FIX)
    log.info("Fashion-MNIST from %s", folder)
    arrays = []
    for stem, (magic, count) in FILES.items():
        arr = read_idx(_find_file(folder, stem), magic=magic, count=count)  # type: ignore[arg-type]
        arrays.append(arr.astype(np.int64) if magic == 0x00000801 else arr)
    x_train, y_train, x_test, y_test = arrays
    for y, stem in ((y_train, "train-labels"), (y_test, "t10k-labels")):
        if y.max() >= len(CLASSES):
            raise DataError(f"{stem} in {folder} has label {int(y.max())} (expected 0..9)", INSTALL_FIX)
    return x_train, y_train, x_test, y_test
