"""Verify bundles (schema, version, SHA256SUMS over every file, no links, no unlisted files, no ONNX external data) and
unzip them safely (zip-slip, zip-bomb and malformed-entry bounds).

A bundle received from elsewhere is data: verifying it reads only files inside it, imports nothing it names, and
fails on anything that is not a listed regular file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from edgecompress._contain import contained
from edgecompress._io import make_temp_dir, sha256_file
from edgecompress.bundle.manifest import MANIFEST_NAME, SUMS_NAME, Manifest, check_relative, read_manifest
from edgecompress.bundle.sign import SIG_NAME, verify_signature
from edgecompress.errors import BundleError

log = logging.getLogger(__name__)

# files a runtime could load: an unlisted one in a bundle means it was tampered with or mixed up
MODEL_SUFFIXES = frozenset(
    {".onnx", ".ort", ".xml", ".bin", ".engine", ".plan", ".trt", ".pte", ".data", ".pt", ".pth"}
)
MAX_FILES = 10_000
MAX_TOTAL_BYTES = 8 << 30  # 8 GiB unpacked
MAX_RATIO = 1000  # uncompressed / compressed, per entry of at least RATIO_MIN_BYTES
RATIO_MIN_BYTES = 64 << 10
MAX_TOTAL_RATIO = 100  # the whole archive; model weights compress about 1.1:1
MAX_NAME_BYTES = 255  # per path component, the common file-system limit
MAX_PATH_BYTES = 1024
MAX_SUMS_BYTES = 4 << 20
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_SUM_LINE = re.compile(r"^([0-9a-f]{64})  (.+)$")
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
    if len(name.encode("utf-8")) > MAX_PATH_BYTES or any(len(p.encode("utf-8")) > MAX_NAME_BYTES for p in parts):
        raise BundleError(f"zip entry '{name[:60]}...' has a name longer than a file system allows", _FIX)
    if info.flag_bits & 0x1:
        raise BundleError(f"zip entry '{name}' is encrypted; bundles are never encrypted", _FIX)
    if info.compress_type not in _METHODS:
        raise BundleError(f"zip entry '{name}' uses an unknown compression method ({info.compress_type})", _FIX)


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    max_files: int = MAX_FILES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Extract ``zip_path`` into the new folder ``dest`` after checking every entry; return ``dest``.

    Refuses absolute paths, ``..`` components, links, duplicate names, more than ``max_files`` entries, more than
    ``max_total_bytes`` unpacked (counted while writing, not trusted from the header), entries of 64 KiB or more
    compressed more than 1000:1, archives compressed more than 100:1 overall, encrypted entries, unknown compression
    methods and over-long names; a bad CRC or truncated data fails in one line. Extraction goes to a temporary sibling
    renamed to ``dest`` at the end.

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
        declared = compressed = 0
        for info in infos:
            _check_member(info)
            key = PurePosixPath(info.filename.replace("\\", "/")).as_posix().lower()
            if key in seen:
                raise BundleError(f"zip entry '{info.filename}' appears twice", _FIX)
            seen.add(key)
            declared += info.file_size
            compressed += info.compress_size
            if info.file_size >= RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                raise BundleError(
                    f"zip entry '{info.filename}' is compressed more than {MAX_RATIO}:1 (zip bomb?)", _FIX
                )
        if declared > max_total_bytes:
            raise BundleError(f"{zip_path} unpacks to {declared} bytes (limit {max_total_bytes}; zip bomb?)", _FIX)
        if declared >= 16 << 20 and declared > MAX_TOTAL_RATIO * max(compressed, 1):
            raise BundleError(
                f"{zip_path} unpacks to {declared} bytes from {compressed} (more than {MAX_TOTAL_RATIO}:1; zip bomb?)",
                _FIX,
            )

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(dest.parent, f".{dest.name}.", ".tmp")
        try:
            try:
                _extract_all(zf, infos, tmp, max_total_bytes)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
                if isinstance(exc, BundleError):
                    raise
                text = " ".join(str(exc).split()) or type(exc).__name__
                raise BundleError(f"{zip_path} has a damaged or unsupported entry ({text[:200]})", _FIX) from None
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


def _extract_all(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path, limit: int) -> None:
    written = 0
    for info in infos:
        target = contained(root, info.filename.replace("\\", "/"), what=f"zip entry '{info.filename}' (zip-slip)",
                           error=BundleError, fix=_FIX, label="the extraction folder")  # fmt: skip
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        entry = 0
        with zf.open(info) as src, open(target, "xb") as dst:
            while block := src.read(1 << 20):
                written += len(block)
                entry += len(block)
                if written > limit:
                    raise BundleError(f"zip unpacks to more than {limit} bytes (zip bomb?)", _FIX)
                if entry > info.file_size:
                    raise BundleError(f"zip entry '{info.filename}' holds more bytes than its header says", _FIX)
                dst.write(block)


def check_bundle_path(path: Path) -> None:
    """Refuse, before opening it, a bundle path that does not exist or is neither a folder nor a regular file (a FIFO
    would block the reader forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise BundleError(f"bundle {path} does not exist", "give the path of a bundle folder or .zip") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise BundleError(f"bundle {path} is not a regular file or folder", "give the path of a bundle folder or .zip")


def find_bundle_root(folder: Path) -> Path:
    """The folder holding ``manifest.json``: ``folder`` itself or its single subfolder (an unzipped bundle)."""
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if len(subs) == 1 and (subs[0] / MANIFEST_NAME).is_file():
        return subs[0]
    raise BundleError(f"no {MANIFEST_NAME} in {folder}", "point at a bundle folder or .zip written by edgecompress")


def _walk_files(bundle_dir: Path) -> list[str]:
    """Relative paths of every file in the bundle; any link or special file fails."""
    rels: list[str] = []
    for folder, dirs, files in os.walk(bundle_dir):  # followlinks=False: a linked folder is listed, not entered
        for name in sorted([*dirs, *files]):
            path = Path(folder) / name
            rel = path.relative_to(bundle_dir).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"bundle entry '{rel}' is a symbolic link; bundles never contain links", _FIX)
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleError(f"bundle entry '{rel}' is not a regular file or folder", _FIX)
            if stat.S_ISREG(mode):
                rels.append(rel)
            if len(rels) > MAX_FILES:
                raise BundleError(f"bundle {bundle_dir} has more than {MAX_FILES} files", _FIX)
    return sorted(rels)


def read_sums(bundle_dir: Path) -> dict[str, str]:
    """Parse ``SHA256SUMS`` (``<sha256>  <relative path>`` lines) into path -> digest."""
    path = bundle_dir / SUMS_NAME
    if not path.is_file():
        raise BundleError(
            f"bundle {bundle_dir} has no {SUMS_NAME} (written by an older edgecompress, or stripped)",
            "rebuild the bundle with this edgecompress",
        )
    if path.stat().st_size > MAX_SUMS_BYTES:
        raise BundleError(f"{path} is larger than a bundle's checksum list (limit {MAX_SUMS_BYTES} bytes)", _FIX)
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        m = _SUM_LINE.match(line)
        if not m:
            raise BundleError(f"{path} line {n} is not '<sha256>  <path>'", _FIX)
        digest, rel = m.groups()
        try:
            check_relative(rel)
        except ValueError as exc:
            raise BundleError(f"{path} line {n}: {exc}", _FIX) from None
        if rel in sums or rel == SUMS_NAME:
            raise BundleError(f"{path} lists '{rel}' twice or lists itself", _FIX)
        sums[rel] = digest
    return sums


def _external_data(path: Path) -> list[str]:
    """Locations of the external-data tensors an ONNX file references (empty when it holds its weights)."""
    from edgecompress._lazy import require

    require("onnx", "verifying ONNX bundles")
    from onnx import external_data_helper, load

    try:
        model = load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (not ONNX at all: no runtime reads external data through it either)
        return []
    found = []
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            info = {e.key: e.value for e in tensor.external_data}
            found.append(info.get("location", "?"))
    return found


def _may_be_onnx(path: Path, rel: str, model_file: str) -> bool:
    """Whether a runtime could read ``rel`` as ONNX: ``.onnx`` files, and the model file or any ``.xml`` whose content
    is not XML (OpenVINO reads an ONNX file whatever its name, external data included)."""
    if rel.lower().endswith(".onnx"):
        return True
    if rel != model_file and not rel.lower().endswith(".xml"):
        return False
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return not head.startswith(b"<")


def verify_dir(bundle_dir: Path, *, allowed_signers: Path | None = None, identity: str | None = None) -> Manifest:
    """Verify an unpacked bundle folder and return its manifest.

    Every file, ``manifest.json`` included, must be listed in ``SHA256SUMS`` with its sha256, and every listed file
    present; no links, no special files, no unlisted files; the manifest's ``files`` agree with ``SHA256SUMS``; ONNX
    models hold their weights (no external-data references, which a runtime would read from anywhere). With
    ``allowed_signers`` and ``identity``, ``SHA256SUMS.sig`` must verify too (:mod:`edgecompress.bundle.sign`); it is
    the one file ``SHA256SUMS`` cannot list.
    """
    bundle_dir = Path(bundle_dir)
    if bundle_dir.is_symlink():
        raise BundleError(f"bundle folder {bundle_dir} is a symbolic link", "give the bundle folder itself")
    present = [rel for rel in _walk_files(bundle_dir) if rel not in (SUMS_NAME, SIG_NAME)]
    sums = read_sums(bundle_dir)
    unlisted = [rel for rel in present if rel not in sums]
    if unlisted:
        raise BundleError(f"bundle has a file not listed in {SUMS_NAME}: '{unlisted[0]}'", _FIX)
    missing = [rel for rel in sums if rel not in set(present)]
    if missing:
        raise BundleError(f"bundle file '{missing[0]}' is missing from {bundle_dir}", _FIX)
    for rel in present:
        if sha256_file(bundle_dir / rel) != sums[rel]:
            raise BundleError(
                f"bundle file '{rel}' does not match its sha256 in {SUMS_NAME} (changed or corrupt)", _FIX
            )
    manifest = read_manifest(bundle_dir)
    if manifest.model.file not in manifest.files:
        raise BundleError(f"the model file '{manifest.model.file}' is not listed in the manifest's files", _FIX)
    for rel, digest in manifest.files.items():
        if sums.get(rel) != digest:
            raise BundleError(
                f"bundle file '{rel}' does not match its sha256 in the manifest (changed or corrupt)", _FIX
            )
    for rel in present:
        if rel not in manifest.files and rel != MANIFEST_NAME:
            raise BundleError(f"bundle file '{rel}' is not listed in the manifest's files", _FIX)
        if _may_be_onnx(bundle_dir / rel, rel, manifest.model.file):
            ext = _external_data(bundle_dir / rel)
            if ext:
                raise BundleError(
                    f"bundle model '{rel}' references external data ('{ext[0]}'); bundles hold their weights inline",
                    _FIX,
                )
    if allowed_signers is not None or identity is not None:
        if allowed_signers is None or not identity:
            raise BundleError("checking a signature needs both allowed_signers and identity", "give both, or neither")
        verify_signature(bundle_dir, allowed_signers, identity)
    return manifest


def verify_bundle(path: Path, *, allowed_signers: Path | None = None, identity: str | None = None) -> Manifest:
    """Verify a bundle folder or ``.zip`` (extracted safely to a temporary folder) and return its manifest.

    Raises:
        BundleError: one line: malformed or newer manifest, missing, changed or unlisted file, a link, ONNX external
            data, an unsafe or damaged zip, a signature that does not verify (when ``allowed_signers`` is given).
    """
    path = Path(path)
    check_bundle_path(path)
    if path.is_dir():
        return verify_dir(find_bundle_root(path), allowed_signers=allowed_signers, identity=identity)
    with tempfile.TemporaryDirectory(prefix="edgecompress-bundle-") as tmp:
        root = safe_extract(path, Path(tmp) / "x")
        return verify_dir(find_bundle_root(root), allowed_signers=allowed_signers, identity=identity)
