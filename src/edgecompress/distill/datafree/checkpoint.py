"""Resumable data-free runs: the state a run carries between batches, its fingerprint, and its checkpoint file.

A checkpoint holds only tensors, dicts, lists, numbers and strings, so it loads with ``torch.load(weights_only=True)``;
it is written atomically. See :mod:`edgecompress.distill.datafree.runner` for when it is written and read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress._io import atomic_path, sha256_json
from edgecompress.distill.datafree.bank import MemoryBank
from edgecompress.distill.datafree.config import DataFreeConfig
from edgecompress.distill.datafree.deepinversion import DeepInversionSynthesizer
from edgecompress.distill.datafree.fastdfkd import FastDFKDSynthesizer
from edgecompress.models.checkpoint import state_hash

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FORMAT = 1  # bump when the checkpoint's layout changes: older files are then ignored (their fingerprint differs)


@dataclass
class RunState:
    """Everything a run carries from one synthesized batch to the next: what a checkpoint holds."""

    gen: torch.Generator
    student: nn.Module
    synth: FastDFKDSynthesizer | DeepInversionSynthesizer
    bank: MemoryBank
    opt: torch.optim.Optimizer
    history: list[dict[str, float | None]] = field(default_factory=list)
    next_batch: int = 0
    epochs_done: int = 0
    t_synth: float = 0.0
    t_student: float = 0.0


@dataclass(frozen=True)
class Checkpoints:
    """Where a run keeps its checkpoint, under which fingerprint, and how often (in synthesized batches)."""

    path: Path
    fingerprint: str
    every: int


def fingerprint(
    teacher: nn.Module,
    student: nn.Module,
    cfg: DataFreeConfig,
    shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> str:
    """sha256 of everything that decides a run's course; ``checkpoint_every`` is left out (it changes no number)."""
    return sha256_json(
        {
            "format": FORMAT,
            "config": cfg.model_dump(mode="json", exclude={"checkpoint_every"}),
            "seed": int(seed),
            "input_shape": list(shape),
            "num_classes": int(num_classes),
            "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std],
            "teacher": state_hash(teacher),
            "student": state_hash(student),
        }
    )


def to_dict(state: RunState, run_fingerprint: str) -> dict[str, Any]:
    """The state as tensors, dicts, lists, numbers and strings (loadable with ``weights_only=True``)."""
    synth: dict[str, Any] = {}
    if isinstance(state.synth, FastDFKDSynthesizer):
        synth = {"generator": state.synth.generator.state_dict(), "batches_done": state.synth.batches_done}
    return {
        "format": FORMAT,
        "fingerprint": run_fingerprint,
        "next_batch": state.next_batch,
        "epochs_done": state.epochs_done,
        "student": state.student.state_dict(),
        "optimizer": state.opt.state_dict(),
        "synthesizer": synth,
        "bank": {"x": state.bank.x, "y": state.bank.y, "seen": state.bank.seen},
        "gen_state": state.gen.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "history": state.history,
        "t_synth": state.t_synth,
        "t_student": state.t_student,
    }


def save(state: RunState, ckpts: Checkpoints) -> None:
    """Write the run's checkpoint atomically (a kill leaves the previous one whole)."""
    with atomic_path(ckpts.path) as tmp:
        torch.save(to_dict(state, ckpts.fingerprint), tmp)


def read(ckpts: Checkpoints) -> dict[str, Any] | None:
    """The checkpoint of this run, or None (none there; unreadable or of another run: warned about)."""
    path = ckpts.path
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding pickled objects weights_only refuses
        log.warning(
            "ignoring the data-free checkpoint %s: it cannot be read (%s: %s); starting over",
            path,
            type(exc).__name__,
            str(exc)[:160],
        )
        return None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or ck.get("fingerprint") != ckpts.fingerprint:
        log.warning(
            "ignoring the data-free checkpoint %s: it belongs to a different run (config, seed, input shape, classes, "
            "normalization, teacher or student changed); starting over",
            path,
        )
        return None
    return ck


def restore(state: RunState, ck: dict[str, Any], cfg: DataFreeConfig) -> None:
    """Load a checkpoint into a freshly built state (raises on contents that do not fit it)."""
    next_batch, epochs_done = int(ck["next_batch"]), int(ck["epochs_done"])
    history = list(ck["history"])
    if not (1 <= next_batch <= cfg.synthesis_batches and 0 <= epochs_done <= cfg.student_epochs):
        raise ValueError(f"position batch {next_batch}, epoch {epochs_done} is outside this run")
    if len(history) != next_batch or (epochs_done > 0 and next_batch != cfg.synthesis_batches):
        raise ValueError(f"inconsistent position: batch {next_batch}, epoch {epochs_done}, {len(history)} entries")
    state.student.load_state_dict(ck["student"])
    state.opt.load_state_dict(ck["optimizer"])
    if isinstance(state.synth, FastDFKDSynthesizer):
        state.synth.generator.load_state_dict(ck["synthesizer"]["generator"])
        state.synth.batches_done = int(ck["synthesizer"]["batches_done"])
    bank = ck["bank"]
    if not isinstance(bank["x"], torch.Tensor) or not isinstance(bank["y"], torch.Tensor):
        raise ValueError("the memory bank is missing")
    state.bank.x, state.bank.y, state.bank.seen = bank["x"], bank["y"], int(bank["seen"])
    state.gen.set_state(ck["gen_state"])
    torch.set_rng_state(ck["torch_rng_state"])
    state.history = history
    state.next_batch, state.epochs_done = next_batch, epochs_done
    state.t_synth, state.t_student = float(ck["t_synth"]), float(ck["t_student"])
