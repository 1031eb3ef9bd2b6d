"""edgecompress.distill: losses, trainer, teacher-assistant chain (torch loads only when a name is used).

Public names resolve lazily (``from edgecompress.distill import train_model`` imports torch then, not before).
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "DistillConfig": "config",
    "LossConfig": "config",
    "MemberSpec": "config",
    "TrainConfig": "config",
    "BDKDLoss": "losses",
    "CELoss": "losses",
    "DISTLoss": "losses",
    "KDLoss": "losses",
    "build_loss": "losses",
    "TrainResult": "trainer",
    "train_model": "trainer",
    "LogitEnsemble": "evaluate",
    "TemperatureScaled": "evaluate",
    "predict_logits": "evaluate",
    "ChainMember": "chain",
    "ChainResult": "chain",
    "MemberRecord": "chain",
    "SearchResult": "chain",
    "distill_chain": "chain",
    "plan_assistant_ratios": "chain",
    "search_assistant": "chain",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompress.distill' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"edgecompress.distill.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
