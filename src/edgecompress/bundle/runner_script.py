#!/usr/bin/env python3
"""Run this bundle's model on images and print the top-k labels with calibrated probabilities.

Standalone: needs only numpy, Pillow and the model's runtime (see requirements.txt), not edgecompress.

    pip install -r requirements.txt
    python run.py cat.jpg dog.png --top-k 3

The steps an app must repeat are all here: read manifest.json, resize the image to preprocessing.size, scale the
pixels, subtract mean and divide by std per channel, lay out as NCHW float32, run, then softmax (dividing the logits by
the temperature first unless it is folded into the model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_manifest(bundle: Path) -> dict:
    """Read manifest.json of the bundle folder."""
    return json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))


def preprocess(path: Path, pre: dict):
    """Load one image and return a float32 array [C, H, W] (or [H, W, C] for NHWC models)."""
    import numpy as np
    from PIL import Image

    height, width = pre["size"]
    with Image.open(path) as img:
        img = img.convert("L" if pre["channels"] == 1 else "RGB").resize((width, height), Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path, help="image files (any format Pillow reads)")
    parser.add_argument("--top-k", type=int, default=5, help="how many labels to print per image")
    parser.add_argument("--bundle", type=Path, default=HERE, help="bundle folder (default: this script's folder)")
    args = parser.parse_args(argv)

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
