"""``calibration.method: auto``: temperature scaling alone vs an MbLS fine-tune (per margin) followed by TS, compared
on val, keeping the lowest ECE (then NLL) among candidates that keep the accuracy.

Every candidate is scored the same way: T fitted on val, then val accuracy / ECE / NLL of z / T. An MbLS candidate
whose val accuracy falls more than ``auto_max_accuracy_drop`` below TS alone's is not eligible, so calibration never
buys its ECE with accuracy. Each MbLS fine-tune reads a seeded subset of the training split (``auto_max_train``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.calibration.config import CalibrationConfig
from edgecompress.calibration.mbls import mbls_finetune
from edgecompress.calibration.metrics import compute_metrics
from edgecompress.calibration.temperature import fit_temperature

log = logging.getLogger(__name__)


@dataclass
class CalibrationCandidate:
    """One way to calibrate, scored on val after temperature scaling (fractions; NLL in nats)."""

    name: str
    margin: float | None
    temperature: float
    val_accuracy: float
    val_ece: float
    val_nll: float
    eligible: bool = True
    chosen: bool = False
    note: str = ""


@dataclass
class CalibrationChoice:
    """The chosen model (fine-tuned or not), its temperature, every candidate and why."""

    model: nn.Module
    temperature: float
    method: str  # ts or mbls
    candidates: list[CalibrationCandidate] = field(default_factory=list)
    reason: str = ""
    history: dict[str, Any] | None = None  # the chosen MbLS fine-tune's history

    def rows(self) -> list[dict[str, Any]]:
        return [asdict(c) for c in self.candidates]


def _logits(model: nn.Module, x: Any, batch_size: int = 512) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        outs = [model(torch.as_tensor(np.asarray(x[i : i + batch_size], dtype=np.float32))).float() for i in
                range(0, len(x), batch_size)]  # fmt: skip
    return torch.cat(outs).numpy()


def _score(name: str, margin: float | None, model: nn.Module, val_x: Any, val_y: np.ndarray, ts: bool
           ) -> CalibrationCandidate:  # fmt: skip
    z = _logits(model, val_x).astype(np.float64)
    t = float(fit_temperature(z, val_y)) if ts else 1.0
    m = compute_metrics(z / t, val_y)
    return CalibrationCandidate(name=name, margin=margin, temperature=t, val_accuracy=float(m["accuracy"]),
                                val_ece=float(m["ece"]), val_nll=float(m["nll"]))  # fmt: skip


def choose_calibration(
    model: nn.Module, train_x: Any, train_y: Any, val_x: Any, val_y: Any, cfg: CalibrationConfig, *, seed: int
) -> CalibrationChoice:
    """Compare TS alone with an MbLS fine-tune per margin of ``cfg.auto_margins`` (each then TS) on val.

    Args:
        model: the trained student (not modified).
        train_x: training inputs (an array or a lazily-normalized view); a seeded subset is fine-tuned on.
        train_y: training labels.
        val_x: validation inputs (selection and temperature).
        val_y: validation labels.
        cfg: the calibration config (``auto_margins``, ``auto_max_accuracy_drop``, ``auto_max_train``, ``mbls``).
        seed: seeds the subset and each fine-tune (the same for every margin).
    """
    y_val = np.asarray(val_y, dtype=np.int64)
    ts = cfg.temperature_scaling
    base = _score("ts" if ts else "none", None, model, val_x, y_val, ts)
    cands = [base]
    n = len(train_y)
    idx = np.arange(n)
    if cfg.auto_max_train is not None and n > cfg.auto_max_train:
        idx = np.sort(np.random.default_rng(seed).permutation(n)[: cfg.auto_max_train])
    x_sub = np.asarray(train_x[idx], dtype=np.float32)
    y_sub = np.asarray(train_y, dtype=np.int64)[idx]
    tuned: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for margin in cfg.auto_margins:
        mcfg = cfg.mbls_settings.model_copy(update={"margin": float(margin)})
        ft, history = mbls_finetune(model, x_sub, y_sub, val_x, y_val, mcfg, seed=seed)
        name = f"mbls m={margin:g}" + (" + ts" if ts else "")
        cand = _score(name, float(margin), ft, val_x, y_val, ts)
        if cand.val_accuracy < base.val_accuracy - cfg.auto_max_accuracy_drop:
            cand.eligible = False
            cand.note = (f"val accuracy {100 * cand.val_accuracy:.2f} % is more than "
                         f"{100 * cfg.auto_max_accuracy_drop:.2f} pt below {base.name}'s")  # fmt: skip
        tuned[name] = (ft, history)
        cands.append(cand)
        log.info("calibration candidate %s: val acc %.4f ECE %.4f NLL %.4f", name, cand.val_accuracy, cand.val_ece,
                 cand.val_nll)  # fmt: skip
    best = min((c for c in cands if c.eligible), key=lambda c: (round(c.val_ece, 4), c.val_nll))
    best.chosen = True
    reason = f"{best.name}: lowest val ECE ({100 * best.val_ece:.2f} %, NLL {best.val_nll:.3f}) among the candidates"
    reason += f" within {100 * cfg.auto_max_accuracy_drop:.2f} pt of {base.name}'s val accuracy"
    excluded = [c.name for c in cands if not c.eligible]
    if excluded:
        reason += f" ({', '.join(excluded)} lost accuracy: not eligible)"
    if best is base:
        return CalibrationChoice(model=model, temperature=base.temperature, method="ts", candidates=cands,
                                 reason=reason)  # fmt: skip
    ft, history = tuned[best.name]
    return CalibrationChoice(model=ft, temperature=best.temperature, method="mbls", candidates=cands, reason=reason,
                             history=history)  # fmt: skip


__all__ = ["CalibrationCandidate", "CalibrationChoice", "choose_calibration"]
