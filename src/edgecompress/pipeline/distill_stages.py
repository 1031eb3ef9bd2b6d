"""The distillation half of the training stages: the teacher-assistant search and the distillation chain (or the
data-free run), each gated on val before its student is used."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress._io import atomic_path
from edgecompress.errors import ModelError
from edgecompress.pipeline import deploy_only
from edgecompress.pipeline.context import Context, Stage, metrics_of, predict_logits
from edgecompress.pipeline.results import DistillResult, SearchResult, TeacherResult
from edgecompress.pipeline.rundir import StageDir
from edgecompress.pipeline.train_stages import build, model_size, rebuild, splits_of, val_accuracy

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------- assistant search


def member_model(ctx: Context, member: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A chain member: given by its own spec, or cut from the teacher by structured pruning."""
    from edgecompress.models import prune_search

    splits = splits_of(ctx)
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


def mac_ratio(ctx: Context, model: nn.Module) -> float:
    """``model``'s MACs relative to the teacher's."""
    from edgecompress.models import count_macs

    return count_macs(model, splits_of(ctx).input_shape) / max(1, ctx.result("teacher", TeacherResult).macs)


def _search_key(ctx: Context) -> dict[str, Any]:
    dcfg = ctx.cfg.distill
    return {
        "distill": dcfg.model_dump(mode="json", exclude={"datafree"}),
        "teacher": ctx.keys["teacher"],
        # "students_augment", not "augment": runs before this key trained their students without augmentation
        "students_augment": ctx.cfg.data.augment.model_dump(mode="json"),
        "seed": ctx.cfg.seed,
    }


def _search_compute(ctx: Context, sd: StageDir) -> SearchResult:
    from edgecompress.distill.chain import search_assistant
    from edgecompress.models import prune_to_ratio

    dcfg, splits = ctx.cfg.distill, splits_of(ctx)
    ratio = mac_ratio(ctx, member_model(ctx, dcfg.student)[0])
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
        lambda: member_model(ctx, dcfg.student)[0],
        candidates,
        splits,
        dcfg,
        workdir=sd.path,
        seed=ctx.cfg.seed,
        augment_cfg=ctx.cfg.data.augment,
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


def _plan_members(ctx: Context, dcfg: Any) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    from edgecompress.distill.chain import plan_assistant_ratios
    from edgecompress.distill.config import MemberSpec

    student, student_spec = member_model(ctx, dcfg.student)
    assistants: Any = dcfg.assistants
    if assistants == "planned":
        assistants = [
            MemberSpec(prune_ratio=r, name=f"ta{i + 1}-{r:.2f}", round_to=dcfg.student.round_to)
            for i, r in enumerate(plan_assistant_ratios(mac_ratio(ctx, student), dcfg.n_assistants))
        ]
    elif assistants == "search":
        found = ctx.result("search", SearchResult).chosen_ratio
        assistants = [] if found is None else [MemberSpec(prune_ratio=found, name=f"ta-{found:.2f}")]
    elif assistants == "none":
        assistants = []
    members = []
    for i, m in enumerate(assistants):
        model, spec = member_model(ctx, m)
        members.append((m.name or f"ta{i + 1}", model, spec))
    members.append((dcfg.student.name or "student", student, student_spec))
    return members


def _distill_key(ctx: Context) -> dict[str, Any]:
    if ctx.cfg.deploy_only:  # distill: {student: none}: the teacher ships as it is
        return deploy_only.key(ctx)
    return {
        "distill": ctx.cfg.distill.model_dump(mode="json"),
        "teacher": ctx.keys["teacher"],
        "search": ctx.keys.get("search"),
        "decide": ctx.keys.get("decide"),
        "seed": ctx.cfg.seed,
        # "students_augment", not "augment": runs before this key trained their students without augmentation
        "students_augment": ctx.cfg.data.augment.model_dump(mode="json"),
        "label_smoothing": ctx.cfg.teacher.label_smoothing,
    }


class _Trained:
    """One attempt's chain that passed the gate: what the scratch baseline and the verdict need."""

    def __init__(self, chain: Any, members: list[Any], dcfg: Any, decided: Any, member: Any, student_val: float | None,
                 macs: int, history: list[dict[str, Any]]) -> None:  # fmt: skip
        self.chain, self.members, self.dcfg, self.decided, self.member = chain, members, dcfg, decided, member
        self.student_val, self.macs, self.history = student_val, macs, history


def _distill_compute(ctx: Context, sd: StageDir) -> DistillResult:
    """The chain, then the quality gate on val, then the scratch baseline and the verdict.

    With ``on_gate_failure: escalate`` (the default) a student that fails the gate is trained again — twice the epochs
    when it was still improving, else the next larger pruned student — within ``escalation_budget`` x the first
    attempt's time (``distill.escalation``); every attempt is recorded.
    """
    import time

    from edgecompress.distill.escalation import Attempt, attempts_line, next_attempt
    from edgecompress.distill.gates import QualityGateError

    dcfg = ctx.cfg.distill
    if ctx.cfg.deploy_only:  # distill: {student: none}: the teacher ships as it is
        return deploy_only.compute(ctx, sd)
    if dcfg.datafree is not None:
        return _datafree(ctx, sd)
    member, train, why = dcfg.student, dcfg.train, "configured"
    attempts: list[Attempt] = []
    teacher_val = ctx.result("teacher", TeacherResult).val_accuracy
    while True:
        started = time.perf_counter()
        try:
            done = _distill_chain(ctx, sd, member, train, len(attempts))
        except QualityGateError as exc:
            attempts.append(_attempt(len(attempts), member, train, None, exc, teacher_val, started, why))
            spent = sum(a.seconds for a in attempts)
            nxt = None
            if dcfg.on_gate_failure == "escalate":
                nxt = next_attempt(attempts[-1], attempts[0], spent, history=exc.history,
                                   budget=dcfg.escalation_budget)  # fmt: skip
            if nxt is None:
                _write_attempts(sd, attempts)
                if len(attempts) == 1:
                    raise
                raise QualityGateError(
                    f"{exc.problem} — after {len(attempts)} attempts ({attempts_line(attempts)}), the next would pass "
                    f"the escalation budget of {dcfg.escalation_budget:g}x the first attempt's "
                    f"{attempts[0].seconds:.0f} s",
                    f"{exc.fix or 'a bigger student or more epochs'}; or raise distill.escalation_budget",
                ) from exc
            ctx.warn(f"student attempt {len(attempts)} failed the quality gate ({exc.problem}); next: {nxt.why}")
            member = member.model_copy(update={"prune_ratio": nxt.prune_ratio})
            train = train.model_copy(update={"epochs": nxt.epochs})
            why = nxt.why
            continue
        attempts.append(_attempt(len(attempts), member, train, done, None, teacher_val, started, why))
        _write_attempts(sd, attempts)
        return _finish_distill(ctx, sd, done, attempts)


def _attempt(index: int, member: Any, train: Any, done: _Trained | None, exc: Any, teacher_val: float | None,
             started: float, why: str) -> Any:  # fmt: skip
    import time

    from edgecompress.distill.escalation import Attempt

    return Attempt(
        index=index,
        prune_ratio=member.prune_ratio,
        epochs=train.epochs,
        macs=None if done is None else done.macs,
        val_accuracy=done.student_val if done is not None else getattr(exc, "accuracy", None),
        teacher_val_accuracy=teacher_val,
        passed=done is not None,
        seconds=round(time.perf_counter() - started, 3),
        why=why,
        problem=None if exc is None else exc.problem,
    )


def _write_attempts(sd: StageDir, attempts: list[Any]) -> None:
    from edgecompress._io import atomic_write_json

    atomic_write_json(sd.path / "attempts.json", [a.to_dict() for a in attempts])


def _attempt_dir(sd: StageDir, member: Any, train: Any, index: int) -> Any:
    if index == 0:
        return sd.path / "chain"
    ratio = "model" if member.prune_ratio is None else f"{member.prune_ratio:g}"
    return sd.path / f"chain-{index}-r{ratio}-e{train.epochs}"


def _distill_chain(ctx: Context, sd: StageDir, member: Any, train: Any, index: int) -> _Trained:
    """One attempt: plan the members, distill the chain, gate the student on val (raises QualityGateError with the
    student's val accuracy and history attached)."""
    from edgecompress.distill import distill_chain
    from edgecompress.distill.gates import QualityGateError, check_student
    from edgecompress.models import count_macs
    from edgecompress.pipeline.decide_stage import decided_config

    splits = splits_of(ctx)
    dcfg, decided = decided_config(ctx, ctx.cfg.distill.model_copy(update={"student": member, "train": train}))
    members = _plan_members(ctx, dcfg)
    if ctx.cfg.teacher.label_smoothing and not dcfg.teacher_label_smoothing:
        dcfg = dcfg.model_copy(update={"teacher_label_smoothing": True})
    chain = distill_chain(
        ctx.models["teacher"],
        [(n, m) for n, m, _ in members],
        splits,
        dcfg,
        workdir=_attempt_dir(sd, member, train, index),
        seed=ctx.cfg.seed,
        augment_cfg=ctx.cfg.data.augment,
        progress=ctx.progress,
        teacher_logits=ctx.teacher_logits,
    )
    student = chain.members[-1].model
    teacher_val = ctx.result("teacher", TeacherResult).val_accuracy
    student_val = val_accuracy(student, splits)
    history = list(chain.members[-1].history)
    if student_val is not None and teacher_val is not None:
        try:
            check_student(student_val, teacher_val, splits.num_classes, max_drop=dcfg.max_accuracy_drop,
                          name=members[-1][0], prune_ratio=member.prune_ratio)  # fmt: skip
        except QualityGateError as exc:
            raise QualityGateError(exc.problem, exc.fix, accuracy=student_val, history=history) from None
    macs = int(count_macs(student, splits.input_shape))
    return _Trained(chain, members, dcfg, decided, member, student_val, macs, history)


def _finish_distill(ctx: Context, sd: StageDir, done: _Trained, attempts: list[Any]) -> DistillResult:
    """The scratch baseline and the verdict (which student ships), then the files and the result."""
    from edgecompress.models import save_state

    splits = splits_of(ctx)
    chain, members = done.chain, done.members
    student, student_val = chain.members[-1].model, done.student_val
    baseline = None
    scratch_only = done.dcfg.loss.kind == "ce" or (done.decided is not None and done.decided["scratch"])
    if scratch_only:  # no teacher in the loop: the shipped student is the scratch student
        baseline = {"val_accuracy": student_val, "same_as_student": True, "shipped": True,
                    **_test_metrics(student, splits)}  # fmt: skip
    elif ctx.cfg.distill.scratch_baseline:
        base_model, baseline = _scratch_baseline(ctx, sd, done.dcfg, done.member, len(members) - 1)
        verdict = _verdict(student, base_model, splits, chain.members[-1].fidelity_agreement)
        baseline.update(verdict.to_dict())
        baseline["shipped"] = verdict.shipped == "scratch"
        if verdict.shipped == "scratch":
            ctx.warn(f"the student trained on labels alone is significantly better: {verdict.reason}")
            student, student_val = base_model, baseline["val_accuracy"]
        else:
            log.info("verdict: %s", verdict.reason)
    teacher_val = ctx.result("teacher", TeacherResult).val_accuracy
    save_state(student, sd.path / "student.pt")
    for rec in chain.members[1:-1]:  # the assistants, kept for inspection and the report
        save_state(rec.model, sd.path / f"{rec.name}.pt")
    for rec in chain.members[1:]:
        for event in getattr(rec, "events", None) or []:
            ctx.warn(f"{rec.name} training: {event}")
    ctx.models["student"] = student
    return DistillResult(
        student_spec=members[-1][2],
        chain=chain.to_json(),
        member_specs={n: s for n, _, s in members},
        student_val_accuracy=student_val,
        teacher_val_accuracy=teacher_val,
        decided=done.decided,
        scratch_baseline=baseline,
        attempts=[a.to_dict() for a in attempts],
    )


def _verdict(distilled: nn.Module, scratch: nn.Module, splits: Any, fidelity: float | None) -> Any:
    """Distilled vs scratch on val (decides) and test (reported), paired."""
    from edgecompress.distill.verdict import decide_shipping, paired_difference

    def correct(model: nn.Module, split: Any) -> np.ndarray:
        return np.asarray(predict_logits(model, split.x).argmax(1) == np.asarray(split.y))

    val = paired_difference(correct(distilled, splits.val), correct(scratch, splits.val))
    test = None
    if splits.test is not None and len(splits.test.y):
        test = paired_difference(correct(distilled, splits.test), correct(scratch, splits.test))
    return decide_shipping(val, test, fidelity=fidelity)


def _test_metrics(model: nn.Module, splits: Any) -> dict[str, Any]:
    if splits.test is None:
        return {"test": None}
    return {"test": metrics_of(predict_logits(model, splits.test.x), splits.test.y)}


def _scratch_baseline(ctx: Context, sd: StageDir, dcfg: Any, member: Any, hop: int) -> tuple[nn.Module, dict[str, Any]]:
    """The same student trained on labels alone (ce, no teacher) with the final budget and seed: the bar a
    distilled student must clear."""
    from edgecompress.distill import train_model
    from edgecompress.distill.config import LossConfig
    from edgecompress.distill.trainer import key_seed

    splits = splits_of(ctx)
    model, _ = member_model(ctx, member)
    first = member.prune_ratio == ctx.cfg.distill.student.prune_ratio and dcfg.train == ctx.cfg.distill.train
    folder = "scratch-baseline" if first else f"scratch-baseline-r{member.prune_ratio}-e{dcfg.train.epochs}"
    res = train_model(model, splits, dcfg.train, workdir=sd.path / folder,
                      seed=key_seed(ctx.cfg.seed, "hop", hop), loss=LossConfig(kind="ce"),
                      augment_cfg=ctx.cfg.data.augment, progress=ctx.progress)  # fmt: skip
    return res.model, {"val_accuracy": val_accuracy(res.model, splits), "same_as_student": False, "shipped": False,
                       **_test_metrics(res.model, splits)}  # fmt: skip


def _datafree(ctx: Context, sd: StageDir) -> DistillResult:
    from edgecompress.distill.datafree import datafree_distill
    from edgecompress.distill.datafree.grid import sample_grid
    from edgecompress.models import save_state

    splits = splits_of(ctx)
    teacher = ctx.models["teacher"]
    student, spec = member_model(ctx, ctx.cfg.distill.student)
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
    member: dict[str, Any] = {
        "name": "student",
        "role": "student",
        "teacher": "teacher",
        **model_size(res.student, splits),
    }
    if splits.test is not None:
        t_logits = predict_logits(teacher, splits.test.x)
        s_logits = predict_logits(res.student, splits.test.x)
        member.update(metrics_of(s_logits, splits.test.y))
        member["fidelity_agreement"] = float((t_logits.argmax(1) == s_logits.argmax(1)).mean())
    student_val = val_accuracy(res.student, splits)
    teacher_val = ctx.result("teacher", TeacherResult).val_accuracy
    if student_val is not None and teacher_val is not None:
        from edgecompress.distill.gates import check_student

        check_student(student_val, teacher_val, splits.num_classes, max_drop=ctx.cfg.distill.max_accuracy_drop,
                      prune_ratio=ctx.cfg.distill.student.prune_ratio)  # fmt: skip
    ctx.models["student"] = res.student
    return DistillResult(
        student_spec=spec,
        chain={"members": [member]},
        datafree=res.summary(),
        sample_grid=str(grid),
        curve_png=str(res.figures["accuracy_vs_rounds"]) if "accuracy_vs_rounds" in res.figures else None,
        bank=str(bank),
        student_val_accuracy=student_val,
        teacher_val_accuracy=teacher_val,
    )


def _distill_load(ctx: Context, sd: StageDir, res: DistillResult) -> None:
    ctx.models["student"] = rebuild(ctx, res.student_spec, sd.path / "student.pt", splits_of(ctx))


DISTILL = Stage("distill", DistillResult, key=_distill_key, compute=_distill_compute, load=_distill_load)
