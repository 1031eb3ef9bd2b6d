"""Resumable data-free runs: the state a run carries between rounds, its fingerprint, and its checkpoint file.

A checkpoint holds only tensors, dicts, lists, numbers and strings, so it loads with ``torch.load(weights_only=True)``;
it is written atomically. The image pool lives beside it on disk (``pool.py``); the checkpoint records its length.
See :mod:`edgecompress.distill.datafree.runner` for when it is written and read.
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
from edgecompress.distill.datafree.config import DataFreeConfig
from edgecompress.distill.datafree.deepinversion import DeepInversionSynthesizer
from edgecompress.distill.datafree.fastdfkd import FastDFKDSynthesizer
from edgecompress.distill.datafree.pool import Pool
from edgecompress.models.checkpoint import state_hash

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
FORMAT = 2  # bump when the checkpoint's layout changes: older files are then ignored (their fingerprint differs)


@dataclass
class RunState:
    """Everything a run carries from one round to the next: what a checkpoint holds (the pool by its length)."""

    gen: torch.Generator
    student: nn.Module
    synth: FastDFKDSynthesizer | DeepInversionSynthesizer
    pool: Pool
    opt: torch.optim.Optimizer
    history: list[dict[str, float | None]] = field(default_factory=list)
    curve: list[tuple[int, float]] = field(default_factory=list)
    next_round: int = 0
    t_synth: float = 0.0
    t_student: float = 0.0


@dataclass(frozen=True)
class Checkpoints:
    """Where a run keeps its checkpoint, under which fingerprint, and how often (in rounds)."""

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
    """sha256 of everything that decides a run's course (``checkpoint_every`` and ``eval_every`` change no number)."""
    return sha256_json(
        {
            "format": FORMAT,
            "config": cfg.model_dump(mode="json", exclude={"checkpoint_every", "eval_every"}),
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
    hooks = state.synth.loss.hooks
    return {
        "format": FORMAT,
        "fingerprint": run_fingerprint,
        "next_round": state.next_round,
        "student": state.student.state_dict(),
        "optimizer": state.opt.state_dict(),
        "synthesizer": state.synth.state_dict(),
        "bn_momentum": [None if m is None else list(m) for m in hooks.mmt],
        "pool_count": state.pool.count,
        "gen_state": state.gen.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "history": state.history,
        "curve": [list(c) for c in state.curve],
        "t_synth": state.t_synth,
        "t_student": state.t_student,
    }


def save(state: RunState, ckpts: Checkpoints) -> None:
    """Sync the pool, then write the run's checkpoint atomically (a kill leaves the previous one whole)."""
    state.pool.sync()
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
    """Load a checkpoint into a freshly built state whose pool was opened as it is on disk (raises on contents that
    do not fit; the pool is then truncated to the checkpoint's length)."""
    next_round = int(ck["next_round"])
    history = list(ck["history"])
    if not 1 <= next_round <= cfg.rounds:
        raise ValueError(f"position round {next_round} is outside this run's {cfg.rounds} rounds")
    if len(history) != next_round:
        raise ValueError(f"inconsistent position: round {next_round} with {len(history)} history entries")
    if int(ck["pool_count"]) != next_round * cfg.batch_size:
        raise ValueError(f"the pool count {ck['pool_count']} does not fit round {next_round}")
    state.student.load_state_dict(ck["student"])
    state.opt.load_state_dict(ck["optimizer"])
    state.synth.load_state_dict(ck["synthesizer"])
    hooks = state.synth.loss.hooks
    mmt = list(ck["bn_momentum"])
    if len(mmt) != len(hooks.mmt):
        raise ValueError(f"{len(mmt)} BN moving averages for {len(hooks.mmt)} BatchNorm layers")
    hooks.mmt = [None if m is None else (m[0], m[1]) for m in mmt]
    state.pool.truncate(int(ck["pool_count"]))
    state.gen.set_state(ck["gen_state"])
    torch.set_rng_state(ck["torch_rng_state"])
    state.history = history
    state.curve = [(int(r), float(a)) for r, a in ck["curve"]]
    state.next_round = next_round
    state.t_synth, state.t_student = float(ck["t_synth"]), float(ck["t_student"])
