"""What the stages share: the config, the run directory, the data, timings and a few torch helpers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.config import PipelineConfig
from edgecompress.pipeline.rundir import RunDir

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecompress.data import Splits

log = logging.getLogger(__name__)


@dataclass
class Context:
    """State passed from stage to stage within one run."""

    cfg: PipelineConfig
    run: RunDir
    progress: bool = True
    splits: Splits | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, str] = field(default_factory=dict)
    search: dict[str, Any] | None = None  # outcome of `assistants: search`, for the report

    @contextmanager
    def timed(self, name: str, key: str, cached: bool, out: str) -> Iterator[None]:
        """Record the wall time of a stage (cached stages too, at their near-zero cost)."""
        start = time.perf_counter()
        log.info("stage %s: %s", name, "cached" if cached else "running")
        yield
        seconds = time.perf_counter() - start
        if not cached:
            log.info("stage %s: done in %.1f s", name, seconds)
        self.stages.append({"name": name, "seconds": round(seconds, 3), "cached": cached, "output_dir": out})

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)


def predict_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` on ``x`` (float32 NCHW) as a numpy array (``distill.evaluate.predict_logits``)."""
    from edgecompress.distill.evaluate import predict_logits as logits_tensor

    return logits_tensor(model, x, batch_size=batch_size).numpy()


def metrics_of(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """All calibration metrics of logits against labels (fractions)."""
    from edgecompress.calibration import compute_metrics

    return {k: float(v) for k, v in compute_metrics(logits, y).items()}
