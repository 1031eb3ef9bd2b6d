"""Splits: seeded, stratified, disjoint; config validation; npz source; data-free; augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from edgecompress.data import AugmentConfig, DataConfig, augment_batch, load_splits
from edgecompress.data.splits import stratified_take
from edgecompress.errors import DataError


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.asarray(x).reshape(len(x), -1)}


@pytest.fixture(scope="module")
def digits():
    return load_splits(DataConfig(dataset="digits", calib_size=200), seed=0)


def test_digits_sizes_shapes_and_normalization(digits):
    sizes = digits.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797)
    assert sizes["calib"] == 200
    assert sizes["val"] == round(0.1 * (1797 - sizes["test"]))
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10 and digits.labels[3] == "3"
    assert digits.train.x.dtype == np.float32 and digits.train.y.dtype == np.int64
    assert digits.train.raw.dtype == np.uint8 and digits.preprocess.value_range == (0.0, 255.0)
    assert digits.preprocess.scale == pytest.approx(1 / 255)
    x = np.asarray(digits.train.x)
    assert abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_disjoint_and_stratified(digits):
    from sklearn.datasets import load_digits

    full = digits.preprocess.apply(np.rint(load_digits().images[:, None] * 255 / 16).astype(np.uint8))
    # map every split back to raw indices (digits has duplicate images: consume each index once)
    lookup: dict[bytes, list[int]] = {}
    for i, row in enumerate(full.reshape(1797, -1)):
        lookup.setdefault(row.tobytes(), []).append(i)
    used: list[int] = []
    for name in ("train", "val", "calib", "test"):
        for row in np.asarray(getattr(digits, name).x).reshape(-1, 64):
            used.append(lookup[row.tobytes()].pop())
    assert len(used) == len(set(used)) == 1797  # a partition of the dataset
    for name in ("train", "val", "calib", "test"):
        counts = np.bincount(getattr(digits, name).y, minlength=10)
        frac = counts / counts.sum()
        assert np.all(np.abs(frac - 0.1) < 0.03), (name, counts)  # digits is ~balanced: strata kept


def test_digits_deterministic_and_seeded(digits):
    again = load_splits(DataConfig(dataset="digits", calib_size=200), seed=0)
    assert again.fingerprint() == digits.fingerprint()
    for name in ("train", "val", "calib", "test"):
        assert np.array_equal(getattr(again, name).x, getattr(digits, name).x)
    other = load_splits(DataConfig(dataset="digits", calib_size=200), seed=1)
    assert other.fingerprint() != digits.fingerprint()
    assert _rows(other.test.x) != _rows(digits.test.x)


def test_max_train_and_max_test_subsample(digits):
    s = load_splits(DataConfig(dataset="digits", max_train=300, max_test=50, calib_size=50), seed=0)
    assert s.sizes() == {"train": 220, "val": 30, "calib": 50, "test": 50}
    assert set(np.unique(s.test.y)) == set(range(10))
    # the test rows of the subsample come from the full test split
    assert _rows(s.test.x) <= _rows(
        load_splits(DataConfig(dataset="digits", max_train=300, calib_size=50), seed=0).test.x
    )


def test_stratified_take_exact_counts_and_disjoint():
    y = np.repeat(np.arange(3), [10, 20, 30])
    rng = np.random.default_rng(0)
    taken, rest = stratified_take(y, np.arange(60), 12, rng)
    assert len(taken) == 12 and len(np.intersect1d(taken, rest)) == 0 and len(taken) + len(rest) == 60
    assert list(np.bincount(y[taken])) == [2, 4, 6]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"dataset": "digits", "val_fraction": 1.5}, "val_fraction"),
        ({"dataset": "digits", "test_fraction": 0.0}, "test_fraction"),
        ({"dataset": "npz"}, "data.path"),
        ({"dataset": "digits", "max_train": 100, "calib_size": 60}, "calib_size"),
        ({"dataset": "digits", "mean": [0.5]}, "both"),
        ({"dataset": "none"}, "input_shape"),
        ({"dataset": "digits", "image_size": [0, 4]}, "image_size"),
        ({"dataset": "digits", "colour": 1}, "colour"),
    ],
)
def test_config_validation(kwargs, word):
    with pytest.raises(ValidationError, match=word):
        DataConfig(**kwargs)


def test_calib_too_large_for_data_is_one_line_error():
    with pytest.raises(DataError, match="calib_size") as err:
        load_splits(DataConfig(dataset="digits", calib_size=1000), seed=0)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)


def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _toy(n=60, k=3, shape=(6, 6), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n, dtype=np.int64) % k


def test_npz_source_layouts_and_official_test(tmp_path):
    x, y = _toy(60, 3, (6, 6, 3))
    xt, yt = _toy(15, 3, (6, 6, 3), seed=1)
    path = _npz(tmp_path, x_train=x, y_train=y, x_test=xt, y_test=yt, labels=np.array(["a", "b", "c"]))
    s = load_splits(DataConfig(dataset="npz", path=path, calib_size=6), seed=0)
    assert s.input_shape == (3, 6, 6) and s.labels == ["a", "b", "c"] and len(s.test) == 15
    assert s.sizes()["train"] + s.sizes()["val"] + s.sizes()["calib"] == 60
    expected = s.preprocess.apply(xt.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(s.test.x, expected, rtol=1e-6)
    # NCHW float input in [0, 1] is accepted as is (scale 1)
    path2 = _npz(tmp_path, "f.npz", x_train=(x.transpose(0, 3, 1, 2) / 255).astype(np.float32), y_train=y)
    s2 = load_splits(DataConfig(dataset="npz", path=path2, calib_size=6), seed=0)
    assert s2.preprocess.scale == 1.0 and s2.input_shape == (3, 6, 6) and len(s2.test) == 12


@pytest.mark.parametrize(
    "case, word",
    [
        ("empty", "empty"),
        ("rank", "rank"),
        ("nan", "NaN"),
        ("range", "out of range"),
        ("float_labels", "integers"),
        ("one_class", "only one class"),
        ("mismatch", "labels"),
        ("few", "at least 2"),
        ("missing_key", "lacks"),
    ],
)
def test_npz_validation_errors_are_one_line(tmp_path, case, word):
    x, y = _toy()
    arrays = {"x_train": x, "y_train": y}
    if case == "empty":
        arrays = {"x_train": x[:0], "y_train": y[:0]}
    elif case == "rank":
        arrays["x_train"] = x.reshape(60, -1)
    elif case == "nan":
        xf = x.astype(np.float32) / 255
        xf[3, 2, 2] = np.nan
        arrays["x_train"] = xf
    elif case == "range":
        arrays["labels"] = np.array(["a", "b"])
    elif case == "float_labels":
        arrays["y_train"] = y.astype(np.float32)
    elif case == "one_class":
        arrays["y_train"] = np.zeros(60, dtype=np.int64)
    elif case == "mismatch":
        arrays["y_train"] = y[:50]
    elif case == "few":
        arrays["y_train"] = np.where(np.arange(60) == 0, 3, y)
    elif case == "missing_key":
        arrays = {"x": x, "y": y}
    path = _npz(tmp_path, **arrays)
    with pytest.raises(DataError, match=word) as err:
        load_splits(DataConfig(dataset="npz", path=path, calib_size=4), seed=0)
    assert "\n" not in str(err.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_splits(DataConfig(dataset="npz", path=tmp_path / "nope.npz"), seed=0)


def test_data_free_shapes_and_small_eval_npz(tmp_path):
    s = load_splits(DataConfig(dataset="none", input_shape=(3, 16, 16), num_classes=5), seed=0)
    assert s.train is None and s.test is None and s.num_classes == 5 and s.input_shape == (3, 16, 16)
    x, y = _toy(40, 4)
    path = _npz(tmp_path, x_val=x, y_val=y)
    s = load_splits(DataConfig(dataset="none", path=path, mean=[0.5], std=[0.25]), seed=0)
    assert s.train is None and s.calib is None and len(s.val) + len(s.test) == 40
    assert s.preprocess.mean == [0.5] and s.num_classes == 4


def test_augment_reproducible_and_shape():
    x = torch.randn(8, 3, 10, 10)
    cfg = AugmentConfig(crop_pad=2, hflip=True)
    a = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(5))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_augment_crop_is_a_shifted_window():
    x = torch.arange(25.0).reshape(1, 1, 5, 5).repeat(16, 1, 1, 1)
    out = augment_batch(x, AugmentConfig(crop_pad=1, hflip=False), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(16):  # every output is one of the 9 windows of the padded image
        windows = [padded[i, :, r : r + 5, c : c + 5] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i], w) for w in windows)
    same = augment_batch(x, AugmentConfig(crop_pad=0, hflip=False), torch.Generator().manual_seed(0))
    assert torch.equal(same, x) and same is not x


def test_split_seed_pins_the_cuts_whatever_the_run_seed() -> None:
    """A teacher trained on seed 0's cuts: a run with seed 1 and ``split_seed: 0`` keeps val and test unseen by it."""
    from edgecompress.data import load_splits
    from edgecompress.data.config import DataConfig

    pinned = load_splits(DataConfig(dataset="digits", split_seed=0), seed=1)
    seed0 = load_splits(DataConfig(dataset="digits"), seed=0)
    seed1 = load_splits(DataConfig(dataset="digits"), seed=1)
    for part in ("train", "val", "test"):
        assert np.array_equal(getattr(pinned, part).x, getattr(seed0, part).x), part
    assert not np.array_equal(seed1.val.x, seed0.val.x)  # without the pin, another seed cuts elsewhere
