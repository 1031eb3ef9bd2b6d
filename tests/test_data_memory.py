"""Splits hold raw images (uint8 / source dtype) and normalize per batch; statistics stream; cuts happen in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress.data import DataConfig, NormalizedImages, Preprocess, load_splits
from edgecompress.data.arrays import arrange_rows, channel_stats


def _npz(tmp_path, n=90, shape=(5, 7, 3), dtype=np.uint8, seed=0, **extra):
    rng = np.random.default_rng(seed)
    hi = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    x = (rng.random((n, *shape)) * hi).astype(dtype)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(n) % 3, **extra)
    return path, x


def test_split_keeps_uint8_and_x_normalizes_slices(tmp_path):
    path, x = _npz(tmp_path)  # NHWC uint8: stored as is, read NCHW
    s = load_splits(DataConfig(dataset="npz", path=path, calib_size=9), seed=0)
    for name in ("train", "val", "calib", "test"):
        split = getattr(s, name)
        assert split.raw.dtype == np.uint8 and split.raw.shape[1:] == (3, 5, 7)
        assert isinstance(split.x, NormalizedImages) and split.x.dtype == np.float32
        assert split.x.shape == (len(split), 3, 5, 7) and len(split.x) == len(split.y)
        np.testing.assert_array_equal(split.x[:4], s.preprocess.apply(split.raw[:4]))
    tr = s.train
    idx = np.array([5, 0, 3])
    np.testing.assert_array_equal(tr.x[idx], s.preprocess.apply(tr.raw[idx]))
    np.testing.assert_array_equal(tr.x[torch.tensor([2, 1])], tr.x[[2, 1]])  # torch index batches (trainer)
    np.testing.assert_array_equal(tr.x[2], s.preprocess.apply(tr.raw[2:3])[0])
    np.testing.assert_array_equal(tr.x[1:3, 2], s.preprocess.apply(tr.raw[1:3])[:, 2])
    full = np.asarray(tr.x)
    assert full.dtype == np.float32 and full.shape == tr.x.shape
    np.testing.assert_array_equal(full, s.preprocess.apply(tr.raw))
    assert np.concatenate(list(tr.x.batches(7))).tobytes() == full.tobytes()
    # every raw row of the dataset is in exactly one split, in the source's values
    rows = {r.tobytes() for r in np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)}
    got = [r.tobytes() for n in ("train", "val", "calib", "test") for r in getattr(s, n).raw.reshape(-1, 105)]
    assert len(got) == len(x) and set(got) == rows


def test_splits_share_one_array_no_copy(tmp_path):
    path, _ = _npz(tmp_path, n=300)
    s = load_splits(DataConfig(dataset="npz", path=path, calib_size=30), seed=0)
    bases = {id(np.asarray(getattr(s, n).raw).base) for n in ("train", "val", "calib", "test")}
    assert len(bases) == 1 and None not in bases  # views of one array: the data is held once


def test_streaming_stats_match_float64(tmp_path, monkeypatch):
    from edgecompress.data import arrays

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, (53, 3, 6, 4), dtype=np.uint8)
    raw[:, 1] = 7  # a constant channel gets std 1
    monkeypatch.setattr(arrays, "CHUNK_BYTES", 6 * 4 * 8 * 3 * 5)  # 5 rows per chunk: 11 chunks, last one short
    ref = raw.astype(np.float64) / 255
    for data, scale in ((raw, 1 / 255), (raw.astype(np.uint16), 1 / 255), (ref.astype(np.float32), 1.0)):
        mean, std = channel_stats(data, scale)  # histogram (integers) or Chan's chunked update (floats)
        np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6)
        np.testing.assert_allclose(std[0::2], ref.std(axis=(0, 2, 3))[0::2], rtol=1e-6)
        assert std[1] == 1.0
    mean, std = channel_stats(raw.transpose(0, 1, 3, 2), 1 / 255)  # a strided view: the same numbers
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)


def test_arrange_rows_in_place():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 100, (40, 2, 3))
    old = x.copy()
    order = rng.permutation(40)[:25]
    out = arrange_rows(x, order)
    assert out is x
    np.testing.assert_array_equal(x[:25], old[order])
    rest = np.setdiff1d(np.arange(40), order)
    np.testing.assert_array_equal(x[25:], old[rest])


def test_data_mean_std_replace_statistics(tmp_path):
    """A teacher trained on x/255 without normalization: data.mean [0]*C, std [1]*C gives exactly x/255."""
    path, _ = _npz(tmp_path)
    s = load_splits(DataConfig(dataset="npz", path=path, calib_size=9, mean=[0, 0, 0], std=[1, 1, 1]), seed=0)
    assert s.preprocess.mean == [0, 0, 0] and s.preprocess.std == [1, 1, 1]
    np.testing.assert_allclose(s.val.x[:5], s.val.raw[:5].astype(np.float32) / 255, rtol=1e-6)
    from edgecompress.errors import DataError

    with pytest.raises(DataError, match="2 values for 3-channel"):
        load_splits(DataConfig(dataset="npz", path=path, calib_size=9, mean=[0, 0], std=[1, 1]), seed=0)


def test_fingerprint_from_raw_and_preprocess(tmp_path):
    path, _ = _npz(tmp_path)
    a = load_splits(DataConfig(dataset="npz", path=path, calib_size=9), seed=0)
    b = load_splits(DataConfig(dataset="npz", path=path, calib_size=9), seed=0)
    c = load_splits(DataConfig(dataset="npz", path=path, calib_size=9, mean=[0.5] * 3, std=[0.25] * 3), seed=0)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_normalized_images_on_a_bare_array():
    pre = Preprocess(mean=[0.5], std=[0.25], size=(2, 2), channels=1)
    raw = np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2)
    x = NormalizedImages(raw, pre)
    assert x.shape == (3, 1, 2, 2) and x.nbytes == 48 and "uint8" in repr(x)
    np.testing.assert_allclose(np.asarray(x, dtype=np.float64), (raw / 255 - 0.5) / 0.25, rtol=1e-6)
