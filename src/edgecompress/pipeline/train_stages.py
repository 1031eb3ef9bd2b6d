"""The training half of the pipeline as stages: data, teacher, assistant search, distillation chain, calibration.

Each stage is a :class:`~edgecompress.pipeline.context.Stage`: its key names what it depends on (its config
section and the keys of the stages it reads), ``compute`` does the work in its folder, ``load`` rebuilds its model
from the folder when the stage is reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress._io import sha256_file
from edgecompress.errors import ConfigError, DataError
from edgecompress.pipeline.context import Context, Stage, metrics_of, predict_logits
from edgecompress.pipeline.results import CalibrateResult, DataResult, DistillResult, TeacherResult
from edgecompress.pipeline.rundir import StageDir

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecompress.data import Splits

log = logging.getLogger(__name__)


def build(ctx: Context, spec: dict[str, Any], splits: Splits) -> nn.Module:
    """A fresh model of ``spec`` for these splits (a factory is imported only from a trusted module)."""
    from edgecompress.models import ModelSpec, build_model

    c, h, w = splits.input_shape
    return build_model(
        ModelSpec(**spec),
        in_channels=c,
        num_classes=splits.num_classes,
        input_size=(h, w),
        trusted_modules=ctx.trusted_modules,
    )


def rebuild(ctx: Context, spec: dict[str, Any], state: Path, splits: Splits) -> nn.Module:
    """Rebuild a (possibly pruned) model from its spec and its state-dict file."""
    from edgecompress.models import load_state

    return load_state(build(ctx, spec, splits), state)


def model_size(model: nn.Module, splits: Splits) -> dict[str, int]:
    from edgecompress.models import count_macs, count_params

    return {"params": int(count_params(model)), "macs": int(count_macs(model, splits.input_shape))}


def splits_of(ctx: Context) -> Splits:
    if ctx.splits is None:
        raise ConfigError("the data stage has not run", "run the pipeline from the data stage")
    return ctx.splits


def val_accuracy(model: nn.Module, splits: Splits) -> float | None:
    if splits.val is None or len(splits.val.y) == 0:
        return None
    return float((predict_logits(model, splits.val.x).argmax(1) == splits.val.y).mean())


# ---------------------------------------------------------------------------------------------------------- data


def _data_result(splits: Splits) -> DataResult:
    parts = {"train": splits.train, "val": splits.val, "calib": splits.calib, "test": splits.test}
    sizes = {name: len(s.y) if s is not None else 0 for name, s in parts.items()}
    return DataResult(
        fingerprint=splits.fingerprint(),
        labels=list(splits.labels),
        num_classes=splits.num_classes,
        input_shape=tuple(splits.input_shape),
        preprocess=splits.preprocess.model_dump(mode="json"),
        sizes=sizes,
    )


def _data_compute(ctx: Context, sd: StageDir) -> DataResult:
    from edgecompress.data import load_splits

    splits = load_splits(ctx.cfg.data, seed=ctx.cfg.seed)
    if splits.val is None or len(splits.val.y) == 0:
        ctx.warn("no labelled validation split: temperature scaling and ECE are not measured")
    for note in splits.notes:  # images converted to the colour mode, dtypes cast
        ctx.warn(f"data: {note}")
    ctx.splits = splits
    return _data_result(splits)


def _data_load(ctx: Context, sd: StageDir, res: DataResult) -> None:
    """The arrays are reloaded (cheap, deterministic); files that changed since the folder was made are caught."""
    result = _data_compute(ctx, sd)
    if result.fingerprint != res.fingerprint:
        raise DataError(
            f"the data changed since {sd.path} was made (fingerprint {result.fingerprint[:12]} ≠ "
            f"{res.fingerprint[:12]})",
            "restore the original files, or run into a new --out directory",
        )


def _data_key(ctx: Context) -> dict[str, Any]:
    return {"data": ctx.cfg.data.model_dump(mode="json"), "seed": ctx.cfg.seed}


DATA = Stage("data", DataResult, key=_data_key, compute=_data_compute, load=_data_load)


# ------------------------------------------------------------------------------------------------------- teacher


def _teacher_key(ctx: Context) -> dict[str, Any]:
    cfg = ctx.cfg.teacher
    key: dict[str, Any] = {"teacher": cfg.model_dump(mode="json"), "data": ctx.keys["data"], "seed": ctx.cfg.seed}
    if cfg.checkpoint is not None:
        if not cfg.checkpoint.is_file():
            raise ConfigError(f"teacher.checkpoint not found: {cfg.checkpoint}", "give the path of a state-dict file")
        key["checkpoint_sha256"] = sha256_file(cfg.checkpoint)
    return key


def _load_teacher(ctx: Context) -> nn.Module:
    """The user's teacher as configured (checkpoint, TorchScript or .pt2 program), or its untrained architecture."""
    from edgecompress.models import load_teacher

    splits = splits_of(ctx)
    c, h, w = splits.input_shape
    return load_teacher(
        ctx.cfg.teacher,
        in_channels=c,
        num_classes=splits.num_classes,
        input_size=(h, w),
        trusted_modules=ctx.trusted_modules,
    )


def _teacher_compute(ctx: Context, sd: StageDir) -> TeacherResult:
    from edgecompress.models import is_prunable, save_state, teacher_spec

    cfg, splits = ctx.cfg.teacher, splits_of(ctx)
    spec_model = teacher_spec(cfg)
    model = _load_teacher(ctx)
    program = not is_prunable(model)  # TorchScript / torch.export: reloaded from the user's file, never pruned
    events: list[str] = []
    if cfg.checkpoint is None:
        if splits.train is None:
            raise DataError(
                "the teacher must be trained but there is no training data", "give teacher.checkpoint or a dataset"
            )
        from edgecompress.distill import train_model
        from edgecompress.distill.config import LossConfig

        trained = train_model(
            model,
            splits,
            cfg.train,
            workdir=sd.path / "train",
            seed=ctx.cfg.seed,
            loss=LossConfig(kind="ce"),
            augment_cfg=ctx.cfg.data.augment,
            progress=ctx.progress,
        )
        model = trained.model
        events = [str(e) for e in getattr(trained, "events", [])]
    if not program:
        save_state(model, sd.path / "teacher.pt")
    ctx.models["teacher"] = model
    known = _teacher_logits(ctx, sd, model)
    test = metrics_of(known.test, splits.test.y) if splits.test is not None and known.test is not None else None
    val = float((known.val.argmax(1).numpy() == splits.val.y).mean()) if known.val is not None else None
    spec = spec_model.model_dump(mode="json", exclude_none=True) if spec_model is not None and not program else None
    for event in events:
        ctx.warn(f"teacher training: {event}")
    res = TeacherResult(spec=spec, **model_size(model, splits), test=test, val_accuracy=val, events=events)
    _check_teacher(ctx, res)
    return res


LOGITS = "logits.npz"


def _teacher_logits(ctx: Context, sd: StageDir, model: nn.Module) -> Any:
    """The teacher's raw logits on every split, computed once (train only when a distillation will read it) and
    kept in the stage folder, so that the decide and distill stages never run the teacher again."""
    from types import SimpleNamespace

    from edgecompress.distill.evaluate import SplitLogits

    path = sd.path / LOGITS
    if path.is_file():
        known = SplitLogits.load(path)
    else:
        splits = splits_of(ctx)
        train = splits.train if ctx.cfg.distill.datafree is None else None
        parts = SimpleNamespace(train=train, val=splits.val, test=splits.test)
        known = SplitLogits.of(model, parts)
        known.save(path)
    ctx.teacher_logits = known
    return known


def _check_teacher(ctx: Context, res: TeacherResult) -> None:
    """The teacher on val before it teaches: near chance stops the run (wrong classes, order or normalization);
    far below the accuracy the user claims (``teacher.accuracy``) is a warning."""
    from edgecompress.distill.gates import check_teacher

    if res.val_accuracy is None:
        return
    claimed = getattr(ctx.cfg.teacher, "accuracy", None)
    for warning in check_teacher(res.val_accuracy, splits_of(ctx).num_classes, claimed=claimed):
        ctx.warn(warning)


def _teacher_load(ctx: Context, sd: StageDir, res: TeacherResult) -> None:
    _check_teacher(ctx, res)
    if res.spec is None:  # a program teacher: its file is the user's checkpoint (its hash is in the stage key)
        ctx.models["teacher"] = _load_teacher(ctx)
    else:
        ctx.models["teacher"] = rebuild(ctx, res.spec, sd.path / "teacher.pt", splits_of(ctx)).eval()
    _teacher_logits(ctx, sd, ctx.models["teacher"])  # kept in the folder (computed now for an older folder)


TEACHER = Stage("teacher", TeacherResult, key=_teacher_key, compute=_teacher_compute, load=_teacher_load)


# ---------------------------------------------------------------------------------------------------- calibrate


def _calibrate_key(ctx: Context) -> dict[str, Any]:
    return {
        "calibration": ctx.cfg.calibration.model_dump(mode="json"),
        "student": ctx.keys["distill"],
        "seed": ctx.cfg.seed,
    }


def _calibrate_compute(ctx: Context, sd: StageDir) -> CalibrateResult:
    """MbLS fine-tune (optional), temperature scaling on val, metrics before/after on test, T folded."""
    from edgecompress.calibration import fit_temperature, reliability_diagram
    from edgecompress.models import save_state

    ccfg, splits = ctx.cfg.calibration, splits_of(ctx)
    model = ctx.models["student"]
    result = CalibrateResult()
    has_data = splits.train is not None and splits.val is not None and len(splits.val.y) > 0
    if ccfg.method == "auto" and has_data:
        from edgecompress.calibration.choose import choose_calibration

        choice = choose_calibration(
            model, splits.train.x, splits.train.y, splits.val.x, splits.val.y, ccfg, seed=ctx.cfg.seed
        )
        model, result.mbls_history = choice.model, choice.history
        result.method, result.candidates, result.reason = choice.method, choice.rows(), choice.reason
    elif ccfg.method == "mbls" and has_data:
        from edgecompress.calibration.mbls import mbls_finetune

        model, history = mbls_finetune(
            model, splits.train.x, splits.train.y, splits.val.x, splits.val.y, ccfg.mbls_settings, seed=ctx.cfg.seed
        )
        result.mbls_history, result.method = history, "mbls"
    save_state(model, sd.path / "student.pt")
    has_val = splits.val is not None and len(splits.val.y) > 0
    if has_val:
        val_logits = predict_logits(model, splits.val.x)
        if ccfg.temperature_scaling:
            result.temperature = float(fit_temperature(val_logits, splits.val.y))
        result.val_after = metrics_of(val_logits / result.temperature, splits.val.y)
    result.ece_measured = has_val and splits.test is not None
    t = result.temperature
    if splits.test is not None:
        logits = predict_logits(model, splits.test.x)
        result.before = metrics_of(logits, splits.test.y)
        result.after = metrics_of(logits / t, splits.test.y)
        png = reliability_diagram(
            [
                ("student before TS", logits, splits.test.y),
                (f"student after TS (T={t:.2f})", logits / t, splits.test.y),
            ],
            sd.path / "reliability_student.png",
        )
        result.reliability_png = str(png)
    ctx.models["calibrated"] = fold(model, t, splits)
    return result


def _calibrate_load(ctx: Context, sd: StageDir, res: CalibrateResult) -> None:
    splits = splits_of(ctx)
    spec = ctx.result("distill", DistillResult).student_spec
    ctx.models["calibrated"] = fold(rebuild(ctx, spec, sd.path / "student.pt", splits), res.temperature, splits)


CALIBRATE = Stage("calibrate", CalibrateResult, key=_calibrate_key, compute=_calibrate_compute, load=_calibrate_load)


def fold(model: nn.Module, temperature: float, splits: Splits) -> nn.Module:
    return fold_with_shape(model, temperature, splits.input_shape)


def fold_with_shape(model: nn.Module, temperature: float, input_shape: tuple[int, int, int]) -> nn.Module:
    """A copy of ``model`` with ``1/T`` folded into its last layer (checked on random input of ``input_shape``)."""
    from edgecompress.calibration import fold_temperature

    return fold_temperature(model, temperature, input_shape=input_shape)
