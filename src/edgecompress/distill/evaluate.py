"""Inference helpers shared by the trainer and the chain: batched logits, teacher wrappers, metrics, fidelity.

Metrics and temperature fitting are ``edgecompress.calibration``'s (one definition for the package).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress.distill.inputs import Inputs, as_inputs


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def predict_logits(model: nn.Module, x: np.ndarray | Tensor | Inputs, *, batch_size: int = 512) -> Tensor:
    """Logits of ``model`` (set to eval mode) on ``x`` in batches under ``torch.inference_mode``; float32 on CPU.

    ``x`` may be a lazily-normalized view (see ``distill.inputs``): it is read one batch at a time. The result is
    cloned out of inference mode, so it can be used in autograd as a constant.
    """
    model.eval()
    rows = as_inputs(x)
    device = model_device(model)
    outs = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch_size):
            outs.append(model(rows.rows(i, i + batch_size).to(device)).float().cpu())
    if not outs:
        return torch.empty(0, 0)
    return torch.cat(outs).clone()


class SplitLogits:
    """A model's raw logits on each split (train, val, test; None where a split is absent), computed once per run.

    The teacher's logits are what every later step reads — its val accuracy and temperature, the KD targets on the
    train split (``teacher_targets: clean``), its test metrics and the students' fidelity — so the pipeline computes
    them in one pass per split (``distill.fast_eval``) and hands them on instead of running the teacher again.
    """

    def __init__(self, train: Tensor | None, val: Tensor | None, test: Tensor | None) -> None:
        self.train, self.val, self.test = train, val, test

    @classmethod
    def of(cls, model: nn.Module, splits: object) -> SplitLogits:
        """The logits of ``model`` on every split of ``splits`` that exists (through a frozen ORT graph on CPU)."""
        from edgecompress.distill.fast_eval import fast_logits

        def run(name: str) -> Tensor | None:
            split = getattr(splits, name, None)
            return None if split is None or len(split.y) == 0 else fast_logits(model, split.x)

        return cls(run("train"), run("val"), run("test"))

    def save(self, path: Path) -> None:
        """Write the logits to an ``.npz`` file (atomic)."""
        from edgecompress._io import atomic_path

        arrays = {
            k: v.numpy() for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)  # type: ignore[arg-type]  # stubs: kwargs vs the flag

    @classmethod
    def load(cls, path: Path) -> SplitLogits:
        with np.load(path, allow_pickle=False) as z:
            got = {k: torch.from_numpy(np.asarray(z[k], dtype=np.float32)) for k in z.files}
        return cls(got.get("train"), got.get("val"), got.get("test"))


class TemperatureScaled(nn.Module):
    """A teacher whose logits are divided by a fitted temperature: z / T (Guo et al., ICML 2017)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


class LogitEnsemble(nn.Module):
    """Weighted mixture of logits: z = Σ_k w_k · z_k (w ≥ 0, Σ w = 1), the target of a multi-TA student."""

    weights: Tensor  # buffer registered in __init__

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | Tensor) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32).clone())

    def forward(self, x: Tensor) -> Tensor:
        mixed = sum(w * m(x) for w, m in zip(self.weights, self.members, strict=True))
        assert isinstance(mixed, Tensor)  # the chain builds an ensemble from at least one assistant
        return mixed


def fit_ensemble_weights(logits: Sequence[Tensor], labels: np.ndarray | Tensor, *, steps: int = 100) -> list[float]:
    """Mixture weights minimizing the NLL of Σ_k softmax(θ)_k · z_k on (validation) data; LBFGS on θ."""
    y = torch.as_tensor(labels, dtype=torch.long)
    stack = torch.stack([torch.as_tensor(z, dtype=torch.float32) for z in logits])  # [M, N, K]
    theta = torch.zeros(len(logits), requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        mix = torch.einsum("m,mnk->nk", theta.softmax(0), stack)
        loss = F.cross_entropy(mix, y)
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach().softmax(0).tolist()


def compute_metrics(logits: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> dict[str, float]:
    """accuracy, ece, nll, brier, ... (``edgecompress.calibration.compute_metrics``), from arrays or tensors."""
    from edgecompress.calibration import compute_metrics as impl

    z = np.asarray(logits.cpu().numpy() if isinstance(logits, Tensor) else logits, dtype=np.float32)
    y = np.asarray(labels.cpu().numpy() if isinstance(labels, Tensor) else labels, dtype=np.int64)
    return {k: float(v) for k, v in impl(z, y).items()}


def fit_temperature(logits: np.ndarray | Tensor, labels: np.ndarray | Tensor) -> float:
    """Temperature T > 0 minimizing the NLL of softmax(z / T) (``edgecompress.calibration``; val data only)."""
    from edgecompress.calibration import fit_temperature as impl

    z = np.asarray(logits.cpu().numpy() if isinstance(logits, Tensor) else logits, dtype=np.float32)
    y = np.asarray(labels.cpu().numpy() if isinstance(labels, Tensor) else labels, dtype=np.int64)
    return float(impl(z, y))


def fidelity(student: Tensor, teacher: Tensor) -> dict[str, float]:
    """Top-1 agreement and mean KL(p_t ‖ p_s) between teacher and student logits (Stanton et al., NeurIPS 2021)."""
    ls, lt = F.log_softmax(student.double(), 1), F.log_softmax(teacher.double(), 1)
    kl = (lt.exp() * (lt - ls)).sum(1).mean().item()
    agree = (student.argmax(1) == teacher.argmax(1)).double().mean().item()
    return {"agreement": agree, "kl": kl}
