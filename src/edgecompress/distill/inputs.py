"""Row access to a split's images, whether ``x`` is a float32 array or a lazily-normalized view over raw data.

A lazy view (``edgecompress.data``) supports ``len()``, ``.shape`` and indexing with a slice or an index array,
returning normalized float32 rows; only the rows asked for are materialized. A plain array is wrapped as one
tensor once (indexing a tensor is the fast path). Nothing here reads more than one batch of a lazy view at a time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edgecompress.errors import DataError

CHUNK = 4096  # rows per read when a lazy view is streamed (hashing)


class Inputs:
    """``x`` of one split, indexed per batch: ``take(idx)`` and ``rows(start, stop)`` give float32 tensors."""

    def __init__(self, x: Any) -> None:
        self.lazy = not isinstance(x, np.ndarray | Tensor)
        if self.lazy:
            self.x = x
        elif isinstance(x, Tensor):
            self.x = x.detach().to(dtype=torch.float32)
        else:
            self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.shape = tuple(int(d) for d in self.x.shape)

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def take(self, idx: Tensor) -> Tensor:
        """Rows ``idx`` (an index tensor) as one float32 tensor."""
        if not self.lazy:
            return self.x[idx]
        return torch.from_numpy(np.ascontiguousarray(self.x[idx.cpu().numpy()], dtype=np.float32))

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` as one float32 tensor."""
        if not self.lazy:
            return self.x[start:stop]
        return torch.from_numpy(np.ascontiguousarray(self.x[start:stop], dtype=np.float32))

    def update_hash(self, h: Any) -> None:
        """Feed the shape and every value into hashlib object ``h`` (a lazy view is read in chunks)."""
        h.update(str(self.shape).encode())
        for i in range(0, len(self), CHUNK):
            h.update(self.rows(i, i + CHUNK).cpu().numpy().tobytes())


def as_inputs(x: Any) -> Inputs:
    """``x`` wrapped (idempotent)."""
    return x if isinstance(x, Inputs) else Inputs(x)


def split_arrays(splits: Any, name: str) -> tuple[Inputs, Tensor]:
    """``(inputs, labels)`` of ``splits.<name>``, checked: x is [N, C, H, W], y is [N], N > 0."""
    split = getattr(splits, name, None)
    if split is None or getattr(split, "x", None) is None:
        raise DataError(f"the '{name}' split is missing", f"give data with a {name} split (train_model needs it)")
    x = as_inputs(split.x)
    y = torch.from_numpy(np.ascontiguousarray(split.y, dtype=np.int64))
    if len(x.shape) != 4 or len(x) != len(y) or len(x) == 0:
        raise DataError(
            f"the '{name}' split has x {x.shape} and y {tuple(y.shape)}",
            "x must be float32 [N, C, H, W] with N > 0 and y int64 [N]",
        )
    return x, y


def data_hash(splits: Any, parts: list[Inputs | Tensor]) -> str:
    """``splits.fingerprint()`` when the splits have one, else a SHA-256 over ``parts``."""
    fp = getattr(splits, "fingerprint", None)
    if callable(fp):
        return str(fp())
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Inputs):
            p.update_hash(h)
        else:
            h.update(str(tuple(p.shape)).encode())
            h.update(p.cpu().numpy().tobytes())
    return h.hexdigest()


__all__ = ["Inputs", "as_inputs", "data_hash", "split_arrays"]
