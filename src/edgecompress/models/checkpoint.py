"""Save and load state dicts safely (``weights_only=True``), resizing pruned layers to the shapes in the file.

A student cut by :func:`edgecompress.models.prune_to_ratio` has narrower Conv/BN/Linear layers than its family's
default; it is saved as a plain state dict and rebuilt from the family spec + the file: :func:`load_state` first
resizes those layers (parameters, buffers and their size attributes) to the file's shapes, then loads strictly.
That resizing is for students this tool pruned and saved; a user's teacher is loaded by
:func:`edgecompress.models.load_teacher`, which never resizes (a classifier of another size is refused).
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress._io import atomic_path
from edgecompress.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)


def state_hash(model: nn.Module) -> str:
    """sha256 over ``model.state_dict()``: every entry's name, dtype, shape and raw bytes (a checkpoint fingerprint).

    Tensors of any dtype (bf16 included) are hashed by their bytes; a non-tensor entry by its repr.
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        if not isinstance(value, torch.Tensor):
            h.update(repr(value).encode())
            continue
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        try:
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):  # a dtype without a byte view (quantized): its printed form
            h.update(repr(t).encode())
    return h.hexdigest()


def save_state(model: nn.Module, path: str | Path) -> None:
    """Write ``model.state_dict()`` to ``path`` atomically (temp file + rename)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # Lightning / the PyTorch tutorial / timm-style
_SAVE_FIX = (
    "in the code that defines the model, save torch.save(model.state_dict(), 'teacher.pt') (or a TorchScript / "
    "torch.export file) and point teacher.checkpoint at it"
)


def require_file(path: str | Path) -> Path:
    """``path`` as a Path when it is a regular file; else :class:`CheckpointError` (not found / a directory)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise CheckpointError(f"checkpoint {what}: {path}", "check the path (teacher.checkpoint)")
    return path


def refusal_detail(exc: BaseException) -> str:
    """What a ``torch.load(weights_only=True)`` refusal names: ``it references posix.system``, else its first line."""
    text = str(exc).strip()
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return f"it references {found.group(1)}"
    # torch's refusal is a paragraph: the line after "WeightsUnpickler error:" says what was wrong
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return reason.group(1).strip()[:160] if reason else (text.splitlines()[0][:160] if text else type(exc).__name__)


def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line :class:`CheckpointError` for every refusal."""
    import torch

    path = require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = refusal_detail(exc)
        raise CheckpointError(
            f"{path} was refused by torch.load(weights_only=True): it holds pickled Python objects, not only tensors "
            f"({detail}), e.g. a whole model saved with torch.save(model), which could run code when loaded",
            _SAVE_FIX,
        ) from None
    except Exception as exc:  # truncated zip, not a torch file, bad magic number
        raise CheckpointError(
            f"{path} is truncated or not a PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:160]})",
            "re-save it with torch.save(model.state_dict(), path)",
        ) from None


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict (raw, or under ``"state_dict"`` / ``"model_state_dict"`` / ``"model"``), weights only.

    Non-tensor entries beside the weights (optimizer state, epoch, hyper-parameters) are ignored when the weights sit
    under one of those keys; a raw state dict must hold tensors only.
    """
    import torch

    path = Path(path)
    obj = load_weights_only(path)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict", "save model.state_dict()")
    state = dict(obj)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{path}: entry {bad[0]!r} is not a tensor (keys: {_fmt(sorted(map(str, state)))})",
            "save model.state_dict() alone, or under one of the keys " + ", ".join(_WRAPPER_KEYS),
        )
    return state


def match_keys(state: dict[str, Any], own_keys: list[str]) -> dict[str, Any]:
    """``state`` with the prefix that wraps the model's own keys removed (``module.`` DDP, ``model.`` Lightning, …).

    The prefix is found from the model's first key: every prefix ``p`` with ``p + key`` in ``state`` is a candidate,
    the shortest one covering all keys wins (else the one covering most). Keys outside the prefix (a Lightning
    module's loss weights, an EMA copy) are dropped with a log line. Without an own key or a candidate, ``state``
    comes back unchanged.
    """
    own = set(own_keys)
    if not own_keys or own <= set(state):
        return state
    ref = own_keys[0]
    cands = sorted(
        {k[: len(k) - len(ref)] for k in state if k.endswith(ref) and (len(k) == len(ref) or k[-len(ref) - 1] == ".")},
        key=len,
    )
    if not cands:
        return state
    best = max(cands, key=lambda p: (sum(p + k in state for k in own), -len(p)))
    sub = {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}
    dropped = len(state) - len(sub)
    if best:
        log.info("checkpoint keys: removed the prefix %r%s", best, f" and dropped {dropped} other keys" * bool(dropped))
    return sub


def _fmt(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")


def _resize(model: nn.Module, state: dict[str, Any], path: Path) -> int:
    """Resize Conv2d / BatchNorm / Linear modules whose tensors in ``state`` have other shapes; return how many."""
    import torch
    from torch import nn

    resized = 0
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        tensors = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        differ = {
            k: state[prefix + k].shape
            for k, t in tensors.items()
            if t is not None and prefix + k in state and state[prefix + k].shape != t.shape
        }
        if not differ:
            continue
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            k, shape = next(iter(differ.items()))
            raise CheckpointError(
                f"{path}: {prefix + k} has shape {tuple(shape)}, the model has {tuple(tensors[k].shape)} "
                f"({type(module).__name__} cannot be resized)",
                "build the model with the architecture the checkpoint was saved from",
            )
        for k, t in tensors.items():
            if t is None or prefix + k not in state:
                continue
            new = torch.empty(state[prefix + k].shape, dtype=t.dtype, device=t.device)
            if k in module._parameters:
                module._parameters[k] = nn.Parameter(new, requires_grad=t.requires_grad)
            else:
                module._buffers[k] = new
        if isinstance(module, nn.Conv2d):
            out_ch, in_per_group = module.weight.shape[:2]
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.groups = int(out_ch) if depthwise else module.groups
            module.out_channels, module.in_channels = int(out_ch), int(in_per_group) * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = (int(v) for v in module.weight.shape)
        else:
            ref = module.running_mean if module.running_mean is not None else module.weight
            module.num_features = int(ref.shape[0])
        resized += 1
    return resized


def load_state(model: nn.Module, path: str | Path) -> nn.Module:
    """Load the state dict at ``path`` into ``model`` (resizing pruned layers to the file first); return ``model``.

    Raises:
        CheckpointError: missing, truncated or corrupt file; pickled code refused by ``weights_only``; keys that do
            not match the architecture (names the first few missing and unexpected ones).
    """
    path = Path(path)
    state = match_keys(read_state(path), list(model.state_dict()))
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        parts = [f"missing {_fmt(missing)}" if missing else "", f"unexpected {_fmt(unexpected)}" if unexpected else ""]
        raise CheckpointError(
            f"{path} does not match the model architecture: {'; '.join(p for p in parts if p)}",
            "build the model with the family/params (or factory) the checkpoint was saved from",
        )
    n = _resize(model, state, path)
    if n:
        log.info("resized %d layers of the model to the (pruned) shapes in %s", n, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit the model: {str(exc).splitlines()[-1].strip()[:200]}",
            "build the model with the architecture the checkpoint was saved from",
        ) from None
    return model
