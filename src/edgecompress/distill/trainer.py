"""Train one network (from labels or by distillation): seeded, resumable, selected on val, DDP-aware.

Determinism: every source of randomness is keyed by (seed, epoch[, rank]) — the shuffling permutation, the
augmentation generator and the global torch seed (dropout) are re-derived at the start of each epoch. A checkpoint
written at the end of each epoch therefore holds all the state needed to continue (model, optimizer, step, best
weights, history); a run killed mid-epoch and called again repeats that epoch and ends bit-identical on CPU.

Teacher-logit caches (the teacher's forward dominates KD cost):
* Without augmentation the teacher sees each training sample unchanged every epoch, and in eval mode it is a pure
  function of its input, so its logits are computed once per sample (one batched ``inference_mode`` pass) and
  indexed per step. Valid for any number of epochs and across a resume.
* With augmentation the views differ each epoch, so each step runs the teacher on its batch (under
  ``inference_mode``, no autograd graph). Caching augmented views across epochs would be wrong; across *runs* with
  the same (teacher, data, seed, batch size, augmentation) it would be valid but is not implemented.
* Evaluation logits are computed in ``inference_mode`` in large batches; the chain caches each model's val/test
  logits once per model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress._io import atomic_path, atomic_write_json, sha256_json
from edgecompress.distill.config import LossConfig, TrainConfig
from edgecompress.distill.evaluate import model_device, predict_logits
from edgecompress.distill.losses import build_loss
from edgecompress.errors import CheckpointError, DataError, TrainingError
from edgecompress.models.checkpoint import state_hash

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RESULT = "train_result.json"
Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`; ``model`` holds the best-val weights."""

    model: nn.Module
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the model)."""
        return {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "resumed_from_epoch": self.resumed_from_epoch,
            "seconds": self.seconds,
            "history": self.history,
        }


def key_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr((int(seed), *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def keyed_generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``key_seed(seed, *keys)``."""
    return torch.Generator().manual_seed(key_seed(seed, *keys))


def _make_augment(augment_cfg: Any) -> Augment | None:
    if augment_cfg is None:
        return None
    if callable(augment_cfg):
        return augment_cfg
    if not getattr(augment_cfg, "crop_pad", 0) and not getattr(augment_cfg, "hflip", False):
        return None
    from edgecompress.data.augment import augment_batch  # one definition of the augmentation for the package

    return lambda x, g: augment_batch(x, augment_cfg, g)


def _split_arrays(splits: Any, name: str) -> tuple[Tensor, Tensor]:
    split = getattr(splits, name, None)
    if split is None or getattr(split, "x", None) is None:
        raise DataError(f"the '{name}' split is missing", f"give data with a {name} split (train_model needs it)")
    x = torch.from_numpy(np.ascontiguousarray(split.x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(split.y, dtype=np.int64))
    if x.ndim != 4 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"the '{name}' split has x {tuple(x.shape)} and y {tuple(y.shape)}",
            "x must be float32 [N, C, H, W] with N > 0 and y int64 [N]",
        )
    return x, y


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Learning rate at optimizer step ``step``: linear warm-up, then cosine to 0 (or constant)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant" or total <= warm:
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


def epoch_batches(n: int, cfg: TrainConfig, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[Tensor]:
    """This rank's index batches for ``epoch``: a global permutation keyed by (seed, epoch), cut into global batches
    of ``batch_size``, each strided over the ranks (a tail batch too small for BatchNorm on every rank is dropped)."""
    perm = torch.randperm(n, generator=keyed_generator(seed, "shuffle", epoch))
    batches = list(perm.split(cfg.batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2 * world:
        batches.pop()
    if cfg.max_steps_per_epoch is not None:
        batches = batches[: cfg.max_steps_per_epoch]
    return [b[rank::world] for b in batches]


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


def _data_hash(splits: Any, tensors: list[Tensor]) -> str:
    fp = getattr(splits, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}", f"delete {path} to start this run over") from exc


class _Progress:
    """A rich progress bar when stderr is a TTY (rank 0 only), else nothing (epochs are logged)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress

            self.bar = Progress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("training", total=total, completed=done)

    def advance(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


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
) -> TrainResult:
    """Train ``model`` on ``splits.train``, select the epoch with the best ``splits.val`` accuracy, return it loaded.

    Args:
        model: the network to train (modified in place; ends with the best-val weights).
        splits: anything with ``train`` and ``val`` holding ``x`` (float32 NCHW) and ``y`` (int64); test is not read.
        cfg: optimizer, schedule and budget.
        workdir: folder of ``checkpoint.pt`` (written atomically every epoch) and ``train_result.json``; a call
            with an existing checkpoint of the same run resumes from it, a finished one returns at once.
        seed: keys every random stream.
        teacher: the distillation teacher (eval mode, frozen); its logits are the targets of ``loss``.
        loss: the loss; None means cross-entropy without a teacher and Hinton KD (defaults) with one.
        augment_cfg: an object with ``crop_pad``/``hflip`` (``data.AugmentConfig``) or a callable ``(x, generator)``;
            used when ``cfg.augment`` is true.
        progress: show a progress bar (rich, only when stderr is a terminal; otherwise epochs are logged).
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.

    Raises:
        TrainingError: the loss became NaN/Inf (names epoch and step; the last good checkpoint is kept).
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
    x_tr, y_tr = _split_arrays(splits, "train")
    x_val, y_val = _split_arrays(splits, "val")
    if len(x_tr) < 2 * world:
        raise DataError(f"train split has {len(x_tr)} samples for {world} process(es)", "give at least 2 per process")
    augment = _make_augment(augment_cfg) if cfg.augment else None
    n_steps = len(epoch_batches(len(x_tr), cfg, seed, 0, 0, world))

    model.to(dev)
    if teacher is not None:
        teacher.to(dev).eval()
    fingerprint = sha256_json(
        {
            "train": cfg.model_dump(mode="json"),
            "loss": loss.model_dump(mode="json"),
            "seed": seed,
            "world": world,
            "shapes": [(k, list(v.shape)) for k, v in model.state_dict().items()],
            "teacher": state_hash(teacher) if teacher is not None else None,
            "data": _data_hash(splits, [x_tr, y_tr, x_val, y_val]),
            "augment": None if augment is None else repr(augment_cfg),
        }
    )
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)

    ckpt_path = workdir / CHECKPOINT
    start_epoch, history = 0, []
    best: dict[str, Any] = {"epoch": -1, "acc": -1.0, "nll": math.inf, "state": None}
    if ckpt_path.exists():
        ck = _load_checkpoint(ckpt_path)
        if ck.get("fingerprint") != fingerprint:
            raise CheckpointError(
                f"{ckpt_path} belongs to a different run (config, seed, data, model shape or teacher changed)",
                "use a fresh workdir, or delete the checkpoint to start over",
            )
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = int(ck["epoch"]), list(ck["history"])
        best = {"epoch": ck["best_epoch"], "acc": ck["best_acc"], "nll": ck["best_nll"], "state": ck["best_state"]}
        log.info("resuming %s at epoch %d/%d", workdir, start_epoch, cfg.epochs)

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    cache = None
    if teacher is not None and augment is None and start_epoch < cfg.epochs:
        cache = predict_logits(teacher, x_tr).to(dev)  # once per sample: valid because the inputs never change

    bar = _Progress(progress and rank == 0, cfg.epochs * n_steps, start_epoch * n_steps)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            torch.manual_seed(key_seed(seed, "torch", epoch, rank))
            aug_gen = keyed_generator(seed, "augment", epoch, rank)
            model.train()
            sums: dict[str, float] = {}
            for s, idx in enumerate(epoch_batches(len(x_tr), cfg, seed, epoch, rank, world)):
                lr = lr_at(epoch * n_steps + s, cfg, n_steps)
                for g in opt.param_groups:
                    g["lr"] = lr
                xb, yb = x_tr[idx], y_tr[idx].to(dev)
                if augment is not None:
                    xb = augment(xb, aug_gen)
                xb = xb.to(dev)
                zt = None
                if cache is not None:
                    zt = cache[idx.to(dev)]
                elif teacher is not None:
                    with torch.inference_mode():
                        zt = teacher(xb)
                    zt = zt.clone()
                terms = loss_fn(net(xb), zt, yb)
                values = torch.stack([v.detach().float() for v in terms.values()])
                if world > 1:
                    torch.distributed.all_reduce(values)
                    values /= world
                if not torch.isfinite(values).all():
                    raise TrainingError(
                        f"loss became non-finite at epoch {epoch + 1} step {s + 1} "
                        f"({', '.join(f'{k}={v:.4g}' for k, v in zip(terms, values.tolist(), strict=True))}); "
                        f"last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none'}",
                        "lower the learning rate, check the inputs for NaN/Inf, or add warm-up",
                    )
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                for k, v in zip(terms, values.tolist(), strict=True):
                    sums[k] = sums.get(k, 0.0) + v
                bar.advance(f"epoch {epoch + 1}/{cfg.epochs} loss {values[-1]:.3f}")
            if world > 1:  # BatchNorm statistics of rank 0 everywhere, so every rank evaluates the same model
                for b in model.buffers():
                    torch.distributed.broadcast(b, 0)
            val = predict_logits(model, x_val)
            val_acc = (val.argmax(1) == y_val).float().mean().item()
            val_nll = F.cross_entropy(val, y_val).item()
            n = max(1, n_steps)
            row = {"epoch": epoch + 1, **{f"train_{k}": v / n for k, v in sums.items()}}
            row.update(val_accuracy=val_acc, val_nll=val_nll, lr=lr, seconds=time.perf_counter() - t0)
            history.append(row)
            if (val_acc, -val_nll) > (best["acc"], -best["nll"]):
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best = {"epoch": epoch + 1, "acc": val_acc, "nll": val_nll, "state": state}
            log.info(
                "epoch %d/%d loss %.4f val_acc %.4f val_nll %.4f",
                epoch + 1,
                cfg.epochs,
                row.get("train_loss", float("nan")),
                val_acc,
                val_nll,
            )
            if rank == 0:
                ck = {
                    "fingerprint": fingerprint,
                    "epoch": epoch + 1,
                    "step": (epoch + 1) * n_steps,
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "history": history,
                    "best_epoch": best["epoch"],
                    "best_acc": best["acc"],
                    "best_nll": best["nll"],
                    "best_state": best["state"],
                }
                with atomic_path(ckpt_path) as tmp:
                    torch.save(ck, tmp)
            if world > 1:
                torch.distributed.barrier()
    finally:
        bar.close()

    if best["state"] is None:
        raise TrainingError(f"no epoch finished in {workdir}", "raise epochs")
    model.load_state_dict(best["state"])
    result = TrainResult(
        model=model,
        best_epoch=int(best["epoch"]),
        best_val_accuracy=float(best["acc"]),
        history=history,
        resumed_from_epoch=start_epoch,
        seconds=time.perf_counter() - started,
    )
    if rank == 0:
        atomic_write_json(workdir / RESULT, result.to_dict())
    return result


__all__ = ["TrainResult", "epoch_batches", "key_seed", "keyed_generator", "lr_at", "model_device", "train_model"]
