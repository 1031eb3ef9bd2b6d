"""The decide stage: short seeded trials on val choose the student's loss and chain (``distill.loss.kind: auto``,
``distill.assistants: auto``) before the distill stage trains with the choice (``edgecompress.distill.decide``)."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from edgecompress.pipeline.context import Context, Stage
from edgecompress.pipeline.distill_stages import mac_ratio, member_model
from edgecompress.pipeline.results import DecideResult
from edgecompress.pipeline.rundir import StageDir
from edgecompress.pipeline.train_stages import splits_of

if TYPE_CHECKING:
    import torch.nn as nn


def _decide_key(ctx: Context) -> dict[str, Any]:
    return {
        "distill": ctx.cfg.distill.model_dump(mode="json", exclude={"datafree"}),
        "teacher": ctx.keys["teacher"],
        "data": ctx.keys.get("data"),
        "seed": ctx.cfg.seed,
        "label_smoothing": ctx.cfg.teacher.label_smoothing,
        "students_augment": ctx.cfg.data.augment.model_dump(mode="json"),  # the trials train as the final run does
    }


def _decide_compute(ctx: Context, sd: StageDir) -> DecideResult:
    import time

    from edgecompress.distill.config import MemberSpec
    from edgecompress.distill.decide import decide, final_steps

    dcfg, splits = ctx.cfg.distill, splits_of(ctx)
    if ctx.cfg.teacher.label_smoothing and not dcfg.teacher_label_smoothing:
        dcfg = dcfg.model_copy(update={"teacher_label_smoothing": True})
    student, _ = member_model(ctx, dcfg.student)
    ratio = min(1.0, mac_ratio(ctx, student))
    built: dict[float, nn.Module] = {}

    def make_member(r: float | None) -> nn.Module:
        if r is None:
            return copy.deepcopy(student)
        if r not in built:
            built[r] = member_model(ctx, MemberSpec(prune_ratio=r, round_to=dcfg.student.round_to, name="ta"))[0]
        return copy.deepcopy(built[r])

    started = time.perf_counter()
    d = decide(ctx.models["teacher"], make_member, splits, dcfg, student_ratio=ratio, workdir=sd.path / "trials",
               seed=ctx.cfg.seed, progress=ctx.progress, augment_cfg=ctx.cfg.data.augment,
               teacher_logits=ctx.teacher_logits)  # fmt: skip
    if d.scratch:
        ctx.warn(f"decide: {d.reason}")
    return DecideResult(
        loss=d.loss,
        ratios=d.ratios,
        scratch=d.scratch,
        reason=d.reason,
        trials=[asdict(t) for t in d.trials],
        trial_steps=d.trial_steps,
        subset=d.subset,
        final_steps=final_steps(dcfg, len(splits.train.y) if splits.train is not None else 0),
        seconds=round(time.perf_counter() - started, 3),
        ranking=d.ranking,
        rungs=d.rungs,
        budget_steps=d.budget_steps,
    )


DECIDE = Stage(
    "decide",
    DecideResult,
    key=_decide_key,
    compute=_decide_compute,
    applies=lambda ctx: ctx.cfg.distill.decides,
)


def decided_config(ctx: Context, dcfg: Any) -> tuple[Any, dict[str, Any] | None]:
    """``dcfg`` with the decide stage's choice applied (loss, assistants) and a record of it; unchanged without it."""
    from edgecompress.distill.config import LossConfig, MemberSpec

    res = ctx.results.get("decide")
    if not dcfg.decides or not isinstance(res, DecideResult):
        return dcfg, None
    loss = LossConfig.model_validate(res.loss)
    update: dict[str, Any] = {"loss": loss}
    if res.scratch:
        update["assistants"] = "none"
    elif res.ratios is not None:
        floor = dcfg.student.prune_ratio  # an escalated (larger) student keeps only the assistants above it
        ratios = [r for r in res.ratios if floor is None or r > floor]
        update["assistants"] = [
            MemberSpec(prune_ratio=r, name=f"ta{i + 1}-{r:.2f}", round_to=dcfg.student.round_to)
            for i, r in enumerate(ratios)
        ]
    elif dcfg.assistants == "auto":  # cannot happen (auto always decides ratios); keep direct
        update["assistants"] = "none"
    chosen = next((t["name"] for t in res.trials if t.get("chosen")), None)
    record = {"choice": chosen, "loss": loss.model_dump(mode="json"), "ratios": res.ratios, "scratch": res.scratch,
              "reason": res.reason}  # fmt: skip
    return dcfg.model_copy(update=update), record
