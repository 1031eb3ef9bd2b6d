"""Build a model from a :class:`ModelSpec`, and count its parameters and multiply-accumulates.

Trust: a factory ``"pkg.mod:fn"`` runs code, so it is imported only when ``pkg.mod`` or a parent package of it is in
``trusted_modules`` (the config's ``trust_factories`` or ``--trust-factory``). Modules that load or run other code
(``torch.hub``, ``os``, ``subprocess``, ``importlib``, ``builtins``, …) are refused even when listed.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from edgecompress.errors import ModelError
from edgecompress.models.config import ModelSpec

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

# Never imported as a factory, whatever the trust list says: they import, download or run other code.
DENIED_MODULES = frozenset(
    {
        "builtins", "code", "codeop", "ctypes", "importlib", "marshal", "multiprocessing", "os", "pathlib", "pickle",
        "pkgutil", "posix", "pty", "runpy", "shelve", "shutil", "socket", "subprocess", "sys", "tempfile",
        "torch.hub", "torch.package", "torch.utils.cpp_extension", "torch.jit", "torch.serialization", "dill",
        "cloudpickle", "joblib", "zipimport", "urllib", "http", "requests", "webbrowser", "edgecompress",
    }
)  # fmt: skip
_TRUST_FIX = "add it to trust_factories in the config or pass --trust-factory {mod}"


def _covers(parent: str, module: str) -> bool:
    return module == parent or module.startswith(parent + ".")


def check_factory_trust(factory: str, trusted_modules: Collection[str]) -> str:
    """The module of ``factory`` ("pkg.mod:fn") when it may be imported; else :class:`ModelError` with the fix."""
    mod_name = factory.partition(":")[0]
    trusted = [str(t).partition(":")[0].strip() for t in trusted_modules]  # "pkg.mod:fn" names its module
    denied = next((d for d in sorted(DENIED_MODULES) if _covers(d, mod_name)), None)
    if denied is not None:
        raise ModelError(
            f"model factory {factory!r}: module {mod_name!r} is never imported as a factory ({denied} loads or runs "
            "other code)",
            "name the module that defines your model's function, e.g. factory: mypkg.nets:build",
        )
    if not any(_covers(t, mod_name) for t in trusted if t):
        raise ModelError(
            f"model factory {factory!r}: module {mod_name!r} is not trusted (a factory runs its module's code)",
            _TRUST_FIX.format(mod=mod_name),
        )
    return mod_name


def _call_factory(fn: Any, factory: str, offered: dict[str, Any], params: dict[str, Any]) -> Any:
    """Call ``fn`` with ``params`` and those of ``offered`` its signature accepts (all when it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: offer everything
        accepted = dict(offered)
    else:
        ps = sig.parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
            accepted = dict(offered)
        else:
            names = {p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
            accepted = {k: v for k, v in offered.items() if k in names}
    skipped = sorted(set(offered) - set(accepted))
    if skipped:
        log.info("model factory %s does not take %s; called without them", factory, ", ".join(skipped))
    try:
        return fn(**accepted, **params)
    except TypeError as exc:
        raise ModelError(
            f"model factory {factory!r} rejected its arguments ({exc})",
            "model.params must hold only keyword arguments the factory accepts",
        ) from None


def build_model(
    spec: ModelSpec,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    trusted_modules: Collection[str] = (),
) -> nn.Module:
    """Instantiate the architecture of ``spec`` (built-in family or ``"pkg.mod:fn"`` factory), randomly initialized.

    Args:
        spec: family + params, or factory + params (+ ``output`` for a model returning a tuple/dict).
        in_channels: image channels (1 gray, 3 RGB).
        num_classes: logits per sample.
        input_size: (H, W) of the input.
        trusted_modules: modules (or parent packages) a factory may be imported from.

    Returns:
        An ``nn.Module`` mapping ``[N, C, H, W]`` to its output; wrapped in :class:`SelectOutput` when ``spec.output``
        is set, so that it returns the logits tensor.

    Raises:
        ModelError: unknown family or param; an untrusted or denied factory module; a factory that cannot be
            imported, rejects its arguments or returns no ``nn.Module``.
    """
    from torch import nn

    if spec.family is not None:
        from edgecompress.models.families import build_family

        model = build_family(
            spec.family, dict(spec.params), in_channels=in_channels, num_classes=num_classes, input_size=input_size
        )
    else:
        factory = str(spec.factory)
        mod_name = check_factory_trust(factory, trusted_modules)
        fn_name = factory.partition(":")[2]
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise ModelError(
                f"model factory {factory!r}: cannot import module {mod_name!r} ({exc})",
                "install the package or put its folder on PYTHONPATH",
            ) from None
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise ModelError(f"model factory {factory!r}: {mod_name} has no function {fn_name!r}", "check the name")
        offered = {"num_classes": num_classes, "in_channels": in_channels, "input_size": tuple(input_size)}
        offered = {k: v for k, v in offered.items() if k not in spec.params}
        model = _call_factory(fn, factory, offered, dict(spec.params))
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"model factory {factory!r} returned {type(model).__name__}, not an nn.Module", "return one"
            )
    if spec.output is not None:
        from edgecompress.models.teacher import SelectOutput

        model = SelectOutput(model, spec.output)
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on a batch of 1, on a zero input.

    torch-pruning's op counter (module hooks); for a TorchScript / torch.export teacher, which has no module hooks,
    PyTorch's FLOP counter (conv and matmul FLOPs / 2).
    """
    import torch

    from edgecompress._lazy import require
    from edgecompress.models.teacher import FrozenProgram, is_prunable

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *input_shape, device=device)
    if not is_prunable(model):
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        programs = [m for m in model.modules() if isinstance(m, FrozenProgram)]
        batch = max(1, programs[0].fixed_batch or 1) if programs else 1  # a fixed-batch program runs a padded chunk
        return int(counter.get_total_flops() // (2 * batch))
    tp = require("torch_pruning", "counting MACs")
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, x)
    return int(macs)
