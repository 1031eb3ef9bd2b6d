"""Raw images kept in their source dtype (uint8 for 8-bit data), normalized only when read, a batch at a time.

A split of 50,000 RGB 96x96 images is 1.4 GB as uint8 and 5.5 GB as float32; :class:`NormalizedImages` keeps the
first and gives the second slice by slice. Helpers here never hold more than one chunk in a wider dtype: the
per-channel statistics are a streaming pass (histograms of integer pixels; Chan et al. 1979 pairwise mean/M2 update
for floats), the split order is applied in place (cycle-following permutation, one row of scratch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edgecompress.data.preprocess import Preprocess

CHUNK_BYTES = 8 << 20  # float64 bytes per chunk in streaming passes (~8 MiB of scratch, whatever the dataset size)


def chunk_rows(x: np.ndarray, itemsize: int = 8, budget: int | None = None) -> int:
    """Rows of ``x`` per chunk so that one chunk in a dtype of ``itemsize`` bytes stays within ``budget``."""
    per_row = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * itemsize)
    return max(1, (budget or CHUNK_BYTES) // per_row)


def iter_chunks(x: np.ndarray, rows: int | None = None) -> Iterator[np.ndarray]:
    """Consecutive row blocks of ``x`` (views, no copies)."""
    step = rows or chunk_rows(x)
    for i in range(0, len(x), step):
        yield x[i : i + step]


def channel_stats(raw: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of ``raw * scale`` over ``[N, C, H, W]``, in one streaming pass.

    uint8 / uint16 images: a per-channel histogram of the raw values (``np.bincount``), then the mean and the
    two-pass variance over the 256 (65,536) bins in float64 — exact counts, no float copy of the pixels. Float images:
    chunks combined with the pairwise update of Chan, Golub & LeVeque (1979): for parts a and b,
    ``mean = mean_a + d * n_b / n``, ``M2 = M2_a + M2_b + d^2 * n_a * n_b / n`` with ``d = mean_b - mean_a``; the std
    is ``sqrt(M2 / n)``. A constant channel gets std 1 (it would otherwise divide by zero).
    """
    if raw.dtype in (np.uint8, np.uint16):
        mean, std = _histogram_stats(raw)
        mean, std = mean * scale, std * scale
    else:
        mean, std = _chunked_stats(raw, scale)
    std = np.where(std < 1e-8, 1.0, std)
    return [float(v) for v in mean], [float(v) for v in std]


def _histogram_stats(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, bins = raw.shape[1], 256 if raw.dtype == np.uint8 else 65536
    hist = np.zeros((c, bins), dtype=np.int64)
    for chunk in iter_chunks(raw):
        for k in range(c):
            hist[k] += np.bincount(chunk[:, k].ravel(), minlength=bins)
    values = np.arange(bins, dtype=np.float64)
    p = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    mean = (p * values).sum(axis=1)
    var = (p * (values[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return mean, np.sqrt(var)


def _chunked_stats(raw: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    c = raw.shape[1]
    n, mean, m2 = 0, np.zeros(c), np.zeros(c)
    for chunk in iter_chunks(raw):
        xs = chunk.astype(np.float64, order="C") * scale  # C order: the reductions below run over contiguous memory
        xs = xs.reshape(xs.shape[0], c, -1).transpose(1, 0, 2).reshape(c, -1)
        nb = xs.shape[1]
        mb = xs.mean(axis=1)
        xs -= mb[:, None]
        m2b = np.einsum("ck,ck->c", xs, xs)
        total = n + nb
        d = mb - mean
        mean = mean + d * (nb / total)
        m2 = m2 + m2b + d * d * (n * nb / total)
        n = total
    return mean, np.sqrt(m2 / max(n, 1))


def arrange_rows(x: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Reorder the rows of ``x`` in place so that ``x[:len(order)]`` holds the old rows ``order``, in that order.

    The rows not named in ``order`` follow in their old relative order. No second copy of ``x`` is made: each cycle of
    the permutation is walked with one row of scratch. ``x`` must be writeable (its base owns the memory).

    Returns:
        ``x`` itself.
    """
    n = len(x)
    order = np.asarray(order, dtype=np.int64)
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), order, assume_unique=True)
    perm = np.concatenate([order, rest]).tolist()  # new row j takes old row perm[j]
    done = bytearray(n)
    scratch = np.empty_like(x[:1])
    for start in range(n):
        if done[start]:
            continue
        done[start] = 1
        if perm[start] == start:
            continue
        scratch[0] = x[start]
        j = start
        while True:
            k = perm[j]
            if k == start:
                x[j] = scratch[0]
                break
            x[j] = x[k]
            done[k] = 1
            j = k
    return x


class NormalizedImages:
    """A read-only float32 ``[N, C, H, W]`` view of raw images: indexing normalizes just the rows asked for.

    ``x[:64]``, ``x[idx]``, ``x[i]``, ``len(x)``, ``x.shape``, ``x.dtype`` (float32) work as on an array;
    ``np.asarray(x)`` materializes the whole split (chunk by chunk into one float32 array) — for callers that need it;
    prefer :meth:`batches` or slicing for large data.
    """

    __slots__ = ("raw", "preprocess")

    def __init__(self, raw: np.ndarray, preprocess: Preprocess) -> None:
        self.raw = raw
        self.preprocess = preprocess

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.raw.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        return self.raw.ndim

    @property
    def size(self) -> int:
        return int(self.raw.size)

    @property
    def nbytes(self) -> int:
        """Bytes the materialized float32 array would take (the raw array takes ``raw.nbytes``)."""
        return int(self.raw.size) * 4

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"NormalizedImages(shape={self.shape}, raw dtype={self.raw.dtype})"

    def _rows(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return np.ascontiguousarray(self.preprocess.apply(self.raw[key][None])[0])
        if hasattr(key, "numpy") and not isinstance(key, np.ndarray):  # a torch index tensor
            key = key.numpy()
        return np.ascontiguousarray(self.preprocess.apply(self.raw[key]))

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            return self._rows(key)
        if not key:
            return np.asarray(self)
        head, rest = key[0], key[1:]
        if head is Ellipsis or head is None:
            return np.asarray(self)[key]
        rows = self._rows(head)
        return rows[rest] if isinstance(head, (int, np.integer)) else rows[(slice(None), *rest)]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Normalized float32 batches of ``batch_size`` rows, in order."""
        for i in range(0, len(self), batch_size):
            yield self[i : i + batch_size]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, dtype=np.float32)
        step = chunk_rows(self.raw, itemsize=4)
        for i in range(0, len(self), step):
            out[i : i + step] = self.preprocess.apply(self.raw[i : i + step])
        return out if dtype is None or np.dtype(dtype) == out.dtype else out.astype(dtype)
