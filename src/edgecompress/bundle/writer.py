"""Write an app bundle (a folder, optionally zipped): model files, manifest with checksums, a standalone runner.

Layout of ``out_dir/<name>/``::

    manifest.json          what the model is and how to run it (see :mod:`edgecompress.bundle.manifest`)
    SHA256SUMS             sha256 of every other file, manifest included, sorted (``sha256sum -c SHA256SUMS``)
    manifest.schema.json   JSON Schema of the manifest
    model/...              the artifact's files (an OpenVINO .xml/.bin pair, an .onnx + external data, ...)
    run.py                 standalone example runner (numpy + the runtime + Pillow), when include_runner
    requirements.txt       what run.py needs
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgecompress._io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    ledger_record,
    make_temp_dir,
    sha256_file,
)
from edgecompress.bundle.manifest import (
    MANIFEST_NAME,
    SCHEMA_NAME,
    SCHEMA_VERSION,
    SUMS_NAME,
    Manifest,
    now_iso,
    parse_manifest,
)
from edgecompress.bundle.sign import SIG_NAME
from edgecompress.errors import BundleError, ResourceError

log = logging.getLogger(__name__)

MODEL_DIR = "model"
RUNNER_NAME = "run.py"
REQUIREMENTS_NAME = "requirements.txt"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# fixed zip metadata so that the same bundle gives the same bytes
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = 0o644 << 16

# pip requirement lines per runtime name, for the runner's requirements.txt
RUNTIME_REQUIREMENTS: dict[str, list[str]] = {
    "onnxruntime": ["onnxruntime>=1.16"],
    "openvino": ["openvino>=2024.0"],
    "tensorrt": ["tensorrt>=10.0", "cuda-python>=12"],
    "executorch": ["executorch>=1.0"],
}


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe folder name for a bundle, else raise :class:`BundleError`."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
        raise BundleError(
            f"bundle name {name!r} is not a safe folder name",
            "use letters, digits, '.', '_' or '-' (at most 128 characters, starting with a letter or digit)",
        )
    return name


def _collect(files: list[Path], model_file: Path) -> tuple[dict[str, Path], str]:
    """Map each artifact file to its path under ``model/``; return (mapping, relative path of the model file)."""
    sources: list[Path] = []
    for f in [Path(p) for p in files] + [Path(model_file)]:
        if f.is_symlink() or (f.is_dir() and any(p.is_symlink() for p in f.rglob("*"))):
            raise BundleError(f"artifact file {f} is or holds a symbolic link", "bundle real files only")
        if f.is_dir():
            sources.extend(sorted(p for p in f.rglob("*") if p.is_file()))
        elif f.is_file():
            sources.append(f)
        else:
            raise BundleError(f"artifact file {f} does not exist", "run the export stage again, then bundle")
    sources = [p.resolve() for p in dict.fromkeys(sources)]
    root = Path(os.path.commonpath([str(p.parent) for p in sources]))
    mapping = {f"{MODEL_DIR}/{p.relative_to(root).as_posix()}": p for p in sources}
    model_rel = f"{MODEL_DIR}/{Path(model_file).resolve().relative_to(root).as_posix()}"
    if model_rel not in mapping:
        raise BundleError(f"model file {model_file} is a folder", "give the file the runtime loads (.onnx, .xml, ...)")
    return mapping, model_rel


def _tool_versions() -> dict[str, str]:
    import numpy

    from edgecompress import __version__

    return {"edgecompress": __version__, "python": platform.python_version(), "numpy": numpy.__version__}


def _get(obj: Any, key: str) -> Any:
    """``obj[key]`` for mappings (artifact dicts), ``obj.key`` otherwise; None when absent."""
    if obj is None:
        return None
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _normalize_fields(fields: dict[str, Any], artifact: Any, model_rel: str) -> dict[str, Any]:
    """Fill ``model`` from the artifact and the shortcuts; accept ``metrics.latency_ms`` for ``latency_p50_ms``."""
    fields = dict(fields)
    model = dict(fields.pop("model", None) or {})
    for key in ("format", "precision", "runtime"):
        if model.get(key) is None and _get(artifact, key) is not None:
            model[key] = _get(artifact, key)
    model["file"] = model_rel
    input_shape = fields.pop("input_shape", None)
    input_name = fields.pop("input_name", "input")
    output_kind = fields.pop("output_kind", "logits")
    output_name = fields.pop("output_name", output_kind)
    if "input" not in model and input_shape is not None:
        shape = list((_get(artifact, "info") or {}).get("input_shape") or ["batch", *input_shape])
        model["input"] = {"names": [input_name], "shape": shape, "dtype": "float32", "layout": "NCHW"}
    if "output" not in model:
        folded = bool((fields.get("temperature") or {}).get("folded", True))
        model["output"] = {"name": output_name, "kind": output_kind, "calibrated": folded}
    fields["model"] = model
    metrics = dict(fields.get("metrics") or {})
    if "latency_ms" in metrics and "latency_p50_ms" not in metrics:
        lat = metrics.pop("latency_ms") or {}
        metrics["latency_p50_ms"] = {str(b): (v["p50"] if isinstance(v, Mapping) else v) for b, v in lat.items()}
    fields["metrics"] = metrics
    fields["tool_versions"] = {**_tool_versions(), **dict(fields.get("tool_versions") or {})}
    fields.setdefault("created", now_iso())
    for key in ("schema_version", "name", "files"):
        fields.pop(key, None)
    return fields


def write_bundle(
    artifact: Any = None,
    *,
    name: str | None = None,
    files: list[Path] | None = None,
    model_file: Path | None = None,
    manifest_fields: dict[str, Any],
    out_dir: Path,
    include_runner: bool = True,
) -> Path:
    """Write the bundle folder ``out_dir/<name>/`` atomically and return its path.

    The folder is built in a temporary sibling and renamed into place, so a reader never sees half a bundle; an
    existing bundle of the same name is replaced.

    Args:
        artifact: optional export ``Artifact`` or artifact dict (``name``, ``files``, ``model_file``, ``format``,
            ``precision``, ``runtime``, ``info``); fills ``name``/``files``/``model_file`` and the model fields not
            given.
        name: bundle (folder) name.
        files: every file of the artifact (folders are taken recursively); copied under ``model/``.
        model_file: the file the runtime loads; must be among ``files`` (it is added when missing).
        manifest_fields: the manifest's fields except ``schema_version``, ``name``, ``files`` and ``model.file``,
            which are filled in here (``created`` and ``tool_versions`` default to now and this environment).
            Instead of ``model.input`` / ``model.output`` the shortcuts ``input_shape`` ((C, H, W); batch is
            symbolic unless ``artifact.info["input_shape"]`` fixes it), ``input_name`` ("input"), ``output_kind``
            ("logits") and ``output_name`` (= kind) may be given; ``metrics.latency_ms`` ({batch: p50 or stats}) is
            accepted for ``metrics.latency_p50_ms``.
        out_dir: parent folder of the bundle.
        include_runner: add ``run.py`` and ``requirements.txt``.

    Raises:
        BundleError: missing files, an unsafe name or manifest fields that do not validate.
        ResourceError: the output folder cannot be written.
    """
    if artifact is not None:
        name = name or _get(artifact, "name")
        files = files if files is not None else list(_get(artifact, "files") or [])
        model_file = model_file or _get(artifact, "model_file")
    if name is None or model_file is None:
        raise BundleError("write_bundle needs a name and a model_file", "pass an Artifact or name= and model_file=")
    check_name(name)
    mapping, model_rel = _collect(list(files or []), Path(model_file))

    fields = _normalize_fields(manifest_fields, artifact, model_rel)
    # fail fast, before copying large model files, when the fields do not validate
    parse_manifest({"schema_version": SCHEMA_VERSION, "name": name, **fields, "files": {}}, source="manifest_fields")

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(out_dir, f".{name}.", ".tmp")
    except OSError as exc:
        raise ResourceError(
            f"cannot write bundle folder in {out_dir} ({exc.strerror})", "choose a writable out_dir"
        ) from None
    try:
        for rel, src in mapping.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        atomic_write_json(tmp / SCHEMA_NAME, Manifest.model_json_schema())
        if include_runner:
            runtime = str(fields["model"].get("runtime", ""))
            atomic_write_text(tmp / RUNNER_NAME, runner_source())
            reqs = ["numpy>=1.24", "pillow>=10", *RUNTIME_REQUIREMENTS.get(runtime, [])]
            atomic_write_text(tmp / REQUIREMENTS_NAME, "\n".join(reqs) + "\n")
        digests = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = parse_manifest(
            {"schema_version": SCHEMA_VERSION, "name": name, **fields, "files": digests}, source="manifest_fields"
        )
        atomic_write_text(tmp / MANIFEST_NAME, json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
        atomic_write_text(tmp / SUMS_NAME, sums_text(tmp))
        _publish_modes(tmp)
        final = out_dir / name
        ledger_record(final, "made")
        _replace_dir(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ResourceError(
            f"cannot write bundle {name} in {out_dir} ({exc})", "free disk space or fix permissions"
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%d files)", final, len(digests) + 1)
    return final


def _publish_modes(folder: Path) -> None:
    """Temp files and folders are private (0600/0700); a bundle is meant to be shared: 0644 files, 0755 folders."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed after."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old.{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        ledger_record(old, "temp")  # a kill before the rmtree below leaves it; the next run's sweep removes it
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sums_text(folder: Path) -> str:
    """``SHA256SUMS`` of a bundle folder: ``<sha256>  <relative path>`` for every file but itself and its signature,
    sorted by path, the form ``sha256sum -c`` reads."""
    rels = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return "".join(f"{sha256_file(folder / rel)}  {rel}\n" for rel in rels if rel not in (SUMS_NAME, SIG_NAME))


def runner_source() -> str:
    """The source of the standalone ``run.py`` put in bundles."""
    return (Path(__file__).with_name("runner_script.py")).read_text(encoding="utf-8")


def zip_bundle(bundle_dir: Path, out_path: Path | None = None) -> Path:
    """Zip a bundle folder deterministically (sorted entries, fixed timestamps and modes), written atomically.

    Entries are ``<name>/<relative path>``, so unzipping gives the bundle folder. Returns the zip path
    (default ``<bundle_dir>.zip``).
    """
    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST_NAME).is_file():
        raise BundleError(
            f"{bundle_dir} is not a bundle folder (no {MANIFEST_NAME})", "write it with write_bundle first"
        )
    out_path = Path(out_path) if out_path is not None else bundle_dir.with_name(bundle_dir.name + ".zip")
    entries = sorted(p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file())
    ledger_record(out_path, "made")
    with atomic_path(out_path) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for rel in entries:
            info = zipfile.ZipInfo(f"{bundle_dir.name}/{rel}", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _ZIP_MODE
            info.create_system = 3
            big = (bundle_dir / rel).stat().st_size >= 1 << 31
            with open(bundle_dir / rel, "rb") as fh, zf.open(info, "w", force_zip64=big) as dst:
                shutil.copyfileobj(fh, dst, 1 << 20)
    log.info("wrote %s (%d entries)", out_path, len(entries))
    return out_path
