"""Data-free distillation: FastDFKD (Fang et al., AAAI 2022) with a DeepInversion baseline (Yin et al., CVPR 2020).

Light on import: the config is pydantic-only; everything that needs torch loads on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DataFreeConfig": "config",
    "datafree_distill": "runner",
    "DataFreeResult": "runner",
    "InversionLoss": "inversion",
    "BNStatsHooks": "inversion",
    "Generator": "generator",
    "MemoryBank": "bank",
    "FastDFKDSynthesizer": "fastdfkd",
    "reptile_update": "fastdfkd",
    "DeepInversionSynthesizer": "deepinversion",
    "sample_grid": "grid",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
