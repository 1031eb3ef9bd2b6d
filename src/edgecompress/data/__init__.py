"""edgecompress.data: datasets (digits, Fashion-MNIST, .npz, image folders), seeded stratified splits, augmentation.

Splits hold raw images in their source dtype and normalize per batch (``split.x[a:b]``).

Light at import: the public names load lazily (numpy/sklearn/Pillow/torch only when used).
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "edgecompress.data.config",
    "AugmentConfig": "edgecompress.data.config",
    "Preprocess": "edgecompress.data.preprocess",
    "ArraySplit": "edgecompress.data.splits",
    "NormalizedImages": "edgecompress.data.arrays",
    "Splits": "edgecompress.data.splits",
    "load_splits": "edgecompress.data.splits",
    "augment_batch": "edgecompress.data.augment",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
