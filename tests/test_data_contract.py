"""The raw-input contract (dtype, value range, colour mode) set by the data's dtype; class order for folders."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from edgecompress.data import DataConfig, Preprocess, load_splits
from edgecompress.errors import DataError


def test_digits_contract_is_8bit_and_matches_a_png_pixel_path():
    """Regression (issue 15 finding 4): digits used scale 1/16, so an app's 8-bit PNG was normalized 16x too bright."""
    from sklearn.datasets import load_digits

    s = load_splits(DataConfig(dataset="digits", calib_size=100), seed=0)
    pre = s.preprocess
    assert pre.value_range == (0.0, 255.0) and pre.input_dtype == "uint8" and pre.color_mode == "L"
    assert pre.scale == pytest.approx(1 / 255)
    # an 8-bit image of a test digit, as an app would load it from a PNG, normalized by the contract alone
    raw = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    lookup = {r.tobytes(): i for i, r in enumerate(raw.reshape(len(raw), -1))}
    row = s.test.raw[0, 0]
    png_pixels = raw[lookup[row.tobytes()]]  # [H, W] uint8, 0..255
    by_contract = (png_pixels.astype(np.float32) * np.float32(pre.scale) - np.float32(pre.mean[0])) / np.float32(
        pre.std[0]
    )
    np.testing.assert_allclose(by_contract, s.test.x[0][0], rtol=1e-6, atol=1e-6)
    assert png_pixels.max() > 16  # real 8-bit values, not 0..16


def _npz(tmp_path, x, name="d.npz", **extra):
    path = tmp_path / name
    np.savez(path, x_train=x, y_train=np.arange(len(x)) % 3, **extra)
    return path


@pytest.mark.parametrize(
    "dtype, hi, expect_dtype, expect_range, scale",
    [
        (np.uint8, 255, "uint8", (0.0, 255.0), 1 / 255),
        (np.uint16, 65535, "uint16", (0.0, 65535.0), 1 / 65535),
        (np.float32, 1.0, "float32", (0.0, 1.0), 1.0),
        (np.float64, 1.0, "float32", (0.0, 1.0), 1.0),
        (np.int64, 200, "uint8", (0.0, 255.0), 1 / 255),
    ],
)
def test_npz_contract_by_dtype(tmp_path, dtype, hi, expect_dtype, expect_range, scale):
    rng = np.random.default_rng(0)
    x = (rng.random((60, 4, 4)) * hi).astype(dtype)
    s = load_splits(DataConfig(dataset="npz", path=_npz(tmp_path, x), calib_size=6), seed=0)
    pre = s.preprocess
    assert (pre.input_dtype, pre.value_range) == (expect_dtype, expect_range)
    assert pre.scale == pytest.approx(scale) and s.train.raw.dtype == np.dtype(expect_dtype)
    if dtype in (np.float64, np.int64):
        assert any("stored as" in n for n in s.notes)


def test_float_pixels_outside_range_need_value_range(tmp_path):
    """Regression: floats in 0..255 used to get scale 1 silently; now the range must be stated."""
    x = (np.random.default_rng(0).random((60, 4, 4)) * 255).astype(np.float32)
    path = _npz(tmp_path, x)
    with pytest.raises(DataError, match="outside the value range") as err:
        load_splits(DataConfig(dataset="npz", path=path, calib_size=6), seed=0)
    assert "data.value_range" in str(err.value) and "\n" not in str(err.value)
    s = load_splits(DataConfig(dataset="npz", path=path, calib_size=6, value_range=(0, 255)), seed=0)
    assert s.preprocess.value_range == (0.0, 255.0) and s.preprocess.input_dtype == "float32"
    assert s.preprocess.scale == pytest.approx(1 / 255)


def test_test_array_of_another_dtype_is_refused(tmp_path):
    x = np.zeros((30, 4, 4), np.uint8)
    path = _npz(tmp_path, x, x_test=np.zeros((6, 4, 4), np.float32), y_test=np.arange(6) % 3)
    with pytest.raises(DataError, match="same dtype"):
        load_splits(DataConfig(dataset="npz", path=path, calib_size=3), seed=0)


def test_color_mode_converts_arrays_and_counts(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (60, 4, 4), dtype=np.uint8)
    s = load_splits(DataConfig(dataset="npz", path=_npz(tmp_path, x), calib_size=6, color_mode="RGB"), seed=0)
    assert s.input_shape == (3, 4, 4) and s.preprocess.color_mode == "RGB" and s.conversions == {"L->RGB": 60}
    assert np.array_equal(s.train.raw[:, 0], s.train.raw[:, 2]) and s.notes


def test_preprocess_contract_fields():
    pre = Preprocess(mean=[0.1, 0.2, 0.3], std=[1, 1, 1], size=(4, 4), channels=3)
    assert (pre.input_dtype, pre.value_range, pre.color_mode) == ("uint8", (0.0, 255.0), "RGB")
    old = Preprocess(mean=[0.3], std=[0.4], size=(8, 8), channels=1, scale=1 / 16)  # a manifest from before
    assert old.value_range == (0.0, 16.0) and old.input_dtype == "uint8"
    assert Preprocess(mean=[0], std=[1], size=(2, 2), channels=1, value_range=(0, 1), input_dtype="float32").scale == 1
    back = Preprocess.model_validate_json(pre.model_dump_json())
    assert back == pre
    with pytest.raises(ValidationError, match="1 / value_range"):
        Preprocess(mean=[0], std=[1], size=(2, 2), channels=1, value_range=(0, 255), scale=1 / 16)
    with pytest.raises(ValidationError, match="does not fit uint8"):
        Preprocess(mean=[0], std=[1], size=(2, 2), channels=1, value_range=(0, 65535))
    with pytest.raises(ValidationError, match="color_mode"):
        Preprocess(mean=[0], std=[1], size=(2, 2), channels=1, color_mode="RGB")


def _folder(root, classes=("cat", "dog", "eel"), per_class=4, modes=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mode = (modes or {}).get(name, "L")
            shape = (5, 6) if mode == "L" else (5, 6, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / name / f"{k}_{i}.png")


def test_folder_class_order_from_config(tmp_path):
    """Regression (issue 14 item 4): folder classes were always sorted by name, whatever the teacher's order."""
    _folder(tmp_path / "imgs")
    order = ["eel", "cat", "dog"]
    s = load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1, classes=order), seed=0)
    assert s.labels == order
    from PIL import Image

    # every image's label is its folder's position in data.classes
    by_pixels = {}
    for k, name in enumerate(order):
        for f in (tmp_path / "imgs" / name).iterdir():
            by_pixels[np.asarray(Image.open(f)).tobytes()] = k
    for split in (s.train, s.val, s.test):
        for raw, y in zip(split.raw, split.y, strict=True):
            assert by_pixels[raw[0].tobytes()] == y


@pytest.mark.parametrize(
    "classes, word", [(["cat", "dog"], "'eel' not in data.classes"), (["cat", "dog", "eel", "fox"], "no folder")]
)
def test_folder_class_list_must_match(tmp_path, classes, word):
    _folder(tmp_path / "imgs")
    with pytest.raises(DataError, match=word) as err:
        load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1, classes=classes), seed=0)
    assert "\n" not in str(err.value) and "found: cat, dog, eel" in str(err.value)


def test_classes_config_validation():
    with pytest.raises(ValidationError, match="more than once"):
        DataConfig(dataset="folder", path="x", classes=["a", "b", "a"])
    with pytest.raises(ValidationError, match="for dataset 'folder'"):
        DataConfig(dataset="digits", classes=["a", "b"])
    with pytest.raises(ValidationError, match="value_range"):
        DataConfig(dataset="digits", value_range=(1, 0))


def test_folder_mixed_modes_converted_and_counted(tmp_path):
    """Regression: a folder mixing gray and colour images used to stop the run; now converted, with a count."""
    _folder(tmp_path / "imgs", modes={"dog": "RGB"})
    s = load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1), seed=0)
    assert s.input_shape == (3, 5, 6) and s.conversions == {"L->RGB": 8} and "8 of 12 images" in s.notes[0]
    assert s.train.raw.dtype == np.uint8 and s.preprocess.color_mode == "RGB"
    g = load_splits(DataConfig(dataset="folder", path=tmp_path / "imgs", calib_size=1, color_mode="L"), seed=0)
    assert g.input_shape == (1, 5, 6) and g.conversions == {"RGB->L": 4}


def test_folder_16bit_gray_is_uint16(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b")):
        (tmp_path / "w" / name).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 65536, (4, 4), dtype=np.uint16)
            Image.fromarray(arr).save(tmp_path / "w" / name / f"{k}_{i}.png")
    s = load_splits(DataConfig(dataset="folder", path=tmp_path / "w", calib_size=1), seed=0)
    assert s.train.raw.dtype == np.uint16 and s.preprocess.value_range == (0.0, 65535.0)
    assert s.preprocess.input_dtype == "uint16" and int(s.train.raw.max()) > 255  # not clipped to 8 bits


def test_data_free_contract_from_config():
    s = load_splits(DataConfig(dataset="none", input_shape=(3, 8, 8), num_classes=4), seed=0)
    assert (s.preprocess.input_dtype, s.preprocess.value_range, s.preprocess.color_mode) == ("uint8", (0, 255), "RGB")
    f = load_splits(DataConfig(dataset="none", input_shape=(1, 8, 8), num_classes=4, value_range=(0, 1)), seed=0)
    assert f.preprocess.input_dtype == "float32" and f.preprocess.scale == 1.0
    with pytest.raises(ValidationError, match="does not fit input_shape"):
        DataConfig(dataset="none", input_shape=(1, 8, 8), num_classes=4, color_mode="RGB")
