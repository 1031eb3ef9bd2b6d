"""Load the user's teacher exactly as it was trained: never resized, its output checked against the labels.

Sources: a model spec (family or trusted factory) + a state-dict checkpoint (plain, or under ``state_dict`` /
``model_state_dict`` / ``model``, keys prefixed by ``module.`` or ``model.``), or a TorchScript file or
``torch.export`` program (``.pt2``) that needs no spec but cannot be pruned (:func:`is_prunable`). A model returning
a tuple/list/dict is wrapped in :class:`SelectOutput` by ``teacher.output``.

Unlike :func:`edgecompress.models.load_state` (which resizes the layers of a student this tool pruned), a teacher is
loaded strictly: a checkpoint whose classifier has another number of outputs than the data has labels is refused.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from edgecompress.errors import CheckpointError, ModelError

if TYPE_CHECKING:
    from edgecompress.config import TeacherConfig
    from edgecompress.models.config import ModelSpec

log = logging.getLogger(__name__)


def select_output(out: Any, output: int | str) -> torch.Tensor:
    """The logits in a model's tuple/list/namedtuple/dict output: by index, or by key or field name."""
    if isinstance(out, torch.Tensor):
        raise ModelError(
            f"output {output!r} is set but the model returns a single tensor", "remove teacher.output / model.output"
        )
    try:
        if isinstance(out, dict) or hasattr(out, "keys"):
            picked = out[output] if isinstance(output, str) else list(out.values())[output]
        elif isinstance(output, str):
            picked = getattr(out, output)
        else:
            picked = out[output]
    except (KeyError, IndexError, AttributeError, TypeError):
        raise ModelError(
            f"output {output!r} is not in the model's output ({describe_output(out)})",
            "set teacher.output to an index or key the model returns",
        ) from None
    if not isinstance(picked, torch.Tensor):
        raise ModelError(f"output {output!r} selects a {type(picked).__name__}, not a tensor", "select the logits")
    return picked


def describe_output(out: Any) -> str:
    """A short description of a model output, e.g. ``tuple of 2: [2, 10], [2, 32]``."""
    if isinstance(out, torch.Tensor):
        return f"tensor {list(out.shape)}"
    if isinstance(out, dict) or hasattr(out, "keys"):
        items = [f"{k!r}: {describe_output(v)}" for k, v in list(out.items())[:4]]
        return f"{type(out).__name__} of {len(out)}: " + ", ".join(items)
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)
        names = [f"{f}=" for f in fields] if fields else [""] * len(out)
        items = [f"{n}{describe_output(v)}" for n, v in list(zip(names, out, strict=False))[:4]]
        return f"{type(out).__name__} of {len(out)}: " + ", ".join(items)
    return type(out).__name__


class SelectOutput(nn.Module):
    """Wraps a model returning a tuple/list/dict so that it returns the logits tensor (exportable and prunable)."""

    def __init__(self, model: nn.Module, output: int | str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(x), self.output)


class FrozenProgram(nn.Module):
    """A TorchScript module or ``torch.export`` program used as a teacher: it runs, but it cannot be pruned.

    The program always runs in inference mode (``train()`` changes only this wrapper's flag: an exported program
    cannot switch, and a frozen teacher must not update BatchNorm statistics). A program exported with a fixed batch
    size is run in chunks of that size (the last one zero-padded).
    """

    prunable = False

    def __init__(self, program: nn.Module, *, fixed_batch: int | None = None, source: str = "") -> None:
        super().__init__()
        self.program = program
        self.fixed_batch = fixed_batch
        self.source = source

    def train(self, mode: bool = True) -> FrozenProgram:
        """Set this wrapper's flag only; the program stays in inference mode."""
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> Any:
        b = self.fixed_batch
        if b is None or x.shape[0] == b:
            return self.program(x)
        outs = []
        for i in range(0, x.shape[0], b):
            chunk = x[i : i + b]
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - n, *chunk.shape[1:]))])
            out = self.program(chunk)
            if not isinstance(out, torch.Tensor):
                raise ModelError(
                    "a fixed-batch torch.export program returning a tuple/dict cannot be run in chunks",
                    "export it with a dynamic batch dimension (dynamic_shapes) or as TorchScript",
                )
            outs.append(out[:n])
        return torch.cat(outs)


def is_prunable(model: nn.Module) -> bool:
    """False for a teacher loaded from TorchScript or ``torch.export`` (its student must come from a family/factory)."""
    return not any(isinstance(m, (FrozenProgram, torch.jit.ScriptModule)) for m in model.modules())


def checkpoint_kind(path: Path) -> str:
    """``"torchscript"``, ``"export"`` (a ``torch.export`` .pt2 program) or ``"state"`` (anything else)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return "state"
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "export"
    if any("/code/__torch__" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "state"


@contextlib.contextmanager
def _quiet_torch_export(causes: list[BaseException]) -> Iterator[None]:
    """Keep ``torch.export.load``'s own warning (a traceback on stderr) off the user's screen; collect its cause."""

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                causes.append(record.exc_info[1])

    logger = logging.getLogger("torch.export")
    handler, propagate = Collect(), logger.propagate
    saved = logger.handlers[:]
    logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = saved, propagate


def _load_program(path: Path, kind: str, input_shape: tuple[int, int, int]) -> FrozenProgram:
    import io

    from edgecompress.models.safe_archive import read_checked

    data = read_checked(path, kind)  # every pickle in it weights-only; the checked bytes are the ones loaded
    cause: list[BaseException] = []
    try:
        if kind == "torchscript":
            return FrozenProgram(torch.jit.load(io.BytesIO(data), map_location="cpu").eval(), source="torchscript")
        with _quiet_torch_export(cause):
            ep = torch.export.load(io.BytesIO(data))
        program = ep.module()
    except Exception as exc:
        what = "TorchScript file" if kind == "torchscript" else "torch.export program"
        why = cause[-1] if cause else exc  # torch.export logs the real cause and raises a generic error
        detail = (str(why).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(
            f"{path} looks like a {what} but cannot be loaded ({type(why).__name__}: {detail})",
            "re-save it with torch.jit.save / torch.export.save from the same PyTorch version",
        ) from None
    args = (getattr(ep, "example_inputs", None) or ((),))[0]
    example = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) else 1
    fixed = None
    try:  # a batch size other than the example's: a program exported without a dynamic batch refuses it
        with torch.no_grad():
            program(torch.zeros(example + 1, *input_shape))
    except Exception:  # noqa: BLE001 (a failed shape guard raises AssertionError or RuntimeError)
        fixed = example
        log.warning("%s was exported with a fixed batch size %d: it runs in chunks (slower)", path, fixed)
    return FrozenProgram(program, fixed_batch=fixed, source="export")


def effective_output(cfg: TeacherConfig) -> int | str | None:
    """``teacher.output``, else ``teacher.model.output``."""
    if cfg.output is not None:
        return cfg.output
    return cfg.model.output if cfg.model is not None else None


def teacher_spec(cfg: TeacherConfig) -> ModelSpec | None:
    """The teacher's architecture with its output selection (what a pruned student is rebuilt from); None for a
    TorchScript / torch.export teacher without a spec."""
    if cfg.model is None:
        return None
    return cfg.model.model_copy(update={"output": effective_output(cfg)})


def check_output(
    model: nn.Module, input_shape: tuple[int, int, int], num_classes: int | None, what: str = "teacher"
) -> None:
    """Run ``model`` on two zero images; refuse a non-tensor output or one that is not ``[N, num_classes]``.

    Raises:
        ModelError: the forward fails, returns a tuple/dict (set ``teacher.output``), or has another number of
            outputs than ``num_classes`` (not checked when None).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape, device=_device(model)))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"the {what} fails on an input of shape [2, {', '.join(map(str, input_shape))}] "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
            "check data.channels / preprocessing.size against what the model was trained on",
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"the {what} returns a {describe_output(out)}, not a logits tensor",
            "set teacher.output to the index or key of the logits (e.g. output: 0 or output: logits)",
        )
    if out.dim() != 2 or out.shape[0] != 2:
        raise ModelError(
            f"the {what} returns shape {list(out.shape)} for 2 images, not [2, classes]",
            "make the model end in the logits [N, classes] (e.g. flatten before the classifier)",
        )
    if num_classes is not None and out.shape[1] != num_classes:
        raise ModelError(
            f"the {what} has {out.shape[1]} outputs but the data has {num_classes} labels (the classifier is never "
            "resized)",
            "use the data the teacher was trained on (data.classes in the teacher's order) or a teacher trained on "
            f"these {num_classes} labels",
        )


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _heads(model: nn.Module, raw: nn.Module, input_shape: tuple[int, int, int]) -> list[str]:
    """Names (in ``raw``) of the classifier layers of ``model`` (``raw`` or its :class:`SelectOutput` wrapper)."""
    from edgecompress.models.prune import find_classifier

    try:
        names = find_classifier(model, input_shape)
    except ModelError:
        return []
    return [n.removeprefix("model.") for n in names] if model is not raw else names


def _load_strict(model: nn.Module, path: Path, num_classes: int, heads: list[str]) -> None:
    from edgecompress.models.checkpoint import _fmt, match_keys, read_state

    own = model.state_dict()
    state = match_keys(read_state(path), list(own))
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        parts = [f"missing {_fmt(missing)}" if missing else "", f"unexpected {_fmt(unexpected)}" if unexpected else ""]
        raise CheckpointError(
            f"{path} does not match the teacher architecture: {'; '.join(p for p in parts if p)}",
            "set teacher.model to the family/params (or factory) the checkpoint was saved from",
        )
    wrong = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if wrong:
        for k in wrong:
            layer = k.rpartition(".")[0]
            if layer in heads and state[k].dim() >= 1 and state[k].shape[0] != own[k].shape[0]:
                raise ModelError(
                    f"the teacher checkpoint's classifier {layer!r} has {state[k].shape[0]} outputs but the data has "
                    f"{num_classes} labels (the classifier is never resized)",
                    "use the data the teacher was trained on (data.classes in the teacher's order) or a teacher "
                    f"trained on these {num_classes} labels",
                )
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {k} has shape {list(state[k].shape)}, the teacher model has {list(own[k].shape)}",
            "set teacher.model (params) to the architecture the checkpoint was saved from",
        )
    model.load_state_dict(state, strict=True)


def load_teacher(
    cfg: TeacherConfig,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    trusted_modules: Collection[str] = (),
) -> nn.Module:
    """The user's teacher, in eval mode, returning logits ``[N, num_classes]``.

    Args:
        cfg: the teacher section: ``model`` (spec), ``checkpoint`` (state dict, TorchScript or .pt2), ``output``.
        in_channels: image channels of the data.
        num_classes: number of labels in the data; the teacher must have exactly as many outputs.
        input_size: (H, W) of the input.
        trusted_modules: modules a factory may be imported from (``trust_factories``).

    Returns:
        The model; with no checkpoint, the freshly built (untrained) architecture. :func:`is_prunable` tells whether
        a student can be cut from it.

    Raises:
        CheckpointError: unreadable, pickled-code or mismatched checkpoint (the fix says how to save a state dict).
        ModelError: untrusted factory; a spec needed but missing; tuple/dict output without ``teacher.output``;
            output size different from ``num_classes``.
    """
    from edgecompress.models.build import build_model
    from edgecompress.models.checkpoint import require_file

    input_shape = (int(in_channels), int(input_size[0]), int(input_size[1]))
    output = effective_output(cfg)
    path = require_file(cfg.checkpoint) if cfg.checkpoint is not None else None
    kind = checkpoint_kind(path) if path is not None else "state"
    if path is not None and kind in ("torchscript", "export"):
        if cfg.model is not None:
            log.info("teacher.checkpoint %s is a %s program: teacher.model is not used to build it", path, kind)
        model: nn.Module = _load_program(path, kind, input_shape)
        if output is not None:
            model = SelectOutput(model, output)
    else:
        if cfg.model is None:
            raise ModelError(
                "teacher.model is not set and teacher.checkpoint is not a TorchScript or torch.export program",
                "set teacher.model (family or factory) for a state-dict checkpoint",
            )
        raw = build_model(
            cfg.model.model_copy(update={"output": None}),
            in_channels=in_channels,
            num_classes=num_classes,
            input_size=input_size,
            trusted_modules=trusted_modules,
        )
        model = SelectOutput(raw, output) if output is not None else raw  # the checkpoint holds the raw keys
        if path is not None:
            check_output(model, input_shape, None)  # a tuple output is named before any shape mismatch
            _load_strict(raw, path, num_classes, _heads(model, raw, input_shape))
    check_output(model, input_shape, num_classes)
    return model.eval()
