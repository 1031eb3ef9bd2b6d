"""TorchScript and ``torch.export`` (``.pt2``) archives checked before loading, so that no pickled object can run.

``torch.jit.load`` and ``torch.export.load`` read pickles from the archive: TorchScript's ``data.pkl`` and
``constants.pkl`` (through PyTorch's own C++ unpickler), and a ``.pt2``'s sample inputs, pickled weights and constants
(through ``torch.load``, falling back to ``weights_only=False`` when the safe load fails, and plain ``pickle.loads``
for "opaque" objects). A crafted archive can put a pickled ``os.system`` call in any of them.

:func:`read_checked` reads the archive once into memory (the bytes that are checked are the bytes that are loaded),
then refuses it unless every pickle in it is weights-only:

- every nested ``torch.save`` payload (``*.pt`` entries, embedded zips, the ``.pt2`` payloads marked ``use_pickle``)
  loads with ``torch.load(weights_only=True)``, so the loader's unsafe fallback is never reached;
- every raw pickle (``*.pkl``, ``*.debug_pkl``) is read opcode by opcode, without running it, and may name only the
  classes a TorchScript archive holds (``__torch__.*`` classes compiled from the archive's own TorchScript code,
  ``torch._utils._rebuild_*``, ``torch.*Storage``, ``collections.OrderedDict``, ``torch.jit._pickle.*``);
- pickled custom / opaque objects, compiled AOTInductor, ExecuTorch or MTIA payloads and shared libraries are refused.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path, PurePosixPath

from edgecompress.errors import CheckpointError

MAX_ARCHIVE_BYTES = 16 << 30
_NATIVE_DIRS = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
_NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".cubin", ".fatbin")
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
_FIX = "re-save it from trusted code with torch.save(model.state_dict(), path) and give teacher.model"


def read_checked(path: Path, kind: str) -> bytes:
    """The bytes of the TorchScript (``kind="torchscript"``) or ``.pt2`` (``"export"``) archive at ``path``, after
    checking that no pickle in it can run code.

    Raises:
        CheckpointError: the archive holds a pickle that is not weights-only, pickled objects, native code, or it is
            not a readable zip; one line naming the entry.
    """
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise CheckpointError(f"{path} is {size} bytes, more than a teacher archive holds", _FIX)
    data = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_entries(zf, path, kind)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path} is not a readable archive ({exc})", _FIX) from None
    return data


def _check_entries(zf: zipfile.ZipFile, path: Path, kind: str) -> None:
    names = zf.namelist()
    use_pickle = _pickled_payloads(zf, names, path)
    for name in names:
        inner = name.split("/", 1)[1] if "/" in name else name  # archives keep their entries under one folder
        base = PurePosixPath(inner).name
        if inner.startswith(_NATIVE_DIRS) or base.lower().endswith(_NATIVE_SUFFIXES):
            _refuse(path, name, "holds compiled native code")
        if base.startswith(_OBJECT_PREFIXES):
            _refuse(path, name, "holds pickled Python objects")
        blob = zf.read(name)
        if blob.startswith(b"PK\x03\x04") or base.endswith(".pt") or name in use_pickle:
            _check_weights_only(blob, path, name)
        elif base.endswith(("pkl", ".pickle")):
            _check_raw_pickle(blob, path, name)


def _pickled_payloads(zf: zipfile.ZipFile, names: list[str], path: Path) -> set[str]:
    """Entries a ``.pt2``'s weight / constant configs mark ``use_pickle`` (read with ``torch.load``); a payload name
    that is not a plain file name is refused (it could name an entry this check would not look at)."""
    found: set[str] = set()
    for name in names:
        if not name.endswith(("_weights_config.json", "_constants_config.json")):
            continue
        try:
            config = json.loads(zf.read(name)).get("config", {})
        except (ValueError, AttributeError):
            continue
        folder = name.rsplit("/", 1)[0]
        for meta in config.values() if isinstance(config, dict) else []:
            payload = meta.get("path_name") if isinstance(meta, dict) else None
            if not isinstance(payload, str) or payload in ("", ".", "..") or "/" in payload or "\\" in payload:
                _refuse(path, name, f"names the payload {payload!r}, which is not a plain entry name")
            if meta.get("use_pickle"):
                found.add(f"{folder}/{payload}")
    return found


def _check_weights_only(blob: bytes, path: Path, name: str) -> None:
    import torch

    try:
        torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, ...)
        from edgecompress.models.checkpoint import refusal_detail

        _refuse(path, name, f"is a pickle that torch.load(weights_only=True) refuses ({refusal_detail(exc)})")


def _allowed_global(module: str, name: str) -> bool:
    """What a TorchScript pickle may name: its own compiled classes and PyTorch's tensor rebuilders."""
    if module == "__torch__" or module.startswith("__torch__.") or module == "torch.jit._pickle":
        return True
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module == "torch":
        return name.endswith("Storage") or name in ("device", "Size")
    return (module, name) == ("collections", "OrderedDict")


def _check_raw_pickle(blob: bytes, path: Path, name: str) -> None:
    """Read the pickle's opcodes (nothing runs) and refuse any global it would import outside the allowed set."""
    try:
        for op, arg, _ in pickletools.genops(blob):
            if op.name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if not _allowed_global(module, attr):
                    _refuse(path, name, f"is a pickle that imports {module}.{attr}, not only weights")
            elif op.name == "STACK_GLOBAL":
                _refuse(path, name, "is a pickle that imports a name computed at load time, not only weights")
    except (ValueError, IndexError, EOFError) as exc:  # not a well-formed pickle: no loader should read it either
        _refuse(path, name, f"is a damaged pickle ({exc})")


def _refuse(path: Path, name: str, why: str) -> None:
    raise CheckpointError(f"{path}: the archive entry {name!r} {why}; it is refused, never unpickled", _FIX)
