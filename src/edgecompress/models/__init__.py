"""edgecompress.models: built-in families, factories, checkpoints (weights_only) and pruning to a MAC budget.

Light at import: torch and torch-pruning load only when a public name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelSpec": "edgecompress.models.config",
    "FAMILIES": "edgecompress.models.families",
    "build_model": "edgecompress.models.build",
    "count_macs": "edgecompress.models.build",
    "count_params": "edgecompress.models.build",
    "load_state": "edgecompress.models.checkpoint",
    "save_state": "edgecompress.models.checkpoint",
    "prune_to_ratio": "edgecompress.models.prune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompress.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
