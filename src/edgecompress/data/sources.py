"""Dataset sources: each returns raw images as ``[N, C, H, W]`` (uint8 or float) plus int64 labels, validated.

Images are kept in the dtype of the raw-input contract (uint8 for 8-bit data, uint16, float32) that an app will feed;
normalization with mean/std happens per batch (:class:`edgecompress.data.arrays.NormalizedImages`). Image folders are
read by :mod:`edgecompress.data.folder`.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.arrays import chunk_rows, iter_chunks
from edgecompress.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RawData:
    """Images before splitting: ``x`` is ``[N, C, H, W]`` in the input contract's dtype; ``x_test``: official test.

    ``input_dtype`` and ``value_range`` are the raw-input contract (what an app feeds); ``scale`` follows from it.
    ``notes`` say what was converted on the way in (one line each, for the report); ``conversions`` count them.
    """

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    input_dtype: str = "uint8"
    value_range: tuple[float, float] = (0.0, 255.0)
    notes: list[str] = field(default_factory=list)
    conversions: dict[str, int] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        """``1 / value_range[1]``: raw * scale is what mean/std describe."""
        return 1.0 / self.value_range[1]


def load_digits_raw() -> RawData:
    """scikit-learn's 8x8 digits (1,797 images, classes "0".."9") as 8-bit images.

    The source pixels are 17 gray levels 0..16; they are mapped to uint8 0..255 (``round(x * 255 / 16)``), the range
    an app's 8-bit PNG has, so the bundle's contract is the ordinary (0, 255) one.
    """
    from edgecompress._lazy import require

    datasets = require("sklearn.datasets", "the digits dataset")
    bunch = datasets.load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return RawData(x=x, y=bunch.target.astype(np.int64), labels=[str(k) for k in range(10)])


def to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """Accept ``[N,H,W]``, ``[N,H,W,C]`` (C in 1/3, checked first) or ``[N,C,H,W]`` (C in 1/3); return an NCHW view."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3):
            return x.transpose(0, 3, 1, 2)  # a view: the rows stay where they are, batches are read NCHW
        if x.shape[1] in (1, 3):
            return x
        raise DataError(
            f"{what} has shape {x.shape}: cannot tell the channel axis (expected 1 or 3 channels, last or second)",
            "store images as N,H,W (gray), N,H,W,C or N,C,H,W with C = 1 or 3",
        )
    raise DataError(
        f"{what} has rank {x.ndim} (shape {x.shape}); images need rank 3 or 4", "store images as N,H,W or N,H,W,C"
    )


def check_arrays(
    x: np.ndarray, y: np.ndarray, what: str, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one image/label pair; return ``(x NCHW, y int64)``. Every failure is a one-line DataError."""
    if x.size == 0 or len(x) == 0:
        raise DataError(f"{what}: the dataset is empty", "provide at least a few images per class")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{what}: images have dtype {x.dtype}, expected uint8 or float", "store pixels as numbers")
    x = to_nchw(x, what)
    if np.issubdtype(x.dtype, np.floating) and not all(np.isfinite(c).all() for c in iter_chunks(x)):
        raise DataError(f"{what}: images contain NaN or Inf pixels", "clean or drop those images")
    if y.ndim != 1:
        raise DataError(
            f"{what}: labels have shape {y.shape}, expected one integer per image", "store labels as [N] ints"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels have dtype {y.dtype}, expected integers", "store class indices as int64")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels", "give exactly one label per image")
    y = y.astype(np.int64)
    hi = num_classes if num_classes is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= hi:
        raise DataError(
            f"{what}: labels out of range [{int(y.min())}, {int(y.max())}], expected 0..{hi - 1}",
            "use class indices 0..K-1 (and K label names)",
        )
    return x, y


def check_label_names(names: Any, what: str) -> list[str]:
    """Class names as a list of distinct, non-empty strings (an array of str, or a list); refuses numbers, repeats.

    Raises:
        DataError: a name that is not a string, an empty name, or a name given twice (two outputs would print alike).
    """
    arr = np.asarray(names) if not isinstance(names, list) else None
    if arr is not None and (arr.ndim != 1 or arr.dtype.kind != "U"):
        raise DataError(
            f"{what} is a {arr.dtype} array of shape {list(arr.shape)}, not a list of class names",
            "store the class names as a 1-D string array, e.g. labels=np.array(['cat', 'dog'])",
        )
    items = arr.tolist() if arr is not None else list(names)
    bad = next((v for v in items if not isinstance(v, str) or not v.strip()), None)
    if bad is not None or any(not isinstance(v, str) for v in items):
        raise DataError(f"{what} holds {bad!r}, not a class name", "give every class a non-empty string name")
    seen: set[str] = set()
    for v in items:
        if v in seen:
            raise DataError(f"{what} names the class {v!r} twice", "give every class a distinct name")
        seen.add(v)
    return items


def check_classes(y: np.ndarray, labels: list[str], what: str) -> None:
    """At least two classes, and every class with >= 2 samples (so stratified splits keep one in train)."""
    counts = np.bincount(y, minlength=len(labels))
    if (counts > 0).sum() < 2:
        raise DataError(f"{what}: only one class ({labels[int(y[0])]!r}) is present", "a classifier needs >= 2 classes")
    few = [k for k, c in enumerate(counts) if c < 2]
    if few:
        k = few[0]
        raise DataError(
            f"{what}: class {labels[k]!r} has {counts[k]} sample(s); stratified splitting needs at least 2 per class",
            "add samples of that class or drop it from the labels",
        )


def input_contract(
    x: np.ndarray, what: str, value_range: tuple[float, float] | None = None
) -> tuple[np.ndarray, str, tuple[float, float], list[str]]:
    """Put images in the raw-input contract by their dtype, never by guessing from their values.

    uint8 -> (0, 255); uint16 -> (0, 65535); other integers that fit are cast to uint8 / uint16; floats -> float32
    in (0, 1). ``value_range`` (``data.value_range``) overrides the range, e.g. (0, 255) for float pixels in 0..255.
    Pixels outside the range are refused: a wrong range would give an app wrong answers at high confidence.

    Returns:
        ``(x, input_dtype, value_range, notes)``; ``x`` is the same array where no cast was needed.
    """
    notes: list[str] = []
    if np.issubdtype(x.dtype, np.integer) and x.dtype not in (np.uint8, np.uint16):
        int_lo, int_hi = int(x.min()), int(x.max())
        if int_lo < 0 or int_hi > 65535:
            raise DataError(
                f"{what}: integer pixels span [{int_lo}, {int_hi}], outside 0..65535",
                "store 8-bit images as uint8, 16-bit as uint16, other data as float32 with data.value_range",
            )
        target = np.uint8 if int_hi <= 255 else np.uint16
        notes.append(f"{what}: {x.dtype} pixels stored as {np.dtype(target).name} (values {int_lo}..{int_hi})")
        x = x.astype(target)
    elif np.issubdtype(x.dtype, np.floating) and x.dtype != np.float32:
        notes.append(f"{what}: {x.dtype} pixels stored as float32")
        x = x.astype(np.float32)
    dtype = np.dtype(x.dtype).name
    default = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0)}.get(dtype, (0.0, 1.0))
    vr = (float(value_range[0]), float(value_range[1])) if value_range is not None else default
    bound = {"uint8": 255.0, "uint16": 65535.0}.get(dtype)
    if bound is not None and (vr[0] < 0 or vr[1] > bound):
        raise DataError(
            f"{what}: data.value_range {list(vr)} does not fit {dtype} pixels", f"use a range within 0..{bound:g}"
        )
    if value_range is None and bound is not None:
        return x, dtype, vr, notes  # the dtype's own full range: every value fits, no pass over the pixels
    lo, hi = float(x.min()), float(x.max())
    tol = 1e-3 * (vr[1] - vr[0])
    if lo < vr[0] - tol or hi > vr[1] + tol:
        raise DataError(
            f"{what}: {dtype} pixels span [{lo:.4g}, {hi:.4g}], outside the value range {list(vr)}",
            "set data.value_range: [low, high] to the range the pixels use (e.g. [0, 255]), or rescale them",
        )
    return x, dtype, vr, notes


def to_color_mode(x: np.ndarray, mode: str | None, what: str) -> tuple[np.ndarray, dict[str, int]]:
    """Convert ``[N, C, H, W]`` images to ``mode`` (L: 1 channel, RGB: 3); return them and ``{"L->RGB": n}``.

    Gray to RGB repeats the channel; RGB to L uses ITU-R 601-2 luma, ``L = 0.299 R + 0.587 G + 0.114 B`` (as
    Pillow's ``convert("L")``), rounded for integer pixels. Converted chunk by chunk into the new array.
    """
    channels = {"L": 1, "RGB": 3}
    if mode is None or x.shape[1] == channels[mode]:
        return x, {}
    if x.shape[1] not in channels.values():
        raise DataError(f"{what}: {x.shape[1]}-channel images cannot be converted to {mode}", "give 1 or 3 channels")
    src = "L" if x.shape[1] == 1 else "RGB"
    out = np.empty((len(x), channels[mode], *x.shape[2:]), dtype=x.dtype)
    weights = np.array([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
    step = chunk_rows(x)
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        if mode == "RGB":
            out[i : i + step] = chunk
        else:
            luma = (chunk.astype(np.float64) * weights).sum(axis=1, keepdims=True)
            out[i : i + step] = np.rint(luma) if np.issubdtype(x.dtype, np.integer) else luma
    return out, {f"{src}->{mode}": len(x)}


def load_npz_raw(path: Path, value_range: tuple[float, float] | None = None) -> RawData:
    """``.npz`` with ``x_train``/``y_train``, optional ``x_test``/``y_test`` and ``labels``.

    Images: ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``; uint8 (range 0..255), uint16 (0..65535) or float in [0, 1]
    (or in ``value_range``), kept in that dtype (see :func:`input_contract`).
    """
    return _npz(path, ("x_train", "y_train"), value_range)


def load_npz_eval(path: Path, value_range: tuple[float, float] | None = None) -> RawData:
    """A small labelled ``.npz`` for data-free runs: ``x_val``/``y_val`` (or ``x``/``y``), optional test arrays."""
    with _open_npz(path) as z:
        keys = ("x_val", "y_val") if "x_val" in z.files else ("x", "y")
    return _npz(path, keys, value_range)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}", "set data.path to an existing .npz file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})", "write it with numpy.savez") from None


def _npz(path: Path, keys: tuple[str, str], value_range: tuple[float, float] | None) -> RawData:
    with _open_npz(path) as z:
        if keys[0] not in z.files or keys[1] not in z.files:
            raise DataError(
                f"{path} lacks '{keys[0]}'/'{keys[1]}' (has {', '.join(z.files) or 'nothing'})",
                f"save the arrays with numpy.savez(path, {keys[0]}=..., {keys[1]}=...)",
            )
        wanted = [k for k in (*keys, "x_test", "y_test", "labels") if k in z.files]
        try:
            arrays = {k: z[k] for k in wanted}  # only what is used: each array is read once, in its own dtype
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: {exc}", "store labels as a plain string array, images as numbers") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # a truncated or damaged member
            raise DataError(f"{path} is damaged ({type(exc).__name__}: {exc})", "save it with numpy.savez") from None
    labels_arr = arrays.pop("labels", None)
    labels = check_label_names(labels_arr, f"{path.name}:labels") if labels_arr is not None else None
    num_classes = len(labels) if labels is not None else None
    what = f"{path.name}:{keys[0]}"
    x, y = check_arrays(arrays.pop(keys[0]), arrays.pop(keys[1]), what, num_classes)
    x, dtype, vr, notes = input_contract(x, what, value_range)
    x_test = y_test = None
    if "x_test" in arrays or "y_test" in arrays:
        if "x_test" not in arrays or "y_test" not in arrays:
            raise DataError(f"{path} has only one of x_test/y_test", "give both test arrays or neither")
        hi = num_classes if num_classes is not None else int(max(y.max(), arrays["y_test"].max(initial=0))) + 1
        x_test, y_test = check_arrays(arrays.pop("x_test"), arrays.pop("y_test"), f"{path.name}:x_test", hi)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: test images are {x_test.shape[1:]}, train images {x.shape[1:]}", "use one size")
        x_test, test_dtype, _, test_notes = input_contract(x_test, f"{path.name}:x_test", vr)
        if test_dtype != dtype:
            raise DataError(
                f"{path}: x_test is {test_dtype}, {keys[0]} is {dtype} (one input contract for both)",
                "store both image arrays in the same dtype and range",
            )
        notes += test_notes
    if labels is None:
        k = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
        labels = [str(i) for i in range(k)]
    return RawData(
        x=x, y=y, labels=labels, x_test=x_test, y_test=y_test, input_dtype=dtype, value_range=vr, notes=notes
    )
