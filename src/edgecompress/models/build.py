"""Build a model from a :class:`ModelSpec`, and count its parameters and multiply-accumulates.

Trust: a factory ``"pkg.mod:fn"`` is code the user chose to run (importing ``pkg.mod`` runs its top-level code, and
``fn`` runs), so it is imported only when ``pkg.mod`` or a parent package of it is in ``trusted_modules`` (the
config's ``trust_factories`` or ``--trust-factory``). The standard library and packages that load or run other code
(``torch``, ``pickle``, ``dill``, ...) are refused even when listed, and ``fn`` must be a function or ``nn.Module``
class defined in that module.
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

_TRUST_FIX = "add it to trust_factories in the config or pass --trust-factory {mod}"


def _covers(parent: str, module: str) -> bool:
    return module == parent or module.startswith(parent + ".")


def check_factory_trust(factory: str, trusted_modules: Collection[str]) -> str:
    """The module of ``factory`` ("pkg.mod:fn") when it may be imported; else :class:`ModelError` with the fix.

    Never the standard library or a package that loads or runs other code
    (:func:`edgecompress.config.untrusted_reason`), whatever the trust list says; otherwise only a module in
    ``trusted_modules`` or below one.
    """
    from edgecompress.config import untrusted_reason

    mod_name = factory.partition(":")[0]
    trusted = [str(t).partition(":")[0].strip() for t in trusted_modules]  # "pkg.mod:fn" names its module
    reason = untrusted_reason(mod_name)
    if reason is not None:
        raise ModelError(
            f"model factory {factory!r}: module {mod_name!r} is never imported as a factory ({reason})",
            "name the module that defines your model's function, e.g. factory: mypkg.nets:build",
        )
    if not any(_covers(t, mod_name) for t in trusted if t):
        raise ModelError(
            f"model factory {factory!r}: module {mod_name!r} is not trusted (a factory runs its module's code)",
            _TRUST_FIX.format(mod=mod_name),
        )
    return mod_name


def resolve_factory(factory: str, trusted_modules: Collection[str]) -> Any:
    """Import a trusted factory and return it, checked to be an ``nn.Module`` class, or a Python function defined in
    that module (or below it) whose return annotation, when given, is an ``nn.Module`` class.

    A name the module only re-exports from elsewhere (``numpy.load`` as ``mypkg:load``), a builtin, a
    ``functools.partial`` or any other callable object is refused: the factory must be the user's own model code.

    Raises:
        ModelError: untrusted or denied module, import failure, missing name, or not a model factory.
    """
    from torch import nn

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
    fix = f"point the factory at a function (or nn.Module class) written in {mod_name} that builds your model"
    if inspect.isclass(fn):
        if not issubclass(fn, nn.Module):
            raise ModelError(f"model factory {factory!r} is the class {fn.__name__}, not an nn.Module", fix)
        return fn
    if not inspect.isfunction(fn) or not _covers(mod_name, str(getattr(fn, "__module__", ""))):
        where = getattr(fn, "__module__", None) or type(fn).__name__
        raise ModelError(f"model factory {factory!r} is not a function defined in {mod_name} (it comes from {where})",
                         fix)  # fmt: skip
    returns = _return_annotation(fn)
    if inspect.isclass(returns) and not issubclass(returns, nn.Module):
        raise ModelError(f"model factory {factory!r} is annotated to return {returns.__name__}, not an nn.Module", fix)
    return fn


def trust_notes(factories: Collection[str], trusted_modules: Collection[str]) -> list[str]:
    """Check every factory as the run will (:func:`resolve_factory`: trusted, importable, a model factory defined in
    its module) and say, one line each, what trusting it means.

    Raises:
        ModelError: the first factory the run would refuse.
    """
    notes = []
    for factory in factories:
        fn = resolve_factory(factory, trusted_modules)
        kind = "nn.Module class" if inspect.isclass(fn) else "function"
        notes.append(
            f"{factory} is code you chose to run: importing {factory.partition(':')[0]} runs its top-level code, and "
            f"the {kind} {fn.__name__} runs when the model is built; edgecompress checks only that it is a model "
            "factory defined in that module (never the standard library, torch, pickle and the like)"
        )
    return notes


def _return_annotation(fn: Any) -> Any:
    import typing

    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:  # noqa: BLE001 (unresolvable string annotations: nothing to check)
        return None


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
        fn = resolve_factory(factory, trusted_modules)
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
