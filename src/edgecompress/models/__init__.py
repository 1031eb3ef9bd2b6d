"""edgecompress.models: built-in families, factories, checkpoints (weights_only) and pruning to a MAC budget.

Light at import: torch and torch-pruning load only when a public name is used.
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
