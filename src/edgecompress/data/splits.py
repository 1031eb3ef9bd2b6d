"""Seeded, stratified, disjoint train / val / calib / test splits, normalized with training statistics.

Order of cuts (each with its own seeded stream, so changing one size leaves the others' draws alone):
test (official, else a stratified ``test_fraction`` of all data) -> ``max_test`` subsample -> ``max_train`` subsample
of the training portion -> val (``val_fraction``) -> calib (``calib_size``) -> train (the rest). All four are disjoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from edgecompress.data.config import DataConfig
from edgecompress.data.preprocess import Preprocess
from edgecompress.data.sources import RawData, check_arrays, check_classes
from edgecompress.errors import DataError

log = logging.getLogger(__name__)

# stream ids for np.random.default_rng([seed, stream])
_TEST, _MAX_TEST, _MAX_TRAIN, _VAL, _CALIB = range(5)


@dataclass
class ArraySplit:
    """One split: ``x`` float32 ``[N, C, H, W]`` normalized, ``y`` int64 ``[N]``."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.x.ndim != 4:
            raise DataError(f"ArraySplit.x must be float32 [N,C,H,W], got {self.x.dtype} {self.x.shape}", "convert it")
        if self.y.dtype != np.int64 or self.y.shape != (len(self.x),):
            raise DataError(
                f"ArraySplit.y must be int64 [{len(self.x)}], got {self.y.dtype} {self.y.shape}", "convert it"
            )

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    """The data every stage sees. ``None`` splits exist only where the user gave no data (data-free)."""

    train: ArraySplit | None
    val: ArraySplit | None
    calib: ArraySplit | None
    test: ArraySplit | None
    labels: list[str]
    preprocess: Preprocess
    input_shape: tuple[int, int, int]
    num_classes: int
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """SHA-256 over every split's arrays, the labels and the preprocessing (computed once, then cached)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in ("train", "val", "calib", "test"):
                split = getattr(self, name)
                h.update(name.encode())
                if split is None:
                    h.update(b"none")
                    continue
                for arr in (split.x, split.y):
                    h.update(f"{arr.dtype.str}{arr.shape}".encode())
                    h.update(memoryview(np.ascontiguousarray(arr)).cast("B"))
            h.update(json.dumps(self.labels).encode())
            h.update(self.preprocess.model_dump_json().encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def sizes(self) -> dict[str, int]:
        """Number of samples per split (0 for a missing one)."""
        return {n: len(s) if (s := getattr(self, n)) is not None else 0 for n in ("train", "val", "calib", "test")}


def stratified_take(
    y: np.ndarray, idx: np.ndarray, n_take: int, rng: np.random.Generator, *, keep_one: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``idx`` into (taken, rest) with ``n_take`` taken in proportion to each class (largest remainder).

    Args:
        y: labels of the whole dataset.
        idx: the indices to split (into ``y``).
        n_take: how many to take.
        rng: seeded generator (per-class permutations).
        keep_one: leave at least one sample of every class in ``rest``; otherwise keep at least one in ``taken``.

    Returns:
        Two sorted index arrays, disjoint, together ``idx``.
    """
    idx = np.sort(idx)
    classes, counts = np.unique(y[idx], return_counts=True)
    quota = n_take * counts / len(idx)
    hi = counts - 1 if keep_one else counts
    lo = np.zeros_like(counts) if keep_one else np.minimum(counts, 1)
    base = np.clip(np.floor(quota).astype(np.int64), lo, hi)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    short = n_take - int(base.sum())
    while short > 0 and (base < hi).any():
        for k in order:
            if short > 0 and base[k] < hi[k]:
                base[k] += 1
                short -= 1
    taken = []
    for k, c in enumerate(classes):
        members = idx[y[idx] == c]
        taken.append(rng.permutation(members)[: base[k]])
    taken_idx = np.sort(np.concatenate(taken)) if taken else np.array([], dtype=np.int64)
    rest = np.setdiff1d(idx, taken_idx, assume_unique=True)
    return taken_idx, rest


def _stats(x: np.ndarray, scale: float) -> tuple[list[float], list[float]]:
    xs = x.astype(np.float64) * scale
    mean = xs.mean(axis=(0, 2, 3))
    std = xs.std(axis=(0, 2, 3))
    std = np.where(std < 1e-8, 1.0, std)  # a constant channel would otherwise divide by zero
    return [float(v) for v in mean], [float(v) for v in std]


def _split(raw_x: np.ndarray, y: np.ndarray, idx: np.ndarray | None, pre: Preprocess) -> ArraySplit | None:
    if idx is None:
        return None
    return ArraySplit(x=np.ascontiguousarray(pre.apply(raw_x[idx])), y=np.ascontiguousarray(y[idx]))


def load_raw(cfg: DataConfig) -> RawData | None:
    """Load and validate the configured source (None for data-free without a path)."""
    from edgecompress.data import sources

    if cfg.dataset == "digits":
        return sources.load_digits_raw()
    if cfg.dataset == "fashion-mnist":
        from edgecompress.data.fashion import CLASSES, load_fashion_mnist

        x, y, xt, yt = load_fashion_mnist(cfg.path, allow_download=cfg.download)
        return RawData(x=x[:, None], y=y, labels=list(CLASSES), scale=1.0 / 255.0, x_test=xt[:, None], y_test=yt)
    if cfg.dataset == "npz":
        return sources.load_npz_raw(cfg.path)  # type: ignore[arg-type]
    if cfg.dataset == "folder":
        return sources.load_folder_raw(cfg.path, cfg.image_size)  # type: ignore[arg-type]
    return sources.load_npz_eval(cfg.path) if cfg.path is not None else None


def load_splits(cfg: DataConfig, *, seed: int) -> Splits:
    """Load the configured dataset and cut seeded, stratified, disjoint splits (see the module docstring).

    Args:
        cfg: the ``data:`` config section.
        seed: the run seed; the same (cfg, seed) gives bit-identical splits.

    Returns:
        :class:`Splits` with normalized float32 NCHW arrays; mean/std from the train split (or ``cfg.mean``/``std``).
    """
    raw = load_raw(cfg)
    if raw is None:  # data-free, nothing given but the shape
        c, h, w = cfg.input_shape  # type: ignore[misc]
        k = int(cfg.num_classes)  # type: ignore[arg-type]
        mean, std = list(cfg.mean or [0.0] * c), list(cfg.std or [1.0] * c)
        if cfg.mean is None:
            log.warning("data-free run without data.mean/std: assuming the teacher takes x/255 un-normalized")
        pre = Preprocess(mean=mean, std=std, size=(h, w), channels=c, scale=1.0 / 255.0)
        return Splits(None, None, None, None, [str(i) for i in range(k)], pre, (c, h, w), k)

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream])

    k = len(raw.labels)
    what = cfg.path.name if cfg.path is not None else cfg.dataset
    check_classes(raw.y, raw.labels, what)
    all_idx = np.arange(len(raw.y))
    if raw.x_test is not None:
        x_test_raw, y_test_raw = check_arrays(raw.x_test, raw.y_test, f"{what} test", k)  # type: ignore[arg-type]
        test_idx, pool = np.arange(len(y_test_raw)), all_idx
    else:
        n_test = max(1, int(round(cfg.test_fraction * len(all_idx))))
        test_idx, pool = stratified_take(raw.y, all_idx, n_test, rng(_TEST))
        x_test_raw, y_test_raw = raw.x, raw.y
    if cfg.max_test is not None and len(test_idx) > cfg.max_test:
        test_idx, _ = stratified_take(y_test_raw, test_idx, cfg.max_test, rng(_MAX_TEST), keep_one=False)

    if cfg.dataset == "none":  # the labelled npz serves validation (and test); nothing to train on
        train_idx = calib_idx = None
        val_idx = pool
    else:
        if cfg.max_train is not None and len(pool) > cfg.max_train:
            pool, _ = stratified_take(raw.y, pool, cfg.max_train, rng(_MAX_TRAIN), keep_one=False)
        n_val = max(1, int(round(cfg.val_fraction * len(pool))))
        val_idx, rest = stratified_take(raw.y, pool, n_val, rng(_VAL))
        calib_idx = None
        if cfg.calib_size > 0:
            if len(rest) - cfg.calib_size < len(val_idx) + cfg.calib_size:
                limit = max(0, (len(rest) - len(val_idx)) // 2)
                raise DataError(
                    f"calib_size {cfg.calib_size} + val {len(val_idx)} would be larger than the remaining train split "
                    f"({len(rest) - cfg.calib_size} of {len(pool)} training-portion samples)",
                    f"set data.calib_size <= {limit} (or 0), or lower data.val_fraction",
                )
            calib_idx, rest = stratified_take(raw.y, rest, cfg.calib_size, rng(_CALIB))
        train_idx = rest

    stat_x = raw.x[train_idx] if train_idx is not None else raw.x[val_idx]
    if cfg.mean is not None:
        mean, std = list(cfg.mean), list(cfg.std)  # type: ignore[arg-type]
        if len(mean) != raw.x.shape[1]:
            raise DataError(f"data.mean has {len(mean)} values for {raw.x.shape[1]}-channel images", "one per channel")
    else:
        if train_idx is None:
            log.warning("no training data: normalization statistics computed on the validation data")
        mean, std = _stats(stat_x, raw.scale)
    c, h, w = (int(v) for v in raw.x.shape[1:])
    pre = Preprocess(mean=mean, std=std, size=(h, w), channels=c, scale=raw.scale)
    splits = Splits(
        train=_split(raw.x, raw.y, train_idx, pre),
        val=_split(raw.x, raw.y, val_idx, pre),
        calib=_split(raw.x, raw.y, calib_idx, pre),
        test=_split(x_test_raw, y_test_raw, test_idx, pre),
        labels=list(raw.labels),
        preprocess=pre,
        input_shape=(c, h, w),
        num_classes=k,
    )
    log.info("splits %s: %s, input %s, %d classes", cfg.dataset, splits.sizes(), splits.input_shape, k)
    return splits
