"""Margin-based label smoothing (MbLS): the loss, its margin term, and a short calibration fine-tune.

Reference: B. Liu, I. Ben Ayed, A. Galdran, J. Dolz, "The Devil is in the Margin: Margin-based Label Smoothing for
Network Calibration", CVPR 2022, arXiv 2111.15430.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress.calibration.config import MbLSConfig
from edgecompress.errors import CalibrationError

log = logging.getLogger(__name__)


def margin_penalty(logits: Tensor, m: float) -> Tensor:
    """MbLS margin term: mean over the batch of Σ_k max(0, max_j z_j − z_k − m).

    Penalizes only logit distances to the top logit that exceed the margin ``m`` (Liu et al., CVPR 2022). Usable as an
    extra term inside any loss, e.g. a distillation loss: ``loss = kd + λ · margin_penalty(z_s, m)``.

    Args:
        logits: Logits [N, K].
        m: Margin m > 0.

    Returns:
        A scalar tensor (0 for an empty batch).
    """
    if logits.ndim != 2:
        raise CalibrationError(
            f"margin_penalty expects logits [N, K], got shape {tuple(logits.shape)}", "flatten first"
        )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    gaps = logits.max(dim=1, keepdim=True).values - logits
    return F.relu(gaps - m).sum(dim=1).mean()


class MbLSLoss(nn.Module):
    """MbLS loss: L = CE(y, softmax(z)) + λ · mean_i Σ_k max(0, max_j z_ij − z_ik − m).

    Liu et al., CVPR 2022 (arXiv 2111.15430); defaults m = 10, λ = 0.1 as in the paper.
    ``forward`` returns the total loss; the named terms of the last call are kept (detached) in ``self.terms``
    (``{"ce", "margin", "loss"}``), and ``forward(..., return_terms=True)`` returns them with gradients instead.
    """

    def __init__(self, margin: float = 10.0, weight: float = 0.1) -> None:
        super().__init__()
        if not (math.isfinite(margin) and margin > 0):
            raise CalibrationError(f"MbLS margin m={margin} must be > 0", "use the paper's m=10")
        if not (math.isfinite(weight) and weight >= 0):
            raise CalibrationError(f"MbLS weight λ={weight} must be >= 0", "use the paper's λ=0.1")
        self.margin = float(margin)
        self.weight = float(weight)
        self.terms: dict[str, Tensor] = {}

    def forward(self, logits: Tensor, target: Tensor, *, return_terms: bool = False) -> Tensor | dict[str, Tensor]:
        """Compute the loss of ``logits`` [N, K] against integer ``target`` [N]."""
        ce = F.cross_entropy(logits, target)
        margin = margin_penalty(logits, self.margin)
        loss = ce + self.weight * margin
        out = {"ce": ce, "margin": margin, "loss": loss}
        self.terms = {k: v.detach() for k, v in out.items()}
        return out if return_terms else loss

    def extra_repr(self) -> str:
        return f"margin={self.margin}, weight={self.weight}"


def _as_tensors(x: Any, y: Any, what: str) -> tuple[Tensor, Tensor]:
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    yt = torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y)
    if xt.ndim < 2 or xt.shape[0] == 0:
        raise CalibrationError(
            f"{what} inputs have shape {tuple(xt.shape)}", f"pass a non-empty batch [N, ...] for {what}"
        )
    if yt.ndim != 1 or yt.shape[0] != xt.shape[0]:
        raise CalibrationError(
            f"{what} labels have shape {tuple(yt.shape)} for {xt.shape[0]} inputs", "pass one integer label per input"
        )
    return xt.float(), yt.long()


@torch.no_grad()
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, device: torch.device) -> dict[str, float]:
    from edgecompress.calibration.metrics import compute_metrics

    model.eval()
    outs = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    m = compute_metrics(torch.cat(outs).double().numpy(), y.numpy())
    return {"val_nll": m["nll"], "val_accuracy": m["accuracy"], "val_ece": m["ece"]}


def mbls_finetune(
    model: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cfg: MbLSConfig,
    *,
    seed: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """Short calibration fine-tune of a trained model with the MbLS loss (Adam), selected on validation NLL.

    L = CE(y, softmax(z)) + λ·mean_i Σ_k max(0, max_j z_ij − z_ik − m) (Liu et al., CVPR 2022, arXiv 2111.15430).
    The input model is not modified. Epoch 0 (the unchanged model) competes, so the returned model never has a higher
    validation NLL than the input. A non-finite loss stops the fine-tune and keeps the best epoch so far.

    Args:
        model: Trained classifier returning logits [N, K].
        train_x: Training inputs [N, C, H, W] (float32, normalized).
        train_y: Training labels [N] (int64).
        val_x: Validation inputs used for selection.
        val_y: Validation labels.
        cfg: Margin, weight, epochs, learning rate and batch size.
        seed: Seeds the shuffling and any randomness of the model (dropout).

    Returns:
        ``(best_model, history)``: a deep copy at the best epoch (in eval mode) and
        ``{"epochs": [{"epoch", "train_loss", "train_ce", "train_margin", "val_nll", "val_accuracy", "val_ece"}, ...],
        "best_epoch", "best_val_nll", "stopped_early"}``.
    """
    xt, yt = _as_tensors(train_x, train_y, "train")
    xv, yv = _as_tensors(val_x, val_y, "val")
    params = list(model.parameters())
    if not params:
        raise CalibrationError("the model has no parameters to fine-tune", "pass a trainable nn.Module")
    device = params[0].device
    work = copy.deepcopy(model)
    trainable: list[Tensor] = [p for p in work.parameters() if p.requires_grad]
    if not trainable:  # a model frozen for inference: fine-tune all of it
        trainable = [p.requires_grad_(True) for p in work.parameters()]
    loss_fn = MbLSLoss(cfg.margin, cfg.weight)
    opt = torch.optim.Adam(trainable, lr=cfg.lr)
    gen = torch.Generator().manual_seed(int(seed))
    bs = cfg.batch_size

    first = _evaluate(work, xv, yv, bs, device)
    # epoch 0 is the unchanged model: no training terms (None, so the history stays valid JSON)
    epochs: list[dict[str, Any]] = [{"epoch": 0, "train_loss": None, "train_ce": None, "train_margin": None, **first}]
    best_epoch, best_nll = 0, first["val_nll"]
    best_state = copy.deepcopy(work.state_dict())
    stopped: str | None = None
    log.info("MbLS fine-tune (m=%g, λ=%g): epoch 0 val NLL %.4f", cfg.margin, cfg.weight, best_nll)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for epoch in range(1, cfg.finetune_epochs + 1):
            work.train()
            order = torch.randperm(xt.shape[0], generator=gen)
            sums = {"loss": 0.0, "ce": 0.0, "margin": 0.0}
            seen = 0
            for i in range(0, xt.shape[0], bs):
                idx = order[i : i + bs]
                if idx.numel() == 1 and xt.shape[0] > 1:
                    continue  # a batch of one breaks BatchNorm in train mode; the sample is seen next epoch
                terms = loss_fn(work(xt[idx].to(device)), yt[idx].to(device), return_terms=True)
                if not torch.isfinite(terms["loss"]):
                    stopped = f"non-finite MbLS loss at epoch {epoch}"
                    break
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                for k in sums:
                    sums[k] += float(terms[k].detach()) * idx.numel()
                seen += idx.numel()
            if stopped:
                log.warning("MbLS fine-tune stopped: %s; keeping epoch %d", stopped, best_epoch)
                break
            row = {
                "epoch": epoch,
                "train_loss": sums["loss"] / max(seen, 1),
                "train_ce": sums["ce"] / max(seen, 1),
                "train_margin": sums["margin"] / max(seen, 1),
                **_evaluate(work, xv, yv, bs, device),
            }
            epochs.append(row)
            log.info("MbLS epoch %d: train loss %.4f, val NLL %.4f", epoch, row["train_loss"], row["val_nll"])
            if row["val_nll"] < best_nll:
                best_epoch, best_nll = epoch, row["val_nll"]
                best_state = copy.deepcopy(work.state_dict())

    work.load_state_dict(best_state)
    work.eval()
    history = {"epochs": epochs, "best_epoch": best_epoch, "best_val_nll": best_nll, "stopped_early": stopped}
    return work, history
