#!/usr/bin/env python3
"""Run this bundle's model on images and print the top-k labels with calibrated probabilities.

Standalone: needs only numpy, Pillow and the model's runtime (see requirements.txt), not edgecompress.

    pip install -r requirements.txt
    python -I run.py cat.jpg dog.png --top-k 3

``-I`` (isolated mode) keeps this folder and the environment off the import path; without it this script removes its
own folder from ``sys.path`` before importing anything, so a file dropped beside it (``numpy.py``,
``onnxruntime.py``) is never imported. It also checks every file of the bundle against ``SHA256SUMS`` first and refuses
unlisted files and links (the same check as ``edgecompress verify``). Bad input ends in one line on stderr,
``error: <problem> — fix: <fix>``, never a traceback; names and labels are printed with control characters escaped.

The steps an app must repeat are all here: read manifest.json; bring the raw image to the input contract
(``preprocessing.value_range``: an 8-bit image maps v / 255 onto it, a 16-bit one v / 65535; a .npy float array is taken
as already in its units); turn it upright (EXIF orientation); resize to ``preprocessing.size``;
``(raw * scale - mean) / std`` per channel; lay out as NCHW float32; run; softmax (dividing the logits by the
temperature first unless it is folded into the model).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# Before any other import: never import a module from the bundle folder (or from the current folder when that is it).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(_HERE)
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
MAX_IMAGE_PIXELS = 64 << 20  # width x height of one input (as edgecompress predict)
MAX_ARRAY_BYTES = 256 << 20  # one .npy input, checked from its header before its data is read
MAX_META_BYTES = 4 << 20  # manifest.json, SHA256SUMS
FIX = "use the original bundle"
# a copy of edgecompress._text.printable (this script imports nothing of edgecompress; a test keeps them equal)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class Refused(Exception):
    """Bad input: printed as one line, ``error: <problem> — fix: <fix>``."""

    def __init__(self, problem, fix):
        super().__init__(f"{problem} — fix: {fix}")


def printable(text):
    """``str(text)`` with control and invisible formatting characters escaped (``\\xNN`` / ``\\uNNNN``)."""

    def escape(match):
        char = match.group()
        code = ord(char)
        return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return _UNSAFE.sub(escape, str(text))


def regular_file(path, what, follow=False):
    """Refuse, before opening it, a path that is missing or not a regular file (a FIFO would block forever); a link
    only when ``follow`` (the user's own input files, never a bundle's)."""
    try:
        mode = (os.stat if follow else os.lstat)(path).st_mode
    except OSError as exc:
        raise Refused(f"cannot read {what} {path} ({exc.strerror})", "give the path of an existing file") from None
    if not stat.S_ISREG(mode):
        raise Refused(f"{what} {path} is not a regular file", "give a regular file (no link, folder or pipe)")
    return Path(path)


def read_small(path, what):
    path = regular_file(path, what)
    if path.stat().st_size > MAX_META_BYTES:
        raise Refused(f"{path} is larger than a bundle's {what} is", FIX)
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Refused(f"cannot read {path} ({exc})", FIX) from None


def plain_relative(rel, what):
    """A bundle-relative path: no absolute path, no '..', '.' or empty component, no backslash or NUL."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
        raise Refused(f"{what} names the path {rel!r}, which is not a plain path inside the bundle", FIX)
    return rel


def check_bundle(bundle):
    """Exit unless every file of the bundle is a regular file listed in SHA256SUMS with its sha256."""
    sums = {}
    for n, line in enumerate(read_small(bundle / "SHA256SUMS", "SHA256SUMS").splitlines(), 1):
        digest, _, rel = line.partition("  ")
        if len(digest) != 64 or not rel:
            raise Refused(f"SHA256SUMS line {n} is not '<sha256>  <path>'", FIX)
        sums[plain_relative(rel, "SHA256SUMS")] = digest
    for folder, dirs, files in os.walk(bundle):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(bundle).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise Refused(f"bundle entry {rel} is a link or special file", FIX)
            if stat.S_ISREG(mode) and rel not in ("SHA256SUMS", "SHA256SUMS.sig"):
                if rel not in sums:
                    raise Refused(f"bundle file {rel} is not listed in SHA256SUMS", FIX)
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        digest.update(block)
                if digest.hexdigest() != sums.pop(rel):
                    raise Refused(f"bundle file {rel} does not match SHA256SUMS", FIX)
    if sums:
        raise Refused(f"bundle file {sorted(sums)[0]} is missing", FIX)


def load_manifest(bundle):
    """Read manifest.json of the bundle folder and check the fields this script uses."""
    try:
        manifest = json.loads(read_small(bundle / "manifest.json", "manifest.json"))
        model, pre, labels = manifest["model"], manifest["preprocessing"], manifest["labels"]
        plain_relative(model["file"], "manifest.json model.file")
        size = [int(v) for v in pre["size"]]
        ok = len(size) == 2 and all(1 <= v <= 8192 for v in size) and int(pre["channels"]) in (1, 3)
        ok = ok and len(pre["mean"]) == len(pre["std"]) == int(pre["channels"]) and float(pre["scale"]) > 0
        ok = ok and isinstance(model["runtime"], str)
    except Refused:
        raise
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise Refused(f"manifest.json is malformed ({type(exc).__name__}: {printable(exc)[:120]})", FIX) from None
    if not ok:
        raise Refused("manifest.json has an impossible preprocessing section", FIX)
    if not isinstance(labels, list) or not labels or any(not isinstance(v, str) or not v.strip() for v in labels):
        raise Refused("manifest.json labels is not a list of class names", FIX)
    if len(set(labels)) != len(labels):
        raise Refused("manifest.json names a label twice", FIX)
    return manifest


def resize(x, size):
    """Bilinear resize of a float HxWxC array to size = (H, W), channel by channel (Pillow mode F)."""
    import numpy as np
    from PIL import Image

    if tuple(x.shape[:2]) == tuple(size):
        return x
    planes = [Image.fromarray(np.ascontiguousarray(x[:, :, c]), "F").resize(size[::-1], Image.BILINEAR) for c in
              range(x.shape[2])]  # fmt: skip
    return np.stack([np.asarray(p, np.float32) for p in planes], axis=2)


def read_array(path, lo, hi):
    """A .npy file (HxW or HxWxC, never pickled objects), bounded by its header before its data is read."""
    import numpy as np

    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise Refused(f"cannot read array {path} ({printable(exc)[:120]})", "save it with numpy.save") from None
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)) or 0 in x.shape:
        raise Refused(f"{path} has shape {list(x.shape)}", "save one image per .npy, HxW or HxWxC (C = 1, 3 or 4)")
    if x.shape[0] * x.shape[1] > MAX_IMAGE_PIXELS or x.nbytes > MAX_ARRAY_BYTES:
        raise Refused(f"{path} is {x.shape[0]}x{x.shape[1]} {x.dtype}, more than an input image", "downscale it")
    if x.dtype.kind not in "buf" or x.dtype.fields is not None:
        raise Refused(f"{path} holds {x.dtype} values, whose range is unknown", "save uint8/uint16 or floats")
    x = np.array(x)
    x = x[:, :, None] if x.ndim == 2 else x
    if x.dtype in (np.uint8, np.uint16):
        return lo + x.astype(np.float32) * ((hi - lo) / (255.0 if x.dtype == np.uint8 else 65535.0))
    x = x.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < lo - 1e-3 * (hi - lo) or x.max() > hi + 1e-3 * (hi - lo):
        raise Refused(f"{path} is not uint8/uint16 or finite floats in [{lo:g}, {hi:g}]", "scale it to that range")
    return x


def read_image(path, pre, lo, hi):
    """An image file (8- or 16-bit) in the contract's value_range, upright, at the model's size."""
    import warnings

    import numpy as np
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                if opened.size[0] * opened.size[1] > MAX_IMAGE_PIXELS:
                    raise Refused(f"image {path} has more pixels than {MAX_IMAGE_PIXELS}", "downscale the image")
                img = ImageOps.exif_transpose(opened)  # a phone photo stored sideways: turn it upright
                if img.mode in SIXTEEN_BIT or (img.mode == "I" and opened.format == "PNG"):
                    return lo + np.asarray(img).astype(np.float32)[:, :, None] * ((hi - lo) / 65535.0)
                if img.mode in ("I", "F") or img.mode.startswith("I;"):
                    raise Refused(f"{path} has {img.mode} samples of unknown range", "save it as 8- or 16-bit PNG")
                mode = pre.get("color_mode") or ("L" if int(pre["channels"]) == 1 else "RGB")
                resized = img.convert(mode).resize((pre["size"][1], pre["size"][0]), Image.Resampling.BILINEAR)
                x = np.asarray(resized, dtype=np.uint8).astype(np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refused(f"image {path} has more pixels than allowed (decompression bomb?)", "downscale it") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise Refused(f"cannot read image {path} ({printable(exc)[:120]})", "give an image Pillow can open") from None
    return lo + (x[:, :, None] if x.ndim == 2 else x) * ((hi - lo) / 255.0)


def preprocess(path, pre):
    """Load one input and return a float32 array [C, H, W] (or [H, W, C] for NHWC models)."""
    import numpy as np

    lo, hi = (float(v) for v in pre.get("value_range", [0.0, 255.0]))
    regular_file(path, "input", follow=True)
    x = read_array(path, lo, hi) if path.suffix.lower() == ".npy" else read_image(path, pre, lo, hi)
    x = x[:, :, :3] if x.shape[2] >= 3 else x[:, :, :1]
    channels = int(pre["channels"])
    if x.shape[2] != channels:
        x = np.repeat(x, channels, axis=2) if x.shape[2] == 1 else x.mean(axis=2, keepdims=True)
    x = resize(x.astype(np.float32), pre["size"])
    x = (x * pre["scale"] - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return x.transpose(2, 0, 1) if pre.get("layout", "NCHW") == "NCHW" else x


class OnnxRuntimeModel:
    def __init__(self, path):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x):
        return self.session.run(None, {self.input: x})[0]


class OpenVinoModel:
    def __init__(self, path):
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(path), "CPU")

    def __call__(self, x):
        return self.compiled(x)[self.compiled.output(0)]


def open_model(bundle, model):
    """Open the model with its runtime; other runtimes go through edgecompress's agent when it is installed."""
    path = bundle / model["file"]
    try:
        if model["runtime"] == "onnxruntime":
            return OnnxRuntimeModel(path)
        if model["runtime"] == "openvino":
            return OpenVinoModel(path)
    except ImportError as exc:
        raise Refused(f"runtime {model['runtime']!r} is missing ({exc})", "pip install -r requirements.txt") from None
    except Exception as exc:  # the runtimes raise their own types for models they cannot load
        raise Refused(f"{model['runtime']} cannot load {model['file']} ({printable(exc)[:160]})", FIX) from None
    try:
        from edgecompress.devices.agent import get_runtime
    except ImportError:
        raise Refused(f"runtime {model['runtime']!r} needs edgecompress here", "pip install edgecompress") from None
    runtime = get_runtime(model["runtime"])
    runtime.load(path)
    return runtime.run


def run_limited(run, x, limit_s):
    """``run(x)`` in a worker thread; past ``limit_s`` seconds the script ends with one line (a graph can loop for
    ever, and not every runtime can be stopped from outside)."""
    box = {}

    def work():
        try:
            box["out"] = run(x)
        except Exception as exc:  # reported below, in one line
            box["exc"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        print(f"error: the model did not finish within {limit_s:g} s — fix: check the bundle's model, or allow more "
              "time (--time-limit)", file=sys.stderr, flush=True)  # fmt: skip
        os._exit(2)
    if "exc" in box:
        raise Refused(f"the model failed on this input ({printable(box['exc'])[:160]})", FIX)
    return box["out"]


def softmax(z):
    import numpy as np

    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(args):
    check_bundle(args.bundle)
    import numpy as np

    manifest = load_manifest(args.bundle)
    model, pre, labels = manifest["model"], manifest["preprocessing"], manifest["labels"]
    for path in args.images:  # all refused before any is opened (a FIFO blocks its reader)
        regular_file(path, "input", follow=True)
    run = open_model(args.bundle, model)
    batch = (model.get("input") or {}).get("shape", [None])[0]
    temperature = manifest.get("temperature") or {}
    for path in args.images:
        x = preprocess(path, pre)[None].astype(np.float32)
        if isinstance(batch, int) and batch > 1:  # a model built for a fixed batch: pad with copies
            x = np.repeat(x, batch, axis=0)
        out = np.asarray(run_limited(run, x, args.time_limit), dtype=np.float32)[:1]
        if out.ndim != 2 or out.shape[1] != len(labels):
            raise Refused(f"the model returned shape {list(out.shape)} for {len(labels)} labels", FIX)
        if not np.isfinite(out).all():
            raise Refused(f"the model returned NaN or infinite outputs for {path}", "check the input; else the model "
                          "is broken: use the original bundle")  # fmt: skip
        if (model.get("output") or {}).get("kind", "logits") == "logits":
            if not temperature.get("folded", True) and temperature.get("value"):
                out = out / float(temperature["value"])
            out = softmax(out)
        print(printable(path))
        for i in np.argsort(-out[0], kind="stable")[: args.top_k]:
            print(f"  {printable(labels[i]):<24} {100.0 * out[0, i]:6.2f}%")
    return 0


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {printable(message)} — fix: see `python run.py --help`", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads) or .npy arrays")
    parser.add_argument("--top-k", type=int, default=5, help="how many labels to print per image")
    parser.add_argument("--bundle", type=Path, default=HERE, help="bundle folder (default: this script's folder)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds the model may take per image")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if not args.time_limit > 0:
        parser.error("--time-limit must be positive")
    try:
        return predict(args)
    except Refused as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory — fix: give smaller images", file=sys.stderr)
    except Exception as exc:  # anything else: still one line, never a traceback
        print(f"error: {type(exc).__name__}: {printable(exc)[:200]} — fix: check the input; {FIX}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
