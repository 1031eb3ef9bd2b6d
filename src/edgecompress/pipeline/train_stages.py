"""The training half of the pipeline: data, teacher, distillation chain, calibration."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress._io import atomic_path, sha256_file
from edgecompress.errors import ConfigError, DataError
from edgecompress.pipeline.context import Context, metrics_of, predict_logits

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecompress.data import Splits

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """A trained model, how to rebuild it, and the key of the stage that made it."""

    model: nn.Module
    spec: dict[str, Any]  # ModelSpec as a dict: the architecture to rebuild before load_state resizes it
    key: str
    record: dict[str, Any]


def _build(spec: dict[str, Any], splits: Splits) -> nn.Module:
    from edgecompress.models import ModelSpec, build_model

    c, h, w = splits.input_shape
    return build_model(ModelSpec(**spec), in_channels=c, num_classes=splits.num_classes, input_size=(h, w))


def _size(model: nn.Module, splits: Splits) -> dict[str, int]:
    from edgecompress.models import count_macs, count_params

    return {"params": int(count_params(model)), "macs": int(count_macs(model, splits.input_shape))}


def rebuild(spec: dict[str, Any], state: Path, splits: Splits) -> nn.Module:
    """Rebuild a (possibly pruned) model from its family spec and its state-dict file."""
    from edgecompress.models import load_state

    return load_state(_build(spec, splits), state)


def stage_data(ctx: Context) -> Splits:
    from edgecompress.data import load_splits

    splits = load_splits(ctx.cfg.data, seed=ctx.cfg.seed)
    if splits.val is None or len(splits.val.y) == 0:
        ctx.warn("no labelled validation split: temperature scaling and ECE are not measured")
    ctx.splits = splits
    return splits


def stage_teacher(ctx: Context, splits: Splits) -> Trained:
    cfg = ctx.cfg.teacher
    spec = cfg.model.model_dump(mode="json", exclude_none=True)
    key = {"teacher": cfg.model_dump(mode="json"), "data": splits.fingerprint(), "seed": ctx.cfg.seed}
    if cfg.checkpoint is not None:
        if not cfg.checkpoint.is_file():
            raise ConfigError(f"teacher.checkpoint not found: {cfg.checkpoint}", "give the path of a state-dict file")
        key["checkpoint_sha256"] = sha256_file(cfg.checkpoint)
    sd = ctx.run.stage("teacher", key)
    state = sd.path / "teacher.pt"
    with ctx.timed("teacher", sd.key, sd.done, str(sd.path)):
        if sd.done:
            return Trained(rebuild(spec, state, splits), spec, sd.key, sd.result())
        from edgecompress.models import load_state, save_state

        model = _build(spec, splits)
        if cfg.checkpoint is not None:
            model = load_state(model, cfg.checkpoint)
        else:
            if splits.train is None:
                raise DataError(
                    "the teacher must be trained but there is no training data", "give teacher.checkpoint or a dataset"
                )
            from edgecompress.distill import train_model
            from edgecompress.distill.config import LossConfig

            model = train_model(
                model,
                splits,
                cfg.train,
                workdir=sd.path / "train",
                seed=ctx.cfg.seed,
                loss=LossConfig(kind="ce"),
                augment_cfg=ctx.cfg.data.augment,
                progress=ctx.progress,
            ).model
        save_state(model, state)
        record = {"name": "teacher", "role": "teacher", **_size(model, splits)}
        if splits.test is not None:
            record.update(metrics_of(predict_logits(model, splits.test.x), splits.test.y))
        return Trained(model, spec, sd.key, sd.finish(record))


def _member_model(member: Any, teacher: Trained, splits: Splits) -> tuple[nn.Module, dict[str, Any]]:
    from edgecompress.models import prune_to_ratio

    if member.model is not None:
        return _build(member.model, splits), dict(member.model)
    pruned = prune_to_ratio(teacher.model, splits.input_shape, member.prune_ratio, round_to=member.round_to)
    return pruned, teacher.spec


def _plan_members(ctx: Context, teacher: Trained, splits: Splits) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    from edgecompress.distill.chain import plan_assistant_ratios
    from edgecompress.distill.config import MemberSpec
    from edgecompress.models import count_macs

    dcfg = ctx.cfg.distill
    student, student_spec = _member_model(dcfg.student, teacher, splits)
    ratio = count_macs(student, splits.input_shape) / max(1, teacher.record["macs"])
    assistants = dcfg.assistants
    if assistants == "auto":
        assistants = [
            MemberSpec(prune_ratio=r, name=f"ta{i + 1}-{r:.2f}", round_to=dcfg.student.round_to)
            for i, r in enumerate(plan_assistant_ratios(ratio, dcfg.n_assistants))
        ]
    elif assistants == "search":
        assistants = _search(ctx, teacher, splits, ratio)
    elif assistants == "none":
        assistants = []
    members = []
    for i, m in enumerate(assistants):
        model, spec = _member_model(m, teacher, splits)
        members.append((m.name or f"ta{i + 1}", model, spec))
    members.append((dcfg.student.name or "student", student, student_spec))
    return members


def _search(ctx: Context, teacher: Trained, splits: Splits, student_ratio: float) -> list[Any]:
    from edgecompress.distill.chain import search_assistant
    from edgecompress.distill.config import MemberSpec
    from edgecompress.models import prune_to_ratio

    dcfg = ctx.cfg.distill
    candidates = [c for c in dcfg.search_candidates if c > student_ratio]
    if not candidates:
        ctx.warn(
            f"assistants: search found no candidate above the student's MAC ratio {student_ratio:.3f}; "
            "distilling directly"
        )
        return []
    best = search_assistant(
        teacher.model,
        lambda r: prune_to_ratio(teacher.model, splits.input_shape, r),
        lambda: _member_model(dcfg.student, teacher, splits)[0],
        candidates,
        splits,
        dcfg,
        workdir=ctx.run.root / "stages" / "search",
        seed=ctx.cfg.seed,
    )
    ctx.search = best.to_dict()
    return [MemberSpec(prune_ratio=best.best_ratio, name=f"ta-{best.best_ratio:.2f}")]


def stage_distill(ctx: Context, splits: Splits, teacher: Trained) -> Trained:
    dcfg = ctx.cfg.distill
    key = {
        "distill": dcfg.model_dump(mode="json"),
        "teacher": teacher.key,
        "data": splits.fingerprint(),
        "seed": ctx.cfg.seed,
        "augment": ctx.cfg.data.augment.model_dump(mode="json"),
        "label_smoothing": ctx.cfg.teacher.label_smoothing,
    }
    sd = ctx.run.stage("distill", key)
    with ctx.timed("distill", sd.key, sd.done, str(sd.path)):
        if sd.done:
            res = sd.result()
            return Trained(
                rebuild(res["student_spec"], sd.path / "student.pt", splits), res["student_spec"], sd.key, res
            )
        from edgecompress.models import save_state

        if dcfg.datafree is not None:
            return _datafree(ctx, splits, teacher, sd)
        members = _plan_members(ctx, teacher, splits)
        from edgecompress.distill import distill_chain

        if ctx.cfg.teacher.label_smoothing and not dcfg.teacher_label_smoothing:
            dcfg = dcfg.model_copy(update={"teacher_label_smoothing": True})
        chain = distill_chain(
            teacher.model,
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
        result = {
            "student_spec": members[-1][2],
            "chain": chain.to_json(),
            "member_specs": {n: s for n, _, s in members},
        }
        return Trained(student, members[-1][2], sd.key, sd.finish(result))


def _datafree(ctx: Context, splits: Splits, teacher: Trained, sd: Any) -> Trained:
    from edgecompress.distill.datafree import datafree_distill
    from edgecompress.distill.datafree.grid import sample_grid
    from edgecompress.models import save_state

    student, spec = _member_model(ctx.cfg.distill.student, teacher, splits)
    val = (splits.val.x, splits.val.y) if splits.val is not None else None
    pre = splits.preprocess
    res = datafree_distill(
        teacher.model,
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
    members = [{"name": "student", "role": "student", "teacher": "teacher", **_size(res.student, splits)}]
    if splits.test is not None:
        t_logits = predict_logits(teacher.model, splits.test.x)
        s_logits = predict_logits(res.student, splits.test.x)
        members[0].update(metrics_of(s_logits, splits.test.y))
        members[0]["fidelity_agreement"] = float((t_logits.argmax(1) == s_logits.argmax(1)).mean())
    result = {
        "student_spec": spec,
        "datafree": res.summary(),
        "sample_grid": str(grid),
        "bank": str(bank),
        "chain": {"members": members},
    }
    return Trained(res.student, spec, sd.key, sd.finish(result))


def stage_calibrate(ctx: Context, splits: Splits, student: Trained) -> Trained:
    """MbLS fine-tune (optional), temperature scaling on val, metrics before/after on test, T folded."""
    ccfg = ctx.cfg.calibration
    key = {"calibration": ccfg.model_dump(mode="json"), "student": student.key, "seed": ctx.cfg.seed}
    sd = ctx.run.stage("calibrate", key)
    with ctx.timed("calibrate", sd.key, sd.done, str(sd.path)):
        if sd.done:
            res = sd.result()
            model = rebuild(student.spec, sd.path / "student.pt", splits)
            return Trained(_fold(model, res["temperature"], splits), student.spec, sd.key, res)
        from edgecompress.calibration import fit_temperature, reliability_diagram
        from edgecompress.models import save_state

        model = student.model
        result: dict[str, Any] = {}
        if ccfg.mbls is not None and splits.train is not None and splits.val is not None:
            from edgecompress.calibration.mbls import mbls_finetune

            model, history = mbls_finetune(
                model, splits.train.x, splits.train.y, splits.val.x, splits.val.y, ccfg.mbls, seed=ctx.cfg.seed
            )
            result["mbls_history"] = history
        save_state(model, sd.path / "student.pt")
        temperature = 1.0
        has_val = splits.val is not None and len(splits.val.y) > 0
        if has_val:
            val_logits = predict_logits(model, splits.val.x)
            if ccfg.temperature_scaling:
                temperature = float(fit_temperature(val_logits, splits.val.y))
            result["val_after"] = metrics_of(val_logits / temperature, splits.val.y)
        result["temperature"] = temperature
        result["ece_measured"] = has_val and splits.test is not None
        if splits.test is not None:
            logits = predict_logits(model, splits.test.x)
            result["before"] = metrics_of(logits, splits.test.y)
            result["after"] = metrics_of(logits / temperature, splits.test.y)
            png = reliability_diagram(
                [
                    ("student before TS", logits, splits.test.y),
                    (f"student after TS (T={temperature:.2f})", logits / temperature, splits.test.y),
                ],
                sd.path / "reliability_student.png",
            )
            result["reliability_png"] = str(png)
        return Trained(_fold(model, temperature, splits), student.spec, sd.key, sd.finish(result))


def _fold(model: nn.Module, temperature: float, splits: Splits) -> nn.Module:
    from edgecompress.calibration import fold_temperature

    return fold_temperature(model, temperature, input_shape=splits.input_shape)
