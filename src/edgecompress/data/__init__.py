"""edgecompress.data: datasets (digits, Fashion-MNIST, .npz, image folders), seeded stratified splits, augmentation.

Light at import: the public names load lazily (numpy/sklearn/Pillow/torch only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataConfig": "edgecompress.data.config",
    "AugmentConfig": "edgecompress.data.config",
    "Preprocess": "edgecompress.data.preprocess",
    "ArraySplit": "edgecompress.data.splits",
    "Splits": "edgecompress.data.splits",
    "load_splits": "edgecompress.data.splits",
    "augment_batch": "edgecompress.data.augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompress.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
