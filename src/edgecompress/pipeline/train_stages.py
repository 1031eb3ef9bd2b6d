"""The training half of the pipeline as stages: data, teacher, assistant search, distillation chain, calibration.

Each stage is a :class:`~edgecompress.pipeline.context.Stage`: its key names what it depends on (its config
section and the keys of the stages it reads), ``compute`` does the work in its folder, ``load`` rebuilds its model
from the folder when the stage is reused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress._io import atomic_path, sha256_file
from edgecompress.errors import ConfigError, DataError, ModelError
from edgecompress.pipeline.context import Context, Stage, metrics_of, predict_logits
from edgecompress.pipeline.results import CalibrateResult, DataResult, DistillResult, SearchResult, TeacherResult
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


def _size(model: nn.Module, splits: Splits) -> dict[str, int]:
    from edgecompress.models import count_macs, count_params

    return {"params": int(count_params(model)), "macs": int(count_macs(model, splits.input_shape))}


def _splits(ctx: Context) -> Splits:
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

    splits = _splits(ctx)
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

    cfg, splits = ctx.cfg.teacher, _splits(ctx)
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
    test = metrics_of(predict_logits(model, splits.test.x), splits.test.y) if splits.test is not None else None
    spec = spec_model.model_dump(mode="json", exclude_none=True) if spec_model is not None and not program else None
    return TeacherResult(spec=spec, **_size(model, splits), test=test, val_accuracy=val_accuracy(model, splits),
                         events=events)  # fmt: skip


def _teacher_load(ctx: Context, sd: StageDir, res: TeacherResult) -> None:
    if res.spec is None:  # a program teacher: its file is the user's checkpoint (its hash is in the stage key)
        ctx.models["teacher"] = _load_teacher(ctx)
    else:
        ctx.models["teacher"] = rebuild(ctx, res.spec, sd.path / "teacher.pt", _splits(ctx)).eval()


TEACHER = Stage("teacher", TeacherResult, key=_teacher_key, compute=_teacher_compute, load=_teacher_load)


# -------------------------------------------------------------------------------------------- assistant search


def _member_model(ctx: Context, member: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A chain member: given by its own spec, or cut from the teacher by structured pruning."""
    from edgecompress.models import prune_search

    splits = _splits(ctx)
    if member.model is not None:
        return build(ctx, member.model, splits), dict(member.model)
    spec = ctx.result("teacher", TeacherResult).spec
    if spec is None:
        raise ModelError(
            "the teacher is a TorchScript / torch.export program: a student cannot be cut from it by pruning",
            "give the student's architecture: distill.student.model (a family or a trusted factory)",
        )
    res = prune_search(ctx.models["teacher"], splits.input_shape, member.prune_ratio, round_to=member.round_to)
    if res.warning():
        ctx.warn(f"{member.name or 'student'}: {res.warning()}")
    return res.model, spec


def _mac_ratio(ctx: Context, model: nn.Module) -> float:
    """``model``'s MACs relative to the teacher's."""
    from edgecompress.models import count_macs

    return count_macs(model, _splits(ctx).input_shape) / max(1, ctx.result("teacher", TeacherResult).macs)


def _search_key(ctx: Context) -> dict[str, Any]:
    dcfg = ctx.cfg.distill
    return {
        "distill": dcfg.model_dump(mode="json", exclude={"datafree"}),
        "teacher": ctx.keys["teacher"],
        "augment": ctx.cfg.data.augment.model_dump(mode="json"),
        "seed": ctx.cfg.seed,
    }


def _search_compute(ctx: Context, sd: StageDir) -> SearchResult:
    from edgecompress.distill.chain import search_assistant
    from edgecompress.models import prune_to_ratio

    dcfg, splits = ctx.cfg.distill, _splits(ctx)
    ratio = _mac_ratio(ctx, _member_model(ctx, dcfg.student)[0])
    candidates = [c for c in dcfg.search_candidates if c > ratio]
    if not candidates:
        ctx.warn(
            f"assistants: search found no candidate above the student's MAC ratio {ratio:.3f}; distilling directly"
        )
        return SearchResult()
    teacher = ctx.models["teacher"]
    best = search_assistant(
        teacher,
        lambda r: prune_to_ratio(teacher, splits.input_shape, r),
        lambda: _member_model(ctx, dcfg.student)[0],
        candidates,
        splits,
        dcfg,
        workdir=sd.path,
        seed=ctx.cfg.seed,
        progress=ctx.progress,
    )
    return SearchResult(chosen_ratio=best.best_ratio, table=best.to_dict())


SEARCH = Stage(
    "search",
    SearchResult,
    key=_search_key,
    compute=_search_compute,
    applies=lambda ctx: ctx.cfg.distill.datafree is None and ctx.cfg.distill.assistants == "search",
)


# ------------------------------------------------------------------------------------------------------ distill


def _plan_members(ctx: Context) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    from edgecompress.distill.chain import plan_assistant_ratios
    from edgecompress.distill.config import MemberSpec

    dcfg = ctx.cfg.distill
    student, student_spec = _member_model(ctx, dcfg.student)
    assistants: Any = dcfg.assistants
    if assistants == "auto":
        assistants = [
            MemberSpec(prune_ratio=r, name=f"ta{i + 1}-{r:.2f}", round_to=dcfg.student.round_to)
            for i, r in enumerate(plan_assistant_ratios(_mac_ratio(ctx, student), dcfg.n_assistants))
        ]
    elif assistants == "search":
        found = ctx.result("search", SearchResult).chosen_ratio
        assistants = [] if found is None else [MemberSpec(prune_ratio=found, name=f"ta-{found:.2f}")]
    elif assistants == "none":
        assistants = []
    members = []
    for i, m in enumerate(assistants):
        model, spec = _member_model(ctx, m)
        members.append((m.name or f"ta{i + 1}", model, spec))
    members.append((dcfg.student.name or "student", student, student_spec))
    return members


def _distill_key(ctx: Context) -> dict[str, Any]:
    return {
        "distill": ctx.cfg.distill.model_dump(mode="json"),
        "teacher": ctx.keys["teacher"],
        "search": ctx.keys.get("search"),
        "seed": ctx.cfg.seed,
        "augment": ctx.cfg.data.augment.model_dump(mode="json"),
        "label_smoothing": ctx.cfg.teacher.label_smoothing,
    }


def _distill_compute(ctx: Context, sd: StageDir) -> DistillResult:
    from edgecompress.distill import distill_chain
    from edgecompress.models import save_state

    if ctx.cfg.distill.datafree is not None:
        return _datafree(ctx, sd)
    dcfg, splits = ctx.cfg.distill, _splits(ctx)
    members = _plan_members(ctx)
    if ctx.cfg.teacher.label_smoothing and not dcfg.teacher_label_smoothing:
        dcfg = dcfg.model_copy(update={"teacher_label_smoothing": True})
    chain = distill_chain(
        ctx.models["teacher"],
        [(n, m) for n, m, _ in members],
        splits,
        dcfg,
        workdir=sd.path / "chain",
        seed=ctx.cfg.seed,
        progress=ctx.progress,
    )
    student = chain.members[-1].model
    save_state(student, sd.path / "student.pt")
    for rec in chain.members[1:-1]:  # the assistants, kept for inspection and the report
        save_state(rec.model, sd.path / f"{rec.name}.pt")
    ctx.models["student"] = student
    return DistillResult(
        student_spec=members[-1][2],
        chain=chain.to_json(),
        member_specs={n: s for n, _, s in members},
        student_val_accuracy=val_accuracy(student, splits),
        teacher_val_accuracy=ctx.result("teacher", TeacherResult).val_accuracy,
    )


def _datafree(ctx: Context, sd: StageDir) -> DistillResult:
    from edgecompress.distill.datafree import datafree_distill
    from edgecompress.distill.datafree.grid import sample_grid
    from edgecompress.models import save_state

    splits = _splits(ctx)
    teacher = ctx.models["teacher"]
    student, spec = _member_model(ctx, ctx.cfg.distill.student)
    val = (splits.val.x, splits.val.y) if splits.val is not None else None
    pre = splits.preprocess
    res = datafree_distill(
        teacher,
        student,
        ctx.cfg.distill.datafree,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        seed=ctx.cfg.seed,
        workdir=sd.path / "synthesis",
        progress=ctx.progress,
        val=val,
        mean=pre.mean,
        std=pre.std,
    )
    save_state(res.student, sd.path / "student.pt")
    bank = sd.path / "bank.npy"  # synthesized samples: the INT8 calibration set of a data-free run
    with atomic_path(bank) as tmp, open(tmp, "wb") as fh:
        np.save(fh, res.bank_x.numpy().astype(np.float32))
    grid = sample_grid(
        res.bank_x,
        res.bank_y,
        splits.num_classes,
        sd.path / "samples.png",
        mean=pre.mean,
        std=pre.std,
        class_names=splits.labels,
    )
    member: dict[str, Any] = {"name": "student", "role": "student", "teacher": "teacher", **_size(res.student, splits)}
    if splits.test is not None:
        t_logits = predict_logits(teacher, splits.test.x)
        s_logits = predict_logits(res.student, splits.test.x)
        member.update(metrics_of(s_logits, splits.test.y))
        member["fidelity_agreement"] = float((t_logits.argmax(1) == s_logits.argmax(1)).mean())
    ctx.models["student"] = res.student
    return DistillResult(
        student_spec=spec,
        chain={"members": [member]},
        datafree=res.summary(),
        sample_grid=str(grid),
        bank=str(bank),
        student_val_accuracy=val_accuracy(res.student, splits),
        teacher_val_accuracy=ctx.result("teacher", TeacherResult).val_accuracy,
    )


def _distill_load(ctx: Context, sd: StageDir, res: DistillResult) -> None:
    ctx.models["student"] = rebuild(ctx, res.student_spec, sd.path / "student.pt", _splits(ctx))


DISTILL = Stage("distill", DistillResult, key=_distill_key, compute=_distill_compute, load=_distill_load)


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

    ccfg, splits = ctx.cfg.calibration, _splits(ctx)
    model = ctx.models["student"]
    result = CalibrateResult()
    if ccfg.mbls is not None and splits.train is not None and splits.val is not None:
        from edgecompress.calibration.mbls import mbls_finetune

        model, history = mbls_finetune(
            model, splits.train.x, splits.train.y, splits.val.x, splits.val.y, ccfg.mbls, seed=ctx.cfg.seed
        )
        result.mbls_history = history
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
    splits = _splits(ctx)
    spec = ctx.result("distill", DistillResult).student_spec
    ctx.models["calibrated"] = fold(rebuild(ctx, spec, sd.path / "student.pt", splits), res.temperature, splits)


CALIBRATE = Stage("calibrate", CalibrateResult, key=_calibrate_key, compute=_calibrate_compute, load=_calibrate_load)


def fold(model: nn.Module, temperature: float, splits: Splits) -> nn.Module:
    return fold_with_shape(model, temperature, splits.input_shape)


def fold_with_shape(model: nn.Module, temperature: float, input_shape: tuple[int, int, int]) -> nn.Module:
    """A copy of ``model`` with ``1/T`` folded into its last layer (checked on random input of ``input_shape``)."""
    from edgecompress.calibration import fold_temperature

    return fold_temperature(model, temperature, input_shape=input_shape)
