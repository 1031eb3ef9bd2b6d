"""Dataset sources: each returns raw images as ``[N, C, H, W]`` (uint8 or float) plus int64 labels, validated.

Raw pixel values times :attr:`RawData.scale` lie in [0, 1]; normalization with mean/std happens in
:mod:`edgecompress.data.splits`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


@dataclass
class RawData:
    """Images before splitting: ``x`` is ``[N, C, H, W]``; ``x_test`` is the official test set or None."""

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    scale: float
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


def load_digits_raw() -> RawData:
    """scikit-learn's 8x8 digits (1,797 images, 16 gray levels 0..16, classes "0".."9"); scale 1/16."""
    from edgecompress._lazy import require

    datasets = require("sklearn.datasets", "the digits dataset")
    bunch = datasets.load_digits()
    x = bunch.images.astype(np.float32)[:, None]
    return RawData(x=x, y=bunch.target.astype(np.int64), labels=[str(k) for k in range(10)], scale=1.0 / 16.0)


def to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """Accept ``[N,H,W]``, ``[N,H,W,C]`` (C in 1/3, checked first) or ``[N,C,H,W]`` (C in 1/3); return NCHW."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3):
            return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
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
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
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


def _scale_for(x: np.ndarray) -> float:
    return 1.0 / 255.0 if np.issubdtype(x.dtype, np.integer) else 1.0


def load_npz_raw(path: Path) -> RawData:
    """``.npz`` with ``x_train``/``y_train``, optional ``x_test``/``y_test`` and ``labels``.

    Images: ``[N,H,W]``, ``[N,H,W,C]`` or ``[N,C,H,W]``; uint8 (scale 1/255) or float already in [0, 1] (scale 1).
    """
    return _npz(path, ("x_train", "y_train"))


def load_npz_eval(path: Path) -> RawData:
    """A small labelled ``.npz`` for data-free runs: ``x_val``/``y_val`` (or ``x``/``y``), optional test arrays."""
    with _open_npz(path) as z:
        keys = ("x_val", "y_val") if "x_val" in z.files else ("x", "y")
    return _npz(path, keys)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}", "set data.path to an existing .npz file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})", "write it with numpy.savez") from None


def _npz(path: Path, keys: tuple[str, str]) -> RawData:
    with _open_npz(path) as z:
        if keys[0] not in z.files or keys[1] not in z.files:
            raise DataError(
                f"{path} lacks '{keys[0]}'/'{keys[1]}' (has {', '.join(z.files) or 'nothing'})",
                f"save the arrays with numpy.savez(path, {keys[0]}=..., {keys[1]}=...)",
            )
        try:
            arrays = {k: z[k] for k in z.files}
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: {exc}", "store labels as a plain string array, images as numbers") from None
    labels_arr = arrays.get("labels")
    labels = [str(s) for s in labels_arr.tolist()] if labels_arr is not None else None
    num_classes = len(labels) if labels is not None else None
    x, y = check_arrays(arrays[keys[0]], arrays[keys[1]], f"{path.name}:{keys[0]}", num_classes)
    x_test = y_test = None
    if "x_test" in arrays or "y_test" in arrays:
        if "x_test" not in arrays or "y_test" not in arrays:
            raise DataError(f"{path} has only one of x_test/y_test", "give both test arrays or neither")
        hi = num_classes if num_classes is not None else int(max(y.max(), arrays["y_test"].max(initial=0))) + 1
        x_test, y_test = check_arrays(arrays["x_test"], arrays["y_test"], f"{path.name}:x_test", hi)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{path}: test images are {x_test.shape[1:]}, train images {x.shape[1:]}", "use one size")
    if labels is None:
        k = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
        labels = [str(i) for i in range(k)]
    if x_test is not None and x_test.dtype != x.dtype:
        x_test = x_test.astype(np.float32) * _scale_for(x_test) / _scale_for(x)
    return RawData(x=x, y=y, labels=labels, scale=_scale_for(x), x_test=x_test, y_test=y_test)


def load_folder_raw(root: Path, image_size: tuple[int, int] | None) -> RawData:
    """Images in ``root/<class>/*.png|jpg|jpeg|bmp``; classes sorted by name; resized to ``image_size`` (H, W)."""
    from edgecompress._lazy import require

    image_mod = require("PIL.Image", "image folder datasets")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}", "set data.path to a folder with one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders (the dataset is empty)", "use root/<class>/<image>.png")
    files: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(
                f"class folder {root / name} has no images ({'/'.join(IMAGE_SUFFIXES)})", "add images or remove it"
            )
        files += [(p, k) for p in found]
    images: list[np.ndarray] = []
    first_of: dict[tuple[int, ...], Path] = {}
    gray_file = color_file = None
    for path, _ in files:
        try:
            with image_mod.open(path) as im:
                gray = im.mode in _GRAY_MODES
                im = im.convert("L" if gray else "RGB")
                if image_size is not None:
                    im = im.resize((image_size[1], image_size[0]), image_mod.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {path} ({exc})", "remove or re-save that file") from None
        gray_file, color_file = (gray_file or path, color_file) if gray else (gray_file, color_file or path)
        if gray_file and color_file:
            raise DataError(
                f"mixed grayscale and color images: {gray_file} and {color_file}", "convert all images to one mode"
            )
        first_of.setdefault(arr.shape[:2], path)
        if len(first_of) > 1:
            (s1, f1), (s2, f2) = list(first_of.items())[:2]
            raise DataError(f"images differ in size: {f1} is {s1}, {f2} is {s2}", "set data.image_size: [H, W]")
        images.append(arr)
    x = np.stack(images)
    y = np.array([k for _, k in files], dtype=np.int64)
    x, y = check_arrays(x, y, str(root), len(classes))
    log.info("folder %s: %d images, %d classes, %s", root, len(x), len(classes), x.shape[1:])
    return RawData(x=x, y=y, labels=classes, scale=1.0 / 255.0)
