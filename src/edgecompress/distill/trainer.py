"""Train one network (from labels or by distillation): seeded, resumable, selected on val, DDP-aware.

Determinism: every source of randomness is keyed by (seed, epoch[, rank]) — the shuffling permutation, the
augmentation generator and the global torch seed (dropout) are re-derived at the start of each epoch. A checkpoint
written at the end of each epoch therefore holds all the state needed to continue (model, optimizer, step, best
weights, history); a run killed mid-epoch and called again repeats that epoch and ends bit-identical on CPU.

Self-tuning (see ``distill.lr_range`` and ``distill.recovery``): with ``train.lr: auto`` the peak learning rate comes
from a short seeded range test on a copy of the model; every step's gradient norm is clipped to ``train.grad_clip``;
an epoch whose loss turns NaN/Inf, whose val NLL explodes or whose val accuracy is at chance is undone — the last
good state is restored and the learning rate lowered — at most ``train.max_recoveries`` times, each recovery an
event in the result. The chosen rate, the recovery count, the learning-rate scale, the events and the state to go
back to are all in the checkpoint, so a resumed run stays bit-identical to an uninterrupted one.

Teacher-logit caches (the teacher's forward dominates KD cost):
* Without augmentation the teacher sees each training sample unchanged every epoch, and in eval mode it is a pure
  function of its input, so its logits are computed once per sample (one batched ``inference_mode`` pass) and
  indexed per step. Valid for any number of epochs and across a resume.
* With augmentation the views differ each epoch, so each step runs the teacher on its batch — on CPU through a
  frozen ONNX Runtime graph of it (BN folded, fused kernels; checked against eager, ``distill.fast_eval``), or in
  bf16 where the CPU has AMX, the teacher is big enough and bf16 is faithful (``distill.teacher_precision``;
  the choice is in the checkpoint, so a resume keeps it).
* Evaluation logits (val each epoch, the untrained reference, the cache) go through the same frozen graph when the
  split has >= ``fast_eval.MIN_ROWS`` rows, else eager ``inference_mode``. On CPU the trained model runs channels-last.
  All of these are pure functions of their inputs, so seeding and resumes stay bit-identical; ``fast=False`` is eager.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress._io import atomic_path, atomic_write_json, sha256_json
from edgecompress.distill.config import LossConfig, TrainConfig
from edgecompress.distill.evaluate import model_device, predict_logits
from edgecompress.distill.fast_eval import (
    Runner,
    channels_last_problem,
    fast_logits,
    frozen_runner,
    in_layout,
    set_layout,
)
from edgecompress.distill.inputs import data_hash, split_arrays
from edgecompress.distill.losses import build_loss
from edgecompress.distill.lr_range import LR_BOUNDS, MAX_LR, SAFE_LR, lr_range_test
from edgecompress.distill.progress import Progress
from edgecompress.distill.recovery import LR_FACTOR, at_chance, cpu_clone, epoch_problem, left_chance, majority_share
from edgecompress.distill.steps import (
    epoch_batches,
    key_seed,
    keyed_generator,
    lr_at,
    make_augment,
    make_optimizer,
    probe_batches,
)
from edgecompress.distill.teacher_precision import (
    FIDELITY_ROWS,
    TeacherPrecision,
    choose_teacher_runner,
    resume_runner,
)
from edgecompress.errors import CheckpointError, DataError, TrainingError
from edgecompress.models.checkpoint import state_hash

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RESULT = "train_result.json"
_make_augment, _make_optimizer = make_augment, make_optimizer  # the old private names (now in distill.steps)


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`; ``model`` holds the best-val weights."""

    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    lr: float | None = None  # the peak learning rate before any recovery lowered it (chosen when train.lr is auto)
    lr_range: dict[str, Any] | None = None  # the range test's record (``LRRangeResult.to_dict``) when lr is auto
    teacher_precision: dict[str, Any] | None = None  # what the KD teacher ran in (``TeacherPrecision.to_dict``)
    events: list[str] = field(default_factory=list)  # one line per recovery, with the numbers, for the report
    recoveries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the model)."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "resumed_from_epoch": self.resumed_from_epoch,
            "seconds": self.seconds,
            "lr": self.lr,
            "lr_range": self.lr_range,
            "teacher_precision": self.teacher_precision,
            "recoveries": self.recoveries,
            "events": self.events,
            "history": self.history,
        }


def _dist_context(device: torch.device) -> tuple[int, int]:
    """(rank, world size); initializes the process group from env (torchrun) when WORLD_SIZE > 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}", f"delete {path} to start this run over") from exc


def _training_layout(model: nn.Module, sample: Tensor, fast: bool) -> tuple[torch.memory_format, str | None]:
    """Channels-last when ``fast`` on CPU and the model trains in it (a probe step on a copy), else NCHW; the second
    value is the one-line event when the model refused it (a user's ``x.view`` after a conv, say)."""
    if not fast or model_device(model).type != "cpu" or sample.ndim != 4 or len(sample) < 2:
        return torch.contiguous_format, None
    problem = channels_last_problem(model, sample)
    if problem is None:
        return torch.channels_last, None
    return torch.contiguous_format, f"channels-last training refused by the model ({problem}): trained in NCHW"


def train_model(
    model: nn.Module,
    splits: Any,
    cfg: TrainConfig,
    *,
    workdir: Path,
    seed: int,
    teacher: nn.Module | None = None,
    loss: LossConfig | None = None,
    augment_cfg: Any = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    teacher_logits: Tensor | None = None,
    fast: bool = True,
    teacher_precision: str = "auto",
    teacher_targets: str = "online",
) -> TrainResult:
    """Train ``model`` on ``splits.train``, select the epoch with the best ``splits.val`` accuracy, return it loaded.

    Args:
        model: the network to train (modified in place; ends with the best-val weights).
        splits: anything with ``train`` and ``val`` holding ``x`` (float32 NCHW, an array or a lazily-normalized
            view indexed per batch) and ``y`` (int64); test is not read.
        cfg: optimizer, schedule, budget and self-tuning (``lr: auto``, ``grad_clip``, ``max_recoveries``).
        workdir: folder of ``checkpoint.pt`` (written atomically every epoch) and ``train_result.json``; a call
            with an existing checkpoint of the same run resumes from it, a finished one returns at once.
        seed: keys every random stream (the range test's too).
        teacher: the distillation teacher (eval mode, frozen); its logits are the targets of ``loss``.
        loss: the loss; None means cross-entropy without a teacher and Hinton KD (defaults) with one.
        augment_cfg: an object with ``crop_pad``/``hflip`` (``data.AugmentConfig``) or a callable ``(x, generator)``;
            used when ``cfg.augment`` is true.
        progress: show a progress bar (rich, only when stderr is a terminal; otherwise epochs are logged).
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.
        teacher_logits: ``teacher``'s logits on the train split, row i for sample i, as the teacher module passed
            here computes them; used instead of running the teacher when there is no augmentation (callers that
            train several students from one teacher compute them once).
        fast: on CPU, run inference (teacher, val, logit cache) through a frozen ONNX Runtime graph checked against
            eager, and train in channels-last layout (``distill.fast_eval``; each falls back to eager NCHW when
            unsafe). False: eager NCHW throughout (the reference for comparisons).
        teacher_precision: with augmentation on CPU, what the teacher runs in: ``auto`` (bf16 with AMX, when the teacher
            has >= 10 M MACs and bf16 is faithful), ``fp32`` or ``bf16`` (``distill.teacher_precision``); ignored
            with ``fast=False``.
        teacher_targets: with augmentation, ``online`` runs the teacher on every augmented batch (its targets match
            what the student sees); ``clean`` computes its logits once on the un-augmented images (or takes
            ``teacher_logits``) and the student learns them on its augmented views — one teacher pass for the whole
            run (``distill.teacher_targets``).

    Raises:
        TrainingError: the loss became NaN/Inf and no recovery is left (names epoch and step; the last good
            checkpoint is kept); or ``teacher_precision`` is bf16 and the bf16 teacher is not faithful.
        CheckpointError: ``workdir`` holds a checkpoint of a different run.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    dev = torch.device(device) if device is not None else _default_device()
    rank, world = _dist_context(dev)
    if loss is None:
        loss = LossConfig() if teacher is not None else LossConfig(kind="ce")
    loss_fn = build_loss(loss, label_smoothing=cfg.label_smoothing, has_teacher=teacher is not None)
    if loss.kind == "ce":
        teacher = None
    x_tr, y_tr = split_arrays(splits, "train")
    x_val, y_val = split_arrays(splits, "val")
    if len(x_tr) < 2 * world:
        raise DataError(f"train split has {len(x_tr)} samples for {world} process(es)", "give at least 2 per process")
    augment = make_augment(augment_cfg) if cfg.augment else None
    n_steps = len(epoch_batches(len(x_tr), cfg, seed, 0, 0, world))

    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    sample = x_tr.rows(0, min(8, len(x_tr))).to(dev)
    layout, layout_event = _training_layout(model, sample, fast)
    set_layout(model, layout)
    if teacher_targets not in ("online", "clean"):
        raise ValueError(f"teacher_targets must be 'online' or 'clean', got {teacher_targets!r}")
    clean = teacher is not None and teacher_targets == "clean"
    # the teacher runs on every augmented batch
    per_step = fast and teacher is not None and augment is not None and not clean
    teacher_run = frozen_runner(teacher, sample) if per_step and teacher is not None else None

    def logits(m: nn.Module, x: Any, runner: Runner | None = None) -> Tensor:
        return fast_logits(m, x, runner=runner) if fast else predict_logits(m, x)

    fingerprint = sha256_json(
        {
            "train": cfg.model_dump(mode="json"),
            "loss": loss.model_dump(mode="json"),
            "seed": seed,
            "world": world,
            "shapes": [(k, list(v.shape)) for k, v in model.state_dict().items()],
            "teacher": state_hash(teacher) if teacher is not None else None,
            "data": data_hash(splits, [x_tr, y_tr, x_val, y_val]),
            "augment": None if augment is None else repr(augment_cfg),
            # only when pinned, so that the fingerprints of default runs are those of earlier versions
            **({} if teacher_precision == "auto" else {"teacher_precision": teacher_precision}),
            **({"teacher_targets": teacher_targets} if clean and augment is not None else {}),
        }
    )
    opt = make_optimizer(model, cfg)

    # ``cur``: where the run stands (after cur["epoch"] epochs); ``restore``: the last good state, to go back to.
    ckpt_path = workdir / CHECKPOINT
    majority = majority_share(y_val)  # the accuracy of a constant guess: the floor of "above chance"
    from_scratch = False  # at chance before training (decides the rate of an inconclusive range test)
    ck = _load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ck is not None:
        if ck.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"{ckpt_path} belongs to a different run (config, seed, data, model shape or teacher changed)",
                "use a fresh workdir, or delete the checkpoint to start over",
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        cur = {k: ck[k] for k in ("epoch", "history", "min_nll", "accuracy")}
        cur["best"] = {
            "epoch": ck["best_epoch"],
            "acc": ck["best_acc"],
            "nll": ck["best_nll"],
            "state": ck["best_state"],
        }
        restore = ck["restore"] or {**cur, "model": cpu_clone(ck["model"]), "optimizer": cpu_clone(ck["optimizer"])}
        peak_lr, lr_range, lr_scale = float(ck["peak_lr"]), ck["lr_range"], float(ck["lr_scale"])
        recoveries, events = int(ck["recoveries"]), list(ck["events"])
        precision = TeacherPrecision.from_dict(ck["teacher_precision"]) if ck.get("teacher_precision") else None
        log.info("resuming %s at epoch %d/%d", workdir, cur["epoch"], cfg.epochs)
    else:
        z0 = logits(model, x_val)  # the untrained state: the first reference for NLL and chance
        nll0 = F.cross_entropy(z0, y_val).item()
        cur = {
            "epoch": 0,
            "history": [],
            "min_nll": nll0 if math.isfinite(nll0) else math.inf,
            "accuracy": (z0.argmax(1) == y_val).float().mean().item(),
            "best": {"epoch": -1, "acc": -1.0, "nll": math.inf, "state": None},
        }
        restore = None
        from_scratch = at_chance(cur["accuracy"], z0.shape[1], len(y_val), majority)
        peak_lr = math.nan if cfg.lr == "auto" else float(cfg.lr)  # nan: chosen by the range test below
        lr_range, lr_scale, recoveries, events = None, 1.0, 0, [layout_event] if layout_event else []
        precision = None
    if per_step and teacher is not None:
        if precision is not None:  # the precision this run started with, not timed again
            teacher_run = resume_runner(teacher, teacher_run, precision)
        else:
            teacher_run, precision = choose_teacher_runner(
                teacher, x_tr.rows(0, FIDELITY_ROWS).to(dev), teacher_run, teacher_precision,
                batch_size=cfg.batch_size,
            )  # fmt: skip
    start_epoch = int(cur["epoch"])

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    cache = None
    if teacher is not None and (augment is None or clean) and start_epoch < cfg.epochs:
        if teacher_logits is not None and tuple(teacher_logits.shape[:1]) != (len(x_tr),):
            raise DataError(
                f"teacher_logits has {teacher_logits.shape[0]} rows for {len(x_tr)} training samples",
                "pass the teacher's logits on exactly the train split, in its order",
            )
        # once per sample: the inputs never change (without augmentation), or the targets are the clean images'
        cache = (teacher_logits if teacher_logits is not None else logits(teacher, x_tr)).to(dev)

    def terms_of(m: nn.Module, idx: Tensor, aug_gen: torch.Generator) -> dict[str, Tensor]:
        xb, yb = x_tr.take(idx), y_tr[idx].to(dev)
        if augment is not None:
            xb = augment(xb, aug_gen)
        xb = xb.to(dev)
        zt = None
        if cache is not None:
            zt = cache[idx.to(dev)]
        elif teacher_run is not None:  # the teacher sees this augmented batch (frozen graph, or bf16)
            zt = teacher_run(xb).to(dev)
        elif teacher is not None:
            with torch.inference_mode():
                zt = teacher(xb)
            zt = zt.clone()
        return loss_fn(m(in_layout(xb, layout)), zt, yb)

    if ck is None and cfg.lr == "auto":
        gen = keyed_generator(seed, "lr_range", "augment")
        probe = lr_range_test(
            model,
            lambda m, idx: terms_of(m, idx, gen)["loss"],
            probe_batches(len(x_tr), cfg.batch_size, cfg.lr_range_steps, seed),
            lambda m: make_optimizer(m, cfg),
            lr_min=LR_BOUNDS[cfg.optimizer][0],
            lr_max=LR_BOUNDS[cfg.optimizer][1],
            safe_lr=SAFE_LR[cfg.optimizer],
            max_lr=MAX_LR[cfg.optimizer],
            grad_clip=cfg.grad_clip,
            seed=key_seed(seed, "lr_range", "torch"),
            # from scratch (at chance before training): an inconclusive probe is a plateau, left with a large rate
            plateau_lr=MAX_LR[cfg.optimizer] if from_scratch else None,
        )
        peak_lr, lr_range = probe.lr, probe.to_dict()
        if world > 1:  # every rank probed the same data; rank 0's choice holds
            t = torch.tensor([peak_lr], dtype=torch.float64, device=dev)
            torch.distributed.broadcast(t, 0)
            peak_lr = t.item()
        log.info("lr auto: %.4g (%s; loss diverged at %s)", peak_lr, probe.rule, probe.diverged_at)
    if restore is None:
        restore = {**cur, "model": cpu_clone(model.state_dict()), "optimizer": cpu_clone(opt.state_dict())}

    def save() -> None:
        if rank != 0:
            return
        b = cur["best"]
        ck = {
            "fingerprint": fingerprint,
            "epoch": cur["epoch"],
            "step": cur["epoch"] * n_steps,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "history": cur["history"],
            "best_epoch": b["epoch"],
            "best_acc": b["acc"],
            "best_nll": b["nll"],
            "best_state": b["state"],
            "min_nll": cur["min_nll"],
            "accuracy": cur["accuracy"],
            "restore": None if restore is None or restore["epoch"] == cur["epoch"] else restore,
            "peak_lr": peak_lr,
            "lr_range": lr_range,
            "lr_scale": lr_scale,
            "recoveries": recoveries,
            "events": events,
            "teacher_precision": None if precision is None else precision.to_dict(),
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(ck, tmp)

    bar = Progress(progress and rank == 0, cfg.epochs * n_steps, start_epoch * n_steps)
    try:
        epoch = start_epoch
        while epoch < cfg.epochs:
            t0 = time.perf_counter()
            torch.manual_seed(key_seed(seed, "torch", epoch, rank))
            aug_gen = keyed_generator(seed, "augment", epoch, rank)
            model.train()
            sums: dict[str, float] = {}
            problem, row, lr = None, None, 0.0
            for s, idx in enumerate(epoch_batches(len(x_tr), cfg, seed, epoch, rank, world)):
                lr = lr_at(epoch * n_steps + s, cfg, n_steps, peak_lr) * lr_scale
                for g in opt.param_groups:
                    g["lr"] = lr
                terms = terms_of(net, idx, aug_gen)
                values = torch.stack([v.detach().float() for v in terms.values()])
                if world > 1:
                    torch.distributed.all_reduce(values)
                    values /= world
                if not torch.isfinite(values).all():
                    problem = (
                        f"loss became non-finite at epoch {epoch + 1} step {s + 1} "
                        f"({', '.join(f'{k}={v:.4g}' for k, v in zip(terms, values.tolist(), strict=True))})"
                    )
                    break
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                for k, v in zip(terms, values.tolist(), strict=True):
                    sums[k] = sums.get(k, 0.0) + v
                bar.advance(f"epoch {epoch + 1}/{cfg.epochs} loss {values[-1]:.3f}")
            if problem is None:
                if world > 1:  # BatchNorm statistics of rank 0 everywhere, so every rank evaluates the same model
                    for b in model.buffers():
                        torch.distributed.broadcast(b, 0)
                val = logits(model, x_val)
                val_acc = (val.argmax(1) == y_val).float().mean().item()
                val_nll = F.cross_entropy(val, y_val).item()
                row = {"epoch": epoch + 1, **{f"train_{k}": v / max(1, n_steps) for k, v in sums.items()}}
                row.update(val_accuracy=val_acc, val_nll=val_nll, lr=lr, seconds=time.perf_counter() - t0)
                bad = epoch_problem(
                    val_acc,
                    val_nll,
                    best_nll=cur["min_nll"],
                    start_accuracy=restore["accuracy"],
                    num_classes=val.shape[1],
                    n=len(val),
                    majority=majority,
                )
                problem = None if bad is None else f"epoch {epoch + 1}: {bad}"
            if problem is not None and recoveries < cfg.max_recoveries:
                recoveries += 1
                events.append(
                    f"{problem}: restored the state after epoch {restore['epoch']} and lowered the peak lr "
                    f"{peak_lr * lr_scale:.3g} -> {peak_lr * lr_scale * LR_FACTOR:.3g} "
                    f"(recovery {recoveries}/{cfg.max_recoveries})"
                )
                lr_scale *= LR_FACTOR
                log.warning("%s", events[-1])
                model.load_state_dict(restore["model"])
                opt.load_state_dict(cpu_clone(restore["optimizer"]))  # the optimizer keeps (and mutates) what it gets
                cur = copy.deepcopy({k: v for k, v in restore.items() if k not in ("model", "optimizer")})
                epoch = int(cur["epoch"])
                save()
                if world > 1:
                    torch.distributed.barrier()
                continue
            if row is None:
                raise TrainingError(
                    f"{problem}{f' after {recoveries} recoveries' if recoveries else ''}; "
                    f"last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none'}",
                    "lower the learning rate (train.lr), check the inputs for NaN/Inf, or add warm-up",
                )
            if problem is not None:
                events.append(f"{problem}; no recovery left (train.max_recoveries={cfg.max_recoveries}): kept")
                log.warning("%s", events[-1])
            cur["history"] = [*cur["history"], row]
            if (val_acc, -val_nll) > (cur["best"]["acc"], -cur["best"]["nll"]):
                state = cpu_clone(model.state_dict())
                cur["best"] = {"epoch": epoch + 1, "acc": val_acc, "nll": val_nll, "state": state}
            cur.update(epoch=epoch + 1, min_nll=min(cur["min_nll"], val_nll), accuracy=val_acc)
            if problem is None and left_chance(val_acc, val.shape[1], len(val), majority):  # worth going back to
                restore = {**cur, "model": cpu_clone(model.state_dict()), "optimizer": cpu_clone(opt.state_dict())}
            log.info(
                "epoch %d/%d loss %.4f val_acc %.4f val_nll %.4f lr %.3g",
                epoch + 1,
                cfg.epochs,
                row.get("train_loss", float("nan")),
                val_acc,
                val_nll,
                lr,
            )
            save()
            if world > 1:
                torch.distributed.barrier()
            epoch += 1
    finally:
        bar.close()
        set_layout(model, torch.contiguous_format)  # callers (pruning, export) get the usual layout

    best = cur["best"]
    if best["state"] is None:
        raise TrainingError(f"no epoch finished in {workdir}", "raise epochs")
    model.load_state_dict(best["state"])
    result = TrainResult(
        model=model,
        best_epoch=int(best["epoch"]),
        best_val_accuracy=float(best["acc"]),
        history=list(cur["history"]),
        resumed_from_epoch=start_epoch,
        seconds=time.perf_counter() - started,
        lr=float(peak_lr),
        lr_range=lr_range,
        teacher_precision=None if precision is None else precision.to_dict(),
        events=list(events),
        recoveries=recoveries,
    )
    if rank == 0:
        atomic_write_json(workdir / RESULT, result.to_dict())
    return result


__all__ = [
    "TrainResult",
    "epoch_batches",
    "key_seed",
    "keyed_generator",
    "lr_at",
    "model_device",
    "probe_batches",
    "train_model",
]
