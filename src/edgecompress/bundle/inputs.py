"""Bring raw inputs to a bundle's input contract: image files by their real bit depth, ``.npy`` and in-memory arrays.

The contract (``manifest.preprocessing``) says which raw values the model was trained on: ``value_range`` (e.g.
[0, 255] for 8-bit images, [0, 16] for scikit-learn's digits) in ``color_mode``. An 8-bit image maps ``v / 255`` onto
that range, a 16-bit image ``v / 65535`` (never clipped to 255), a float array is taken as already in the range's units
and refused when it lies outside it. Anything of unknown range (32-bit integer or float images) is refused in one line.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np

from edgecompress._lazy import require
from edgecompress.bundle.manifest import Preprocessing
from edgecompress.errors import DataError

MAX_IMAGE_PIXELS = 64 << 20  # width x height of one input image or array
MAX_ARRAY_BYTES = 256 << 20  # one .npy input, checked from its header before any data is read
_ARRAY_KINDS = "buf"  # bool, unsigned and float samples; anything else has no known range
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.bool_): 1.0}


def check_regular(path: Path) -> None:
    """Refuse, before opening it, a path that is missing or not a regular file (a FIFO would block forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror})", "give the path of an existing image file") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path} is not a regular file", "give an image file (PNG, JPEG, ...) or a .npy array")


def to_contract(a: np.ndarray, pre: Preprocessing, *, source: str = "input") -> np.ndarray:
    """Raw values ``a`` (uint8, uint16, bool or float) as float32 in the contract's ``value_range``.

    Raises:
        DataError: an integer type of unknown bit depth, non-finite values, or floats outside ``value_range``.
    """
    lo, hi = pre.value_range
    a = np.asarray(a)
    full = _FULL_SCALE.get(a.dtype)
    if full is not None:
        return (np.float32(lo) + a.astype(np.float32) * np.float32((hi - lo) / full)).astype(np.float32)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(
            f"{source} holds {a.dtype} values, whose range is unknown",
            f"give uint8 or uint16 images, or floats in the bundle's value_range [{lo:g}, {hi:g}]",
        )
    a = a.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise DataError(f"{source} holds NaN or infinite values", "give finite values")
    tol = 1e-3 * (hi - lo)
    if a.size and (a.min() < lo - tol or a.max() > hi + tol):
        raise DataError(
            f"{source} holds values in [{a.min():g}, {a.max():g}], the bundle's input contract is [{lo:g}, {hi:g}]",
            f"scale the array to [{lo:g}, {hi:g}] (preprocessing.value_range in manifest.json), or pass uint8/uint16",
        )
    return a


def _match_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """``HxWxC`` with the model's channel count: gray repeated to RGB, RGB averaged to gray, alpha dropped."""
    a = a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]
    if a.shape[2] == channels:
        return a
    return np.repeat(a, channels, axis=2) if a.shape[2] == 1 else a.mean(axis=2, keepdims=True, dtype=np.float32)


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``HxWxC`` array channel by channel (Pillow mode F keeps full precision)."""
    if tuple(a.shape[:2]) == tuple(size):
        return a.astype(np.float32)
    image_mod = require("PIL.Image", "resizing inputs")
    planes = []
    for c in range(a.shape[2]):
        plane = image_mod.fromarray(np.ascontiguousarray(a[:, :, c], dtype=np.float32), "F")
        planes.append(np.asarray(plane.resize((size[1], size[0]), image_mod.BILINEAR)))
    return np.stack(planes, axis=2)


def load_array(path: Path, pre: Preprocessing) -> np.ndarray:
    """A ``.npy`` file (``HxW`` or ``HxWxC``; never pickled objects) in contract units, resized to the model's size."""
    check_regular(path)
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, until the checks below pass
        if not isinstance(a, np.ndarray):
            raise DataError(f"{path} is not a single array", "save one image per .npy with numpy.save")
        shape = a.shape
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3, 4)) or 0 in shape:
            raise DataError(f"{path} has shape {list(shape)}", "save one image per .npy, HxW or HxWxC (C = 1, 3 or 4)")
        if shape[0] * shape[1] > MAX_IMAGE_PIXELS:
            raise DataError(f"{path} is {shape[0]}x{shape[1]}, more than {MAX_IMAGE_PIXELS} pixels", "downscale it")
        if a.dtype.kind not in _ARRAY_KINDS or a.dtype.fields is not None:
            lo, hi = pre.value_range
            raise DataError(
                f"{path} holds {a.dtype} values, whose range is unknown",
                f"give uint8 or uint16 images, or floats in the bundle's value_range [{lo:g}, {hi:g}]",
            )
        if a.nbytes > MAX_ARRAY_BYTES:  # e.g. a sparse file whose header claims gigabytes of float64
            raise DataError(
                f"{path} holds {a.nbytes} bytes of {a.dtype}, more than an input image needs (limit {MAX_ARRAY_BYTES})",
                "save it as uint8/uint16, or downscale it",
            )
        a = np.array(a)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read array {path} ({exc})", "save it with numpy.save(path, array)") from None
    a = a[:, :, None] if a.ndim == 2 else a
    a = _match_channels(to_contract(a, pre, source=str(path)), pre.channels)
    return _resize_float(a, pre.size)


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    """An image file as float32 ``HxWxC`` in contract units, in the model's colour mode and size.

    8-bit images (any Pillow mode of 8-bit samples) map ``v / 255`` onto ``value_range``; 16-bit grayscale
    (``I;16``, 16-bit PNG) ``v / 65535``. Raises :class:`DataError` for files that are not images, images over
    :data:`MAX_IMAGE_PIXELS`, and modes of unknown range (32-bit integer, float).
    """
    check_regular(path)
    if path.suffix.lower() == ".npy":
        return load_array(path, pre)
    image_mod = require("PIL.Image", "reading images")
    fix = "give an image file Pillow can open"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_mod.DecompressionBombWarning)
            with image_mod.open(path) as opened:
                w, h = opened.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"image {path} is {w}x{h} pixels, more than the limit {MAX_IMAGE_PIXELS}",
                        "downscale the image first",
                    )
                # a phone photo is stored sideways with an EXIF orientation tag: turn it upright, as viewers do
                img = require("PIL.ImageOps", "reading images").exif_transpose(opened)
                if img.mode in _SIXTEEN_BIT or (img.mode == "I" and opened.format == "PNG"):
                    a = np.asarray(img).astype(np.float32)[:, :, None]
                    a = _resize_float(_match_channels(a, pre.channels), pre.size)
                    lo, hi = pre.value_range
                    return (np.float32(lo) + a * np.float32((hi - lo) / 65535.0)).astype(np.float32)
                if img.mode in ("I", "F") or img.mode.startswith("I;"):
                    raise DataError(
                        f"image {path} has mode {img.mode} (32-bit or float samples), whose range is unknown",
                        "save it as an 8- or 16-bit PNG, or as a .npy array in the bundle's value_range",
                    )
                img = img.convert(pre.color_mode or ("L" if pre.channels == 1 else "RGB"))
                img = img.resize((pre.size[1], pre.size[0]), image_mod.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (image_mod.DecompressionBombError, image_mod.DecompressionBombWarning):
        raise DataError(
            f"image {path} has more pixels than the limit {MAX_IMAGE_PIXELS} (decompression bomb?)",
            "downscale the image first",
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"cannot read image {path} ({exc})", fix) from None
    a = a[:, :, None] if a.ndim == 2 else a
    return _match_channels(to_contract(a, pre, source=str(path)), pre.channels)
