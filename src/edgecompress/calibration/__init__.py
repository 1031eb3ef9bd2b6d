"""edgecompress.calibration: metrics, temperature scaling, margin-based label smoothing (MbLS), folding T, plots.

The public names load lazily (module ``__getattr__``): ``import edgecompress.calibration`` imports neither torch nor
matplotlib; ``metrics`` and ``temperature`` need only numpy until a fit runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecompress._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "CalibrationConfig": "config",
    "MbLSConfig": "config",
    "compute_metrics": "metrics",
    "compute_metrics_from_probs": "metrics",
    "reliability_bins": "metrics",
    "softmax": "metrics",
    "log_softmax": "metrics",
    "looks_like_probabilities": "metrics",
    "fit_temperature": "temperature",
    "MbLSLoss": "mbls",
    "margin_penalty": "mbls",
    "mbls_finetune": "mbls",
    "fold_temperature": "fold",
    "TemperatureDivide": "fold",
    "WithProbabilities": "fold",
    "reliability_diagram": "plots",
    "CalibrationCandidate": "choose",
    "CalibrationChoice": "choose",
    "choose_calibration": "choose",
}

__all__ = [
    "CalibrationCandidate",
    "CalibrationChoice",
    "CalibrationConfig",
    "MbLSConfig",
    "MbLSLoss",
    "TemperatureDivide",
    "WithProbabilities",
    "choose_calibration",
    "compute_metrics",
    "compute_metrics_from_probs",
    "fit_temperature",
    "fold_temperature",
    "log_softmax",
    "looks_like_probabilities",
    "margin_penalty",
    "mbls_finetune",
    "reliability_bins",
    "reliability_diagram",
    "softmax",
]

if TYPE_CHECKING:  # pragma: no cover
    from edgecompress.calibration.choose import CalibrationCandidate, CalibrationChoice, choose_calibration
    from edgecompress.calibration.config import CalibrationConfig, MbLSConfig
    from edgecompress.calibration.fold import TemperatureDivide, WithProbabilities, fold_temperature
    from edgecompress.calibration.mbls import MbLSLoss, margin_penalty, mbls_finetune
    from edgecompress.calibration.metrics import (
        compute_metrics,
        compute_metrics_from_probs,
        log_softmax,
        looks_like_probabilities,
        reliability_bins,
        softmax,
    )
    from edgecompress.calibration.plots import reliability_diagram
    from edgecompress.calibration.temperature import fit_temperature

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
