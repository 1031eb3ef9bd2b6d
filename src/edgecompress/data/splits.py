"""Seeded, stratified, disjoint train / val / calib / test splits, normalized with training statistics.

Order of cuts (each with its own seeded stream, so changing one size leaves the others' draws alone):
test (official, else a stratified ``test_fraction`` of all data) -> ``max_test`` subsample -> ``max_train`` subsample
of the training portion -> val (``val_fraction``) -> calib (``calib_size``) -> train (the rest). All four are disjoint.

Memory: each split holds its raw rows (source dtype, a view of one array reordered in place) and normalizes on read
(``split.x[a:b]``); the statistics are a streaming pass over the train split (:mod:`edgecompress.data.arrays`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np

from edgecompress.data.arrays import NormalizedImages, arrange_rows, channel_stats, chunk_rows, iter_chunks
from edgecompress.data.config import DataConfig
from edgecompress.data.preprocess import Preprocess, dtype_for_range
from edgecompress.data.sources import RawData, check_arrays, check_classes, input_contract, to_color_mode
from edgecompress.errors import DataError

log = logging.getLogger(__name__)

# stream ids for np.random.default_rng([seed, stream])
_TEST, _MAX_TEST, _MAX_TRAIN, _VAL, _CALIB = range(5)


class ArraySplit:
    """One split: raw images ``raw`` ``[N, C, H, W]`` (source dtype), labels ``y`` int64 ``[N]``, and ``x``.

    ``x`` is a :class:`NormalizedImages`: float32 normalized rows on indexing (``x[:64]``, ``x[idx]``), ``len``,
    ``shape``, ``dtype``; ``np.asarray(x)`` materializes the whole split. Only ``raw`` is held in memory.
    """

    __slots__ = ("raw", "y", "preprocess", "x")

    def __init__(self, raw: np.ndarray, y: np.ndarray, preprocess: Preprocess) -> None:
        if raw.ndim != 4 or tuple(raw.shape[1:]) != (preprocess.channels, *preprocess.size):
            raise DataError(
                f"ArraySplit.raw must be [N, {preprocess.channels}, {preprocess.size[0]}, {preprocess.size[1]}], "
                f"got {raw.shape}",
                "convert it",
            )
        if y.dtype != np.int64 or y.shape != (len(raw),):
            raise DataError(f"ArraySplit.y must be int64 [{len(raw)}], got {y.dtype} {y.shape}", "convert it")
        self.raw, self.y, self.preprocess = raw, y, preprocess
        self.x = NormalizedImages(raw, preprocess)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"ArraySplit(n={len(self)}, raw={self.raw.dtype}{tuple(self.raw.shape[1:])})"


@dataclass
class Splits:
    """The data every stage sees. ``None`` splits exist only where the user gave no data (data-free).

    ``notes`` are one-line remarks for the report (images converted to the colour mode, dtypes cast);
    ``conversions`` counts converted images by kind, e.g. ``{"L->RGB": 12}``.
    """

    train: ArraySplit | None
    val: ArraySplit | None
    calib: ArraySplit | None
    test: ArraySplit | None
    labels: list[str]
    preprocess: Preprocess
    input_shape: tuple[int, int, int]
    num_classes: int
    notes: list[str] = field(default_factory=list)
    conversions: dict[str, int] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def fingerprint(self) -> str:
        """SHA-256 over every split's raw arrays and labels, the label names and the preprocessing (cached).

        The raw rows are hashed chunk by chunk in NCHW order, so a split stored NHWC hashes as its NCHW copy would.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name in ("train", "val", "calib", "test"):
                split = getattr(self, name)
                h.update(name.encode())
                if split is None:
                    h.update(b"none")
                    continue
                for arr in (split.raw, split.y):
                    h.update(f"{arr.dtype.str}{arr.shape}".encode())
                    for chunk in iter_chunks(arr, chunk_rows(arr, itemsize=1)):
                        h.update(np.ascontiguousarray(chunk).data.cast("B"))
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


def _cut(x: np.ndarray, y: np.ndarray, parts: list[np.ndarray | None], pre: Preprocess) -> list[ArraySplit | None]:
    """Cut disjoint index sets of ``x`` into splits without copying: the rows are reordered in place so that each
    split is a contiguous slice (a view) in its index order. When most rows go unused (``max_train``/``max_test``),
    the used ones are copied out so the unused ones can be freed."""
    used = [p for p in parts if p is not None]
    order = np.concatenate(used) if used else np.zeros(0, np.int64)
    if not x.flags.writeable or (x.base is not None and not x.base.flags.writeable):
        x = x.copy()  # a read-only source (e.g. a memory-mapped or buffer-backed array): the rows must move
    y = y.copy()
    arrange_rows(x, order)
    arrange_rows(y, order)
    if len(order) < len(x) / 2:
        x, y = x[: len(order)].copy(), y[: len(order)].copy()
    out: list[ArraySplit | None] = []
    start = 0
    for p in parts:
        if p is None:
            out.append(None)
            continue
        out.append(ArraySplit(x[start : start + len(p)], y[start : start + len(p)], pre))
        start += len(p)
    return out


def load_raw(cfg: DataConfig) -> RawData | None:
    """Load and validate the configured source in its input contract (None for data-free without a path).

    ``data.color_mode`` converts array sources (counted in ``conversions``); folders convert while decoding.
    """
    from edgecompress.data import sources

    if cfg.dataset == "folder":
        from edgecompress.data.folder import load_folder_raw

        raw = load_folder_raw(cfg.path, cfg.image_size, classes=cfg.classes, color_mode=cfg.color_mode)  # type: ignore[arg-type]
        if cfg.value_range is not None:  # e.g. 12-bit images in 16-bit PNGs: (0, 4095)
            _, raw.input_dtype, raw.value_range, _ = input_contract(raw.x, cfg.path.name, cfg.value_range)  # type: ignore[union-attr]
        return raw
    if cfg.dataset == "digits":
        raw = sources.load_digits_raw()
    elif cfg.dataset == "fashion-mnist":
        from edgecompress.data.fashion import CLASSES, load_fashion_mnist

        x, y, xt, yt = load_fashion_mnist(cfg.path, allow_download=cfg.download)
        raw = RawData(x=x[:, None], y=y, labels=list(CLASSES), x_test=xt[:, None], y_test=yt)
    elif cfg.dataset == "npz":
        raw = sources.load_npz_raw(cfg.path, cfg.value_range)  # type: ignore[arg-type]
    elif cfg.path is not None:
        raw = sources.load_npz_eval(cfg.path, cfg.value_range)
    else:
        return None
    if cfg.value_range is not None and cfg.dataset in ("digits", "fashion-mnist"):
        _, raw.input_dtype, raw.value_range, _ = input_contract(raw.x, cfg.dataset, cfg.value_range)
    for name in ("x", "x_test"):
        arr = getattr(raw, name)
        if arr is not None:
            arr, counts = to_color_mode(arr, cfg.color_mode, name)
            setattr(raw, name, arr)
            for kind, n in counts.items():
                raw.conversions[kind] = raw.conversions.get(kind, 0) + n
                raw.notes.append(f"{n} {name} images converted from mode {kind.replace('->', ' to ')}")
    return raw


def _statistics(cfg: DataConfig, raw: RawData, stat_x: np.ndarray) -> tuple[list[float], list[float]]:
    """``data.mean``/``data.std`` when given (the teacher's own normalization), else a streaming pass over train."""
    if cfg.mean is not None:
        if len(cfg.mean) != stat_x.shape[1]:
            raise DataError(
                f"data.mean has {len(cfg.mean)} values for {stat_x.shape[1]}-channel images",
                "give one mean and one std per channel, as the teacher checkpoint was trained with",
            )
        return list(cfg.mean), list(cfg.std)  # type: ignore[arg-type]
    if cfg.dataset == "none":
        log.warning("no training data: normalization statistics computed on the validation data")
    return channel_stats(stat_x, raw.scale)


def load_splits(cfg: DataConfig, *, seed: int) -> Splits:
    """Load the configured dataset and cut seeded, stratified, disjoint splits (see the module docstring).

    Args:
        cfg: the ``data:`` config section.
        seed: the run seed (``cfg.split_seed`` replaces it when set); the same (cfg, seed) gives bit-identical splits.

    Returns:
        :class:`Splits` whose splits hold the raw images (source dtype) and normalize per batch; mean/std from the
        train split in a streaming pass, or ``cfg.mean``/``cfg.std``.
    """
    if cfg.split_seed is not None:  # the cuts pinned (a teacher trained on them); the run's seed does the rest
        seed = cfg.split_seed
    raw = load_raw(cfg)
    if raw is None:  # data-free, nothing given but the shape
        c, h, w = cfg.input_shape  # type: ignore[misc]
        k = int(cfg.num_classes)  # type: ignore[arg-type]
        mean, std = list(cfg.mean or [0.0] * c), list(cfg.std or [1.0] * c)
        if cfg.mean is None:
            log.warning("data-free run without data.mean/std: assuming the teacher takes x/255 un-normalized")
        vr = cfg.value_range or (0.0, 255.0)
        dtype = dtype_for_range(vr[1]) if vr[0] >= 0 else "float32"
        pre = Preprocess(mean=mean, std=std, size=(h, w), channels=c, value_range=vr, input_dtype=dtype)
        return Splits(None, None, None, None, [str(i) for i in range(k)], pre, (c, h, w), k)

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream])

    k = len(raw.labels)
    what = cfg.path.name if cfg.path is not None else cfg.dataset
    check_classes(raw.y, raw.labels, what)
    all_idx = np.arange(len(raw.y))
    if raw.x_test is not None:
        assert raw.y_test is not None, "the sources set x_test and y_test together"
        raw.x_test, raw.y_test = check_arrays(raw.x_test, raw.y_test, f"{what} test", k)
        test_idx, pool = np.arange(len(raw.y_test)), all_idx
        y_test_all = raw.y_test
    else:
        n_test = max(1, int(round(cfg.test_fraction * len(all_idx))))
        test_idx, pool = stratified_take(raw.y, all_idx, n_test, rng(_TEST))
        y_test_all = raw.y
    if cfg.max_test is not None and len(test_idx) > cfg.max_test:
        test_idx, _ = stratified_take(y_test_all, test_idx, cfg.max_test, rng(_MAX_TEST), keep_one=False)

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

    c, h, w = (int(v) for v in raw.x.shape[1:])
    # the preprocessing is needed to build the splits, the statistics need the train split: cut with a placeholder
    first = Preprocess(
        mean=[0.0] * c, std=[1.0] * c, size=(h, w), channels=c, input_dtype=raw.input_dtype, value_range=raw.value_range
    )
    if raw.x_test is not None:
        train, val, calib = _cut(raw.x, raw.y, [train_idx, val_idx, calib_idx], first)
        (test,) = _cut(raw.x_test, y_test_all, [test_idx], first)
    else:
        train, val, calib, test = _cut(raw.x, raw.y, [train_idx, val_idx, calib_idx, test_idx], first)
    raw.x = raw.x_test = None  # type: ignore[assignment]  # the splits hold the only references now
    stat_split = train if train is not None else val
    mean, std = _statistics(cfg, raw, stat_split.raw)  # type: ignore[union-attr]
    pre = Preprocess(**{**first.model_dump(), "mean": mean, "std": std})
    train_s, val_s, calib_s, test_s = (
        None if s is None else ArraySplit(s.raw, s.y, pre) for s in (train, val, calib, test)
    )
    splits = Splits(
        train_s,
        val_s,
        calib_s,
        test_s,
        labels=list(raw.labels),
        preprocess=pre,
        input_shape=(c, h, w),
        num_classes=k,
        notes=list(raw.notes),
        conversions=dict(raw.conversions),
    )
    for note in splits.notes:
        log.info("data: %s", note)
    log.info("splits %s: %s, input %s, %d classes", cfg.dataset, splits.sizes(), splits.input_shape, k)
    return splits
