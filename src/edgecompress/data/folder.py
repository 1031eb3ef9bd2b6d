"""Image-folder datasets (``root/<class>/*.png|jpg|jpeg|bmp``) decoded by a thread pool into one preallocated array.

Two passes: headers first (mode and size of every file, cheap: Pillow reads no pixels), so that size mismatches and
the colour mode are known before any pixel is decoded; then each worker decodes, converts and resizes one image and
writes it straight into its row of an ``[N, H, W, C]`` uint8 (or uint16) array. Peak memory is that array plus one
image per worker. Pillow's decoders release the GIL, so threads decode in parallel.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.data.sources import RawData, check_arrays
from edgecompress.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit gray (PNG stores 16-bit gray as I;16 or I)


def default_workers() -> int:
    """Decoding threads: one per core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def class_folders(root: Path, classes: list[str] | None) -> list[str]:
    """The class sub-folders of ``root`` in label order: ``classes`` when given (checked), else sorted by name."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if not found:
            raise DataError(f"{root} has no class sub-folders (the dataset is empty)", "use root/<class>/<image>.png")
        return found
    unknown = [c for c in classes if c not in found]
    unlisted = [f for f in found if f not in classes]
    if unknown or unlisted:
        parts = ([f"no folder for {', '.join(map(repr, unknown))}"] if unknown else []) + (
            [f"folder(s) {', '.join(map(repr, unlisted))} not in data.classes"] if unlisted else []
        )
        raise DataError(
            f"data.classes does not match the sub-folders of {root}: {'; '.join(parts)}",
            f"list every class folder exactly once in the teacher's output order (found: {', '.join(found)})",
        )
    return list(classes)


def _files(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(
                f"class folder {root / name} has no images ({'/'.join(IMAGE_SUFFIXES)})", "add images or remove it"
            )
        files += [(p, k) for p in found]
    return files


def _header(image_mod: Any, path: Path) -> tuple[str, tuple[int, int]] | str:
    try:
        with image_mod.open(path) as im:
            return im.mode, (im.size[1], im.size[0])  # (H, W)
    except image_mod.DecompressionBombError as exc:
        return f"image {path} has more pixels than Pillow reads ({exc}; decompression bomb?)"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return f"cannot read image {path} ({exc})"


def load_folder_raw(
    root: Path,
    image_size: tuple[int, int] | None,
    *,
    classes: list[str] | None = None,
    color_mode: str | None = None,
    workers: int | None = None,
) -> RawData:
    """Images in ``root/<class>/*``, labels in ``classes`` order (default: folder names sorted), as one raw array.

    Args:
        root: the dataset folder, one sub-folder per class.
        image_size: (H, W) every image is resized to (bilinear); required when the sizes differ.
        classes: the class order (the teacher's output order); must name every sub-folder exactly once.
        color_mode: L or RGB; images of another mode are converted and counted. Default: RGB if any image is in
            colour (gray images are then repeated to 3 channels, lossless), else L.
        workers: decoding threads (default :func:`default_workers`).

    Returns:
        :class:`RawData` with ``x`` an NCHW view of an NHWC uint8 array (uint16 for 16-bit gray images),
        ``conversions`` such as ``{"L->RGB": 12}`` and one note per kind of conversion.
    """
    from edgecompress._lazy import require

    image_mod = require("PIL.Image", "image folder datasets")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}", "set data.path to a folder with one sub-folder per class")
    names = class_folders(root, classes)
    files = _files(root, names)
    n_workers = workers or default_workers()
    with ThreadPoolExecutor(n_workers) as pool:
        headers = list(pool.map(lambda f: _header(image_mod, f[0]), files))
    checked: list[tuple[str, tuple[int, int]]] = []
    for h in headers:
        if isinstance(h, str):
            raise DataError(h, "remove or re-save that file")
        checked.append(h)
    modes = [mode for mode, _ in checked]
    sizes: dict[tuple[int, int], Path] = {}
    for (path, _), (_, size) in zip(files, checked, strict=True):
        sizes.setdefault(size, path)
    if image_size is None and len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise DataError(f"images differ in size: {f1} is {s1}, {f2} is {s2}", "set data.image_size: [H, W]")
    height, width = image_size if image_size is not None else next(iter(sizes))
    wide = [m in WIDE_MODES for m in modes]
    if color_mode is None:
        color_mode = "L" if all(m in GRAY_MODES for m in modes) else "RGB"
    if any(wide) and (not all(wide) or color_mode != "L"):
        first = files[wide.index(True)][0]
        raise DataError(
            f"16-bit gray images (e.g. {first}) mixed with 8-bit or colour images, or read as {color_mode}",
            "convert all images to 8-bit (or all to 16-bit gray with data.color_mode: L)",
        )
    channels = 1 if color_mode == "L" else 3
    dtype = np.uint16 if any(wide) else np.uint8
    out = np.empty((len(files), height, width, channels), dtype=dtype)
    resample = image_mod.BILINEAR

    def decode(i: int) -> str | None:
        path = files[i][0]
        try:
            with image_mod.open(path) as im:
                if dtype == np.uint16:
                    im = im if im.mode == "I;16" else im.convert("I;16")
                elif im.mode != color_mode:
                    im = im.convert(color_mode)
                if im.size != (width, height):
                    im = im.resize((width, height), resample)
                out[i] = np.asarray(im, dtype=dtype).reshape(height, width, channels)
        except image_mod.DecompressionBombError as exc:
            return f"image {path} has more pixels than Pillow reads ({exc}; decompression bomb?)"
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            return f"cannot read image {path} ({exc})"
        return None

    with ThreadPoolExecutor(n_workers) as pool:
        for err in pool.map(decode, range(len(files))):
            if err is not None:
                raise DataError(err, "remove or re-save that file")
    conversions: dict[str, int] = {}
    for m in modes:
        if m != color_mode and not (dtype == np.uint16 and m in WIDE_MODES):
            conversions[f"{m}->{color_mode}"] = conversions.get(f"{m}->{color_mode}", 0) + 1
    notes = [
        f"{n} of {len(files)} images in {root.name} converted from mode {k.split('->')[0]} to {color_mode}"
        for k, n in sorted(conversions.items())
    ]
    y = np.array([k for _, k in files], dtype=np.int64)
    x, y = check_arrays(out, y, str(root), len(names))
    log.info("folder %s: %d images, %d classes, %s", root, len(x), len(names), x.shape[1:])
    vr = (0.0, 65535.0) if dtype == np.uint16 else (0.0, 255.0)
    return RawData(
        x=x,
        y=y,
        labels=names,
        input_dtype=np.dtype(dtype).name,
        value_range=vr,
        notes=notes,
        conversions=conversions,
    )
