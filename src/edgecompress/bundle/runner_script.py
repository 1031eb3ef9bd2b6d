#!/usr/bin/env python3
"""Run this bundle's model on images and print the top-k labels with calibrated probabilities.

Standalone: needs only numpy, Pillow and the model's runtime (see requirements.txt), not edgecompress.

    pip install -r requirements.txt
    python -I run.py cat.jpg dog.png --top-k 3

``-I`` (isolated mode) keeps this folder and the environment off the import path; without it this script removes its
own folder from ``sys.path`` before importing anything, so a file dropped beside it (``numpy.py``,
``onnxruntime.py``) is never imported. It also checks every file of the bundle against ``SHA256SUMS`` first and refuses
unlisted files and links (the same check as ``edgecompress verify``).

The steps an app must repeat are all here: read manifest.json; bring the raw image to the input contract
(``preprocessing.value_range``: an 8-bit image maps v / 255 onto it, a 16-bit one v / 65535; a .npy float array is taken
as already in its units); resize to ``preprocessing.size``; ``(raw * scale - mean) / std`` per channel; lay out as NCHW
float32; run; softmax (dividing the logits by the temperature first unless it is folded into the model).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# Before any other import: never import a module from the bundle folder (or from the current folder when that is it).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import stat  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(_HERE)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def check_bundle(bundle: Path) -> None:
    """Exit unless every file of the bundle is a regular file listed in SHA256SUMS with its sha256."""
    sums = {}
    for line in (bundle / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        sums[rel] = digest
    for folder, dirs, files in os.walk(bundle):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(bundle).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                sys.exit(f"error: bundle entry {rel} is a link or special file — fix: use the original bundle")
            if stat.S_ISREG(mode) and rel not in ("SHA256SUMS", "SHA256SUMS.sig"):
                if rel not in sums:
                    sys.exit(f"error: bundle file {rel} is not listed in SHA256SUMS — fix: use the original bundle")
                if hashlib.sha256(path.read_bytes()).hexdigest() != sums.pop(rel):
                    sys.exit(f"error: bundle file {rel} does not match SHA256SUMS — fix: use the original bundle")
    if sums:
        sys.exit(f"error: bundle file {sorted(sums)[0]} is missing — fix: use the original bundle")


def load_manifest(bundle: Path) -> dict:
    """Read manifest.json of the bundle folder."""
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def resize(x, size):
    """Bilinear resize of a float HxWxC array to size = (H, W), channel by channel (Pillow mode F)."""
    import numpy as np
    from PIL import Image

    if tuple(x.shape[:2]) == tuple(size):
        return x
    planes = [Image.fromarray(np.ascontiguousarray(x[:, :, c]), "F").resize(size[::-1], Image.BILINEAR) for c in
              range(x.shape[2])]  # fmt: skip
    return np.stack([np.asarray(p, np.float32) for p in planes], axis=2)


def read_raw(path: Path, pre: dict):
    """One image (8- or 16-bit) or .npy array as float32 HxWxC in the contract's value_range, at the model's size."""
    import numpy as np
    from PIL import Image

    lo, hi = pre.get("value_range", [0.0, 255.0])
    channels = pre["channels"]
    if not stat.S_ISREG(os.stat(path).st_mode):
        sys.exit(f"error: {path} is not a regular file — fix: give an image file")
    if path.suffix.lower() == ".npy":
        x = np.load(path, allow_pickle=False)
        x = x[:, :, None] if x.ndim == 2 else x
        if x.dtype in (np.uint8, np.uint16):
            x = lo + x.astype(np.float32) * ((hi - lo) / (255.0 if x.dtype == np.uint8 else 65535.0))
        elif (
            not np.issubdtype(x.dtype, np.floating)
            or x.min() < lo - 1e-3 * (hi - lo)
            or x.max() > hi + 1e-3 * (hi - lo)
        ):
            sys.exit(f"error: {path} is not uint8/uint16 or floats in [{lo:g}, {hi:g}] — fix: scale it to that range")
        x = x.astype(np.float32)
    else:
        with Image.open(path) as img:
            if img.mode in SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG"):
                x = lo + np.asarray(img).astype(np.float32)[:, :, None] * ((hi - lo) / 65535.0)
            elif img.mode in ("I", "F") or img.mode.startswith("I;"):
                sys.exit(f"error: {path} has {img.mode} samples of unknown range — fix: save it as 8- or 16-bit PNG")
            else:
                mode = pre.get("color_mode") or ("L" if channels == 1 else "RGB")
                resized = img.convert(mode).resize((pre["size"][1], pre["size"][0]), Image.Resampling.BILINEAR)
                x = np.asarray(resized, dtype=np.uint8).astype(np.float32)
                x = lo + (x[:, :, None] if x.ndim == 2 else x) * ((hi - lo) / 255.0)
    x = x[:, :, :3] if x.shape[2] >= 3 else x[:, :, :1]
    if x.shape[2] != channels:
        x = np.repeat(x, channels, axis=2) if x.shape[2] == 1 else x.mean(axis=2, keepdims=True)
    return resize(x.astype(np.float32), pre["size"])


def preprocess(path: Path, pre: dict):
    """Load one input and return a float32 array [C, H, W] (or [H, W, C] for NHWC models)."""
    import numpy as np

    x = read_raw(path, pre)
    x = (x * pre["scale"] - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1) if pre.get("layout", "NCHW") == "NCHW" else x


class OnnxRuntimeModel:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x):
        return self.session.run(None, {self.input: x})[0]


class OpenVinoModel:
    def __init__(self, path: Path) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(path), "CPU")

    def __call__(self, x):
        return self.compiled(x)[self.compiled.output(0)]


def open_model(bundle: Path, model: dict):
    """Open the model with its runtime; other runtimes go through edgecompress's agent when it is installed."""
    path = bundle / model["file"]
    if model["runtime"] == "onnxruntime":
        return OnnxRuntimeModel(path)
    if model["runtime"] == "openvino":
        return OpenVinoModel(path)
    try:
        from edgecompress.devices.agent import get_runtime
    except ImportError:
        sys.exit(f"runtime {model['runtime']!r} needs edgecompress on this machine: pip install edgecompress")
    runtime = get_runtime(model["runtime"])
    runtime.load(path)
    return runtime.run


def softmax(z):
    import numpy as np

    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads) or .npy arrays")
    parser.add_argument("--top-k", type=int, default=5, help="how many labels to print per image")
    parser.add_argument("--bundle", type=Path, default=HERE, help="bundle folder (default: this script's folder)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")

    check_bundle(args.bundle)
    import numpy as np

    manifest = load_manifest(args.bundle)
    model, pre, labels = manifest["model"], manifest["preprocessing"], manifest["labels"]
    run = open_model(args.bundle, model)
    batch = model["input"]["shape"][0]
    temperature = manifest.get("temperature", {})
    for path in args.images:
        x = preprocess(path, pre)[None].astype(np.float32)
        if isinstance(batch, int) and batch > 1:  # a model built for a fixed batch: pad with copies
            x = np.repeat(x, batch, axis=0)
        out = np.asarray(run(x), dtype=np.float32)[:1]
        if model["output"]["kind"] == "logits":
            if not temperature.get("folded", True) and temperature.get("value"):
                out = out / float(temperature["value"])
            out = softmax(out)
        top = np.argsort(-out[0])[: args.top_k]
        print(path)
        for i in top:
            print(f"  {labels[i]:<24} {100.0 * out[0, i]:6.2f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
