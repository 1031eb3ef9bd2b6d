"""Data-free distillation: FastDFKD (Fang et al., AAAI 2022) with a DeepInversion baseline (Yin et al., CVPR 2020).

Light on import: the config is pydantic-only; everything that needs torch loads on first attribute access.
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

_LAZY = {
    "DataFreeConfig": "config",
    "datafree_distill": "runner",
    "DataFreeResult": "runner",
    "plan_datafree": "runner",
    "real_data_kd": "reference",
    "ReferenceResult": "reference",
    "InversionLoss": "inversion",
    "BNStatsHooks": "inversion",
    "Pixels": "inversion",
    "Generator": "generator",
    "Pool": "pool",
    "Plan": "plan",
    "FastDFKDSynthesizer": "fastdfkd",
    "meta_round": "fastdfkd",
    "meta_optimizer": "fastdfkd",
    "DeepInversionSynthesizer": "deepinversion",
    "sample_grid": "grid",
    "accuracy_curve": "grid",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
