"""edgecompress.models: built-in families, trusted factories, teachers, checkpoints (weights_only), MAC-budget pruning.

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
    "prune_search": "edgecompress.models.prune",
    "PruneResult": "edgecompress.models.prune",
    "find_classifier": "edgecompress.models.prune",
    "load_teacher": "edgecompress.models.teacher",
    "is_prunable": "edgecompress.models.teacher",
    "teacher_spec": "edgecompress.models.teacher",
    "check_output": "edgecompress.models.teacher",
    "SelectOutput": "edgecompress.models.teacher",
    "FrozenProgram": "edgecompress.models.teacher",
    "check_factory_trust": "edgecompress.models.build",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
