"""The teacher → assistants → student chain (TAKD, Mirzadeh et al., AAAI 2020, arXiv 1902.03393).

The chain is a list of hops, not a class hierarchy: hop i trains member i by distillation from member i − 1
(the teacher for i = 0). Before a model teaches it is temperature-scaled on val (Guo et al., 2017) and teaches with
z / T — calibrated teachers distill better. Every member is reported with accuracy, ECE before/after scaling, NLL,
Brier (test) and fidelity (Stanton et al., 2021: top-1 agreement and mean KL(p_teacher ‖ p_member) on test) against
the original teacher and against its own teacher, both as they taught (z / T). Each hop trains in its own subfolder
of ``workdir``; a finished hop is loaded, not retrained (see ``train_model``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgecompress._io import atomic_write_json
from edgecompress.distill.config import DistillConfig
from edgecompress.distill.evaluate import (
    LogitEnsemble,
    SplitLogits,
    TemperatureScaled,
    compute_metrics,
    fidelity,
    fit_ensemble_weights,
    fit_temperature,
    predict_logits,
)
from edgecompress.distill.gates import QualityGateError, check_student, near_chance
from edgecompress.distill.losses import resolve_loss
from edgecompress.distill.trainer import key_seed, train_model
from edgecompress.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ChainMember = tuple[str, nn.Module]
TA_PER_GAP = 4.5  # one assistant per ~4.5x of MAC ratio between neighbours


@dataclass
class MemberRecord:
    """One model of the chain. Metrics are fractions on the test split unless prefixed ``val_``."""

    name: str
    role: str  # teacher / assistant / student
    teacher: str | None = None  # the model it was distilled from
    temperature: float = 1.0  # fitted on val; the model teaches with z / temperature
    accuracy: float | None = None
    val_accuracy: float | None = None
    nll: float | None = None
    brier: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    val_ece_before: float | None = None
    val_ece_after: float | None = None
    fidelity_agreement: float | None = None  # vs the original teacher
    fidelity_kl: float | None = None
    teacher_agreement: float | None = None  # vs its own teacher
    teacher_kl: float | None = None
    params: int = 0
    macs: int | None = None
    seconds: float | None = None
    best_epoch: int | None = None
    lr: float | None = None  # the peak learning rate it trained with (chosen by the range test with lr: auto)
    events: list[str] = field(default_factory=list)  # training recoveries, one line each (for the report)
    teacher_precision: dict[str, Any] | None = None  # what its KD teacher ran in (``TeacherPrecision.to_dict``)
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: val accuracy, NLL, loss terms
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record without the model."""
        d = asdict(self)
        d.pop("model")
        return d


@dataclass
class ChainResult:
    """Per-member records, teacher first and student last."""

    members: list[MemberRecord]
    ensemble_weights: list[float] | None = None

    @property
    def student(self) -> MemberRecord:
        return self.members[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form without the models."""
        return {"members": [m.to_dict() for m in self.members], "ensemble_weights": self.ensemble_weights}

    to_json = to_dict


def plan_assistant_ratios(student_ratio: float, n: int | None = None) -> list[float]:
    """MAC ratios of the assistants, geometrically spaced between the teacher (1.0) and the student, largest first.

    Args:
        student_ratio: the student's MACs relative to the teacher, in (0, 1].
        n: number of assistants; None picks one per ~4.5x of MAC gap (round(log(1/r) / log 4.5) − 1, at least 0),
            following TAKD's finding that mid-sized assistants close a large gap.
    """
    if not 0 < student_ratio <= 1:
        raise ConfigError(f"student MAC ratio {student_ratio} is outside (0, 1]", "give the student's MACs / teacher's")
    if n is None:
        n = max(0, round(math.log(1 / student_ratio) / math.log(TA_PER_GAP)) - 1)
    if n < 0:
        raise ConfigError(f"n_assistants={n} is negative", "give 0 or more")
    return [student_ratio ** (i / (n + 1)) for i in range(1, n + 1)]


def _count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    try:
        from edgecompress.models import count_macs
    except ImportError:
        return None
    return int(count_macs(model, tuple(input_shape)))


def _labels(splits: Any, name: str) -> Tensor | None:
    split = getattr(splits, name, None)
    return None if split is None else torch.from_numpy(np.asarray(split.y, dtype=np.int64))


@dataclass
class _Evaluated:
    model: nn.Module
    val: Tensor  # raw logits
    test: Tensor | None
    temperature: float = 1.0


def _evaluate(model: nn.Module, splits: Any, known: SplitLogits | None = None) -> _Evaluated:
    test = getattr(splits, "test", None)
    if known is not None and known.val is not None and (test is None or known.test is not None):
        return _Evaluated(model=model, val=known.val, test=None if test is None else known.test)
    return _Evaluated(
        model=model,
        val=predict_logits(model, splits.val.x),
        test=None if test is None else predict_logits(model, test.x),
    )


def _record(rec: MemberRecord, ev: _Evaluated, splits: Any, calibrate: bool) -> float:
    """Fill ``rec`` with the metrics of ``ev``; returns its val accuracy."""
    y_val, y_test = _labels(splits, "val"), _labels(splits, "test")
    assert y_val is not None  # distill_chain checks the val split first
    ev.temperature = fit_temperature(ev.val, y_val) if calibrate else 1.0
    rec.temperature = ev.temperature
    mv, mv_after = compute_metrics(ev.val, y_val), compute_metrics(ev.val / ev.temperature, y_val)
    rec.val_accuracy, rec.val_ece_before, rec.val_ece_after = mv["accuracy"], mv["ece"], mv_after["ece"]
    if ev.test is not None and y_test is not None:
        mt, mt_after = compute_metrics(ev.test, y_test), compute_metrics(ev.test / ev.temperature, y_test)
        rec.accuracy, rec.nll, rec.brier = mt["accuracy"], mt["nll"], mt["brier"]
        rec.ece_before, rec.ece_after = mt["ece"], mt_after["ece"]
    rec.params = sum(p.numel() for p in ev.model.parameters())
    rec.macs = _count_macs(ev.model, tuple(splits.val.x.shape[1:]))
    return mv["accuracy"]


def _teaching(ev: _Evaluated, calibrate: bool) -> tuple[nn.Module, Tensor | None, Tensor]:
    """The module that teaches (z / T when calibrating) and its cached test/val logits."""
    if not calibrate:
        return ev.model, ev.test, ev.val
    t = ev.temperature
    return TemperatureScaled(ev.model, t), None if ev.test is None else ev.test / t, ev.val / t


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "member"


def _as_member(m: Any) -> ChainMember:
    if isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], nn.Module):
        return str(m[0]), m[1]
    if isinstance(getattr(m, "model", None), nn.Module):
        return str(getattr(m, "name", "member")), m.model
    raise ConfigError(f"chain member {m!r} is not (name, nn.Module)", "pass a list of (name, model) tuples")


def distill_chain(
    teacher: nn.Module,
    members: Sequence[ChainMember],
    splits: Any,
    cfg: DistillConfig,
    *,
    workdir: Path,
    seed: int,
    progress: bool = True,
    augment_cfg: Any = None,
    device: str | torch.device | None = None,
    gate: bool = True,
    teacher_logits: SplitLogits | None = None,
) -> ChainResult:
    """Distill ``teacher`` → members[0] → … → members[-1] (the student), one KD hop at a time.

    With ``gate``, a model must pass the quality gate before it teaches: the teacher must not be at chance on val,
    and each assistant must be within ``cfg.max_accuracy_drop`` of the teacher's val accuracy (``distill.gates``).
    The final student is not gated here — the caller does, so that it can escalate or report.

    Args:
        teacher: the trained teacher.
        members: (name, untrained model) pairs, assistants largest first, the student last.
        splits: ``train``/``val`` (and ``test`` for the reported metrics) with ``x``/``y`` arrays.
        cfg: the chain config; ``cfg.train`` and ``cfg.loss`` apply to every hop.
        workdir: one subfolder per hop (resumable); ``chain.json`` holds the records.
        seed: base seed; each hop trains with a seed keyed by its position.
        progress: progress bars in a terminal.
        augment_cfg: passed to ``train_model``.
        device: passed to ``train_model``.
        gate: check the teacher and each assistant before it teaches (off for the short runs of a search).
        teacher_logits: the teacher's raw logits on the splits, when the caller computed them (the pipeline does,
            once per run); the teacher then never runs here.

    Raises:
        QualityGateError: the teacher is at chance, or an assistant failed the gate (its hop record is written).
    """
    workdir = Path(workdir)
    members = [_as_member(m) for m in members]
    if not members:
        raise ConfigError("the chain has no members", "give at least the student")
    if getattr(splits, "val", None) is None:
        raise DataError("distill_chain needs a val split (temperature, selection)", "give data with a val split")
    loss = cfg.loss
    if loss.kind == "auto":
        raise ConfigError(
            "loss.kind 'auto' reached distill_chain: it is decided by trials before the chain trains",
            "decide it first (edgecompress.distill.decide.decide, the pipeline's decide stage) or give a fixed kind",
        )
    loss = resolve_loss(loss)
    if cfg.teacher_label_smoothing and loss.temperature is not None and loss.temperature > 1:
        log.warning(
            "the teacher was trained with label smoothing: distilling at T=1 instead of T=%g (Müller et al., 2019)",
            loss.temperature,
        )
        loss = loss.model_copy(update={"temperature": 1.0})
    calibrate = cfg.calibrate_teachers

    t_ev = _evaluate(teacher, splits, teacher_logits)
    t_rec = MemberRecord(name="teacher", role="teacher", model=teacher)
    teacher_val_accuracy = _record(t_rec, t_ev, splits, calibrate)
    num_classes = int(t_ev.val.shape[1])
    if gate and near_chance(teacher_val_accuracy, num_classes):
        raise QualityGateError(
            f"teacher val accuracy {100 * teacher_val_accuracy:.1f} % on {num_classes} classes is near chance "
            f"({100 / num_classes:.1f} %): it cannot teach",
            "check the class order (data.classes), the normalization (data.mean/std must match the teacher's "
            "training) and the checkpoint",
        )
    records: list[MemberRecord] = [t_rec]
    assistants: list[tuple[str, _Evaluated]] = []
    _, ref_test, _ = _teaching(t_ev, calibrate)  # the original teacher as it taught
    current = (t_rec.name, t_ev)
    weights: list[float] | None = None
    for i, (name, model) in enumerate(members):
        role = "student" if i == len(members) - 1 else "assistant"
        ensemble_hop = role == "student" and cfg.ensemble and len(assistants) >= 1
        if ensemble_hop:
            teach_parts = [_teaching(ev, calibrate) for _, ev in assistants]
            y_val = _labels(splits, "val")
            assert y_val is not None  # checked at the top
            weights = fit_ensemble_weights([val for _, _, val in teach_parts], y_val)
            teach: nn.Module = LogitEnsemble([m for m, _, _ in teach_parts], weights)
            tests = [tst for _, tst, _ in teach_parts if tst is not None]  # all or none: same splits
            teach_test: Tensor | None = None
            if len(tests) == len(teach_parts):
                mixed = sum(w * z for w, z in zip(weights, tests, strict=True))
                assert isinstance(mixed, Tensor)  # at least one assistant
                teach_test = mixed
            teach_name = "ensemble(" + ",".join(n for n, _ in assistants) + ")"
            log.info("student learns from %s with weights %s (fitted on val)", teach_name, weights)
        else:
            teach, teach_test, _ = _teaching(current[1], calibrate)
            teach_name = current[0]
        hop_dir = workdir / f"{i + 1:02d}-{_safe(name)}"
        known_train = None  # the first hop's KD targets, from the caller's teacher logits (z / T)
        if i == 0 and teacher_logits is not None and teacher_logits.train is not None and not ensemble_hop:
            known_train = teacher_logits.train / (t_ev.temperature if calibrate else 1.0)
        started = time.perf_counter()
        res = train_model(
            model,
            splits,
            cfg.train,
            workdir=hop_dir,
            seed=key_seed(seed, "hop", i),
            teacher=teach,
            loss=loss,
            augment_cfg=augment_cfg,
            progress=progress,
            device=device,
            teacher_precision=cfg.teacher_precision,
            teacher_targets=cfg.teacher_targets,
            teacher_logits=known_train,
        )
        ev = _evaluate(res.model, splits)
        rec = MemberRecord(
            name=name,
            role=role,
            teacher=teach_name,
            model=res.model,
            best_epoch=res.best_epoch,
            lr=res.lr,
            events=list(res.events),
            teacher_precision=res.teacher_precision,
            history=list(res.history),
        )
        val_accuracy = _record(rec, ev, splits, calibrate)
        rec.seconds = sum(h.get("seconds", 0.0) for h in res.history) or time.perf_counter() - started
        if ev.test is not None and ref_test is not None:
            assert teach_test is not None  # every member is evaluated on the same splits
            f0, f1 = fidelity(ev.test, ref_test), fidelity(ev.test, teach_test)
            rec.fidelity_agreement, rec.fidelity_kl = f0["agreement"], f0["kl"]
            rec.teacher_agreement, rec.teacher_kl = f1["agreement"], f1["kl"]
        atomic_write_json(hop_dir / "record.json", rec.to_dict())
        log.info("hop %d %s: val_acc %.4f test_acc %s", i + 1, name, rec.val_accuracy, rec.accuracy)
        records.append(rec)
        if gate and role == "assistant":  # a model below the gate must not teach the next hop
            check_student(val_accuracy, teacher_val_accuracy, num_classes, max_drop=cfg.max_accuracy_drop, name=name)
        if role == "assistant":
            assistants.append((name, ev))
        current = (name, ev)
    result = ChainResult(members=records, ensemble_weights=weights)
    atomic_write_json(workdir / "chain.json", result.to_dict())
    return result


@dataclass
class SearchResult:
    """Outcome of :func:`search_assistant`: the best assistant MAC ratio and every candidate's scores."""

    best_ratio: float
    candidates: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def search_assistant(
    teacher: nn.Module,
    make_member: Callable[[float], nn.Module],
    student_factory: Callable[[], nn.Module],
    candidates: Sequence[float],
    splits: Any,
    cfg: DistillConfig,
    *,
    workdir: Path,
    seed: int,
    progress: bool = True,
    augment_cfg: Any = None,
    device: str | torch.device | None = None,
) -> SearchResult:
    """Try each assistant MAC ratio on a short budget (teacher → TA → student) and keep the best by student val acc.

    Each candidate trains for ``cfg.search_epochs`` epochs per hop in ``workdir/ta-<ratio>``; ties go to the larger
    TA. Model construction is seeded per candidate, so a rerun resumes finished candidates.
    """
    if not candidates:
        raise ConfigError("no assistant candidates to search", "give search_candidates, e.g. [0.5, 0.25]")
    epochs = cfg.search_epochs
    train = cfg.train.model_copy(update={"epochs": epochs, "warmup_epochs": min(cfg.train.warmup_epochs, epochs)})
    short = cfg.model_copy(update={"train": train, "ensemble": False})
    rows: list[dict[str, float]] = []
    for ratio in sorted(candidates, reverse=True):
        torch.manual_seed(key_seed(seed, "search", float(ratio)))
        pair = [(f"ta-{ratio:g}", make_member(ratio)), ("student", student_factory())]
        chain = distill_chain(
            teacher,
            pair,
            splits,
            short,
            workdir=Path(workdir) / f"ta-{ratio:g}",
            seed=seed,
            progress=progress,
            augment_cfg=augment_cfg,
            device=device,
            gate=False,  # a short candidate run that misses the gate just scores low
        )
        ta, st = chain.members[1], chain.members[2]
        assert ta.val_accuracy is not None and st.val_accuracy is not None  # distill_chain always records them
        rows.append(
            {"ratio": float(ratio), "ta_val_accuracy": ta.val_accuracy, "student_val_accuracy": st.val_accuracy}
        )
        log.info("assistant ratio %g: TA val %.4f, student val %.4f", ratio, ta.val_accuracy, st.val_accuracy)
    best = max(rows, key=lambda r: r["student_val_accuracy"])  # first max = larger TA on ties
    result = SearchResult(best_ratio=best["ratio"], candidates=rows)
    atomic_write_json(Path(workdir) / "search.json", result.to_dict())
    return result
