"""Verify bundles (schema, version, checksums) and unzip them safely (zip-slip and zip-bomb bounds)."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from edgecompress._io import sha256_file
from edgecompress.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest
from edgecompress.errors import BundleError

log = logging.getLogger(__name__)

# files a runtime could load: an unlisted one in a bundle means it was tampered with or mixed up
MODEL_SUFFIXES = frozenset(
    {".onnx", ".ort", ".xml", ".bin", ".engine", ".plan", ".trt", ".pte", ".data", ".pt", ".pth"}
)
MAX_FILES = 10_000
MAX_TOTAL_BYTES = 8 << 30  # 8 GiB unpacked
MAX_RATIO = 1000  # uncompressed / compressed, per entry larger than 1 MiB
_FIX = "rebuild the bundle with edgecompress, or use the original"


def _is_link(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"zip entry '{name}' has an absolute path (zip-slip)", _FIX)
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise BundleError(f"zip entry '{name}' has a '..' component (zip-slip)", _FIX)
    if _is_link(info):
        raise BundleError(f"zip entry '{name}' is a symbolic link; bundles never contain links", _FIX)
    if "\x00" in name:
        raise BundleError(f"zip entry {name!r} has a NUL byte in its name", _FIX)


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Extract ``zip_path`` into the new folder ``dest`` after checking every entry; return ``dest``.

    Refuses absolute paths, ``..`` components, links, duplicate names, more than ``max_files`` entries, more than
    ``max_total_bytes`` unpacked (counted while writing, not trusted from the header) and entries compressed more than
    1000:1. Extraction goes to a temporary sibling renamed to ``dest`` at the end.

    Raises:
        BundleError: one line naming the offending entry.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"extraction folder {dest} is not empty", "give a new or empty folder")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{zip_path} is not a readable zip file ({exc})", _FIX) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > max_files:
            raise BundleError(f"{zip_path} has {len(infos)} entries (limit {max_files}; zip bomb?)", _FIX)
        seen: set[str] = set()
        declared = 0
        for info in infos:
            _check_member(info)
            key = PurePosixPath(info.filename.replace("\\", "/")).as_posix().lower()
            if key in seen:
                raise BundleError(f"zip entry '{info.filename}' appears twice", _FIX)
            seen.add(key)
            declared += info.file_size
            if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise BundleError(
                    f"zip entry '{info.filename}' is compressed more than {MAX_RATIO}:1 (zip bomb?)", _FIX
                )
        if declared > max_total_bytes:
            raise BundleError(f"{zip_path} unpacks to {declared} bytes (limit {max_total_bytes}; zip bomb?)", _FIX)

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
        try:
            _extract_all(zf, infos, tmp, max_total_bytes)
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _extract_all(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path, limit: int) -> None:
    root_resolved = root.resolve()
    written = 0
    for info in infos:
        target = (root / info.filename.replace("\\", "/")).resolve()
        if target != root_resolved and root_resolved not in target.parents:
            raise BundleError(f"zip entry '{info.filename}' would land outside the folder (zip-slip)", _FIX)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "xb") as dst:
            while block := src.read(1 << 20):
                written += len(block)
                if written > limit:
                    raise BundleError(f"zip unpacks to more than {limit} bytes (zip bomb?)", _FIX)
                dst.write(block)


def find_bundle_root(folder: Path) -> Path:
    """The folder holding ``manifest.json``: ``folder`` itself or its single subfolder (an unzipped bundle)."""
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if len(subs) == 1 and (subs[0] / MANIFEST_NAME).is_file():
        return subs[0]
    raise BundleError(f"no {MANIFEST_NAME} in {folder}", "point at a bundle folder or .zip written by edgecompress")


def verify_dir(bundle_dir: Path) -> Manifest:
    """Verify an unpacked bundle folder: manifest schema and version, every listed file present with its sha256, no
    unlisted model files. Returns the manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    if manifest.model.file not in manifest.files:
        raise BundleError(f"the model file '{manifest.model.file}' is not listed in the manifest's files", _FIX)
    for rel, digest in manifest.files.items():
        path = bundle_dir / rel
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"bundle file '{rel}' is missing from {bundle_dir}", _FIX)
        if sha256_file(path) != digest:
            raise BundleError(
                f"bundle file '{rel}' does not match its sha256 in the manifest (changed or corrupt)", _FIX
            )
    for path in sorted(bundle_dir.rglob("*")):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel == MANIFEST_NAME or rel in manifest.files or path.is_dir():
            continue
        if path.suffix.lower() in MODEL_SUFFIXES:
            raise BundleError(f"bundle has an unlisted model file '{rel}'", _FIX)
        log.warning("bundle %s has an unlisted file %s (ignored)", bundle_dir, rel)
    return manifest


def verify_bundle(path: Path) -> Manifest:
    """Verify a bundle folder or ``.zip`` (extracted safely to a temporary folder) and return its manifest.

    Raises:
        BundleError: one line: malformed or newer manifest, missing or changed file, unlisted model file, unsafe zip.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle {path} does not exist", "give the path of a bundle folder or .zip")
    if path.is_dir():
        return verify_dir(find_bundle_root(path))
    with tempfile.TemporaryDirectory(prefix="edgecompress-bundle-") as tmp:
        root = safe_extract(path, Path(tmp) / "x")
        return verify_dir(find_bundle_root(root))
