"""edgecompress.distill: losses, trainer, teacher-assistant chain (torch loads only when a name is used).

Public names resolve lazily (``from edgecompress.distill import train_model`` imports torch then, not before).
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

_NAMES = {
    "DistillConfig": "config",
    "LossConfig": "config",
    "MemberSpec": "config",
    "TrainConfig": "config",
    "TrialsConfig": "config",
    "Decision": "decide",
    "Trial": "decide",
    "decide": "decide",
    "BDKDLoss": "losses",
    "CELoss": "losses",
    "DISTLoss": "losses",
    "KDLoss": "losses",
    "build_loss": "losses",
    "QualityGateError": "gates",
    "check_student": "gates",
    "check_teacher": "gates",
    "escalate_ratio": "gates",
    "LRRangeResult": "lr_range",
    "lr_range_test": "lr_range",
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

__getattr__, __dir__ = lazy_exports(__name__, _NAMES)
