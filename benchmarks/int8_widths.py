"""ONNX Runtime INT8 fraction of peak against the student's channel widths, measured side by side in one run.

Each width list is a ``cnn`` student (conv3x3-BN-ReLU, max-pool after every 2nd layer, GAP, Linear) on 1x28x28,
its BatchNorm statistics set on real images, exported to ONNX and quantized with the pipeline's own INT8 form
(``export.onnx_export.quantize_int8``: QDQ, per-channel int8 weights, uint8 activations, percentile calibration on
512 calibration images, the thin stem kept in float). The INT8 peak GEMM (``[128x512] @ [512x512]``, as in
``benchmarks.roofline``) and every FP32/INT8 student are timed round-robin with CPU time (``process_time``, one
thread); a fraction is the median over rounds of ``achieved / peak`` measured in the same round. Speed does not
depend on the weights' values, so the students are untrained; accuracy is not measured here. ``--openvino`` also
times each student's OpenVINO INT8 IR (the pipeline's ``quantize_ir``, NNCF) in the same rounds (latency only: a
width that suits ONNX Runtime may not suit OpenVINO).

    python -m benchmarks.int8_widths --widths 8-8-16-16-40-40,8-16-16-16-40-40,16-16-16-16-40-40 \\
        --profile 8-8-16-16-40-40,8-16-16-16-40-40 --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ._common import gemm_int8_qdq_model, gemm_macs, save_model
from ._profile import profile_ort

FASHION = Path("/usr/share/datasets/fashion-mnist")
PEAK = (128, 512, 512)


def _images(n: int) -> tuple[np.ndarray, str]:
    """``n`` normalized 1x28x28 Fashion-MNIST training images (random ones when the dataset is not here)."""
    try:
        from edgecompress.data.fashion import load_fashion_mnist

        x = load_fashion_mnist(FASHION, allow_download=False)[0][:n]
        source = f"Fashion-MNIST ({FASHION})"
    except Exception as exc:  # noqa: BLE001 - fall back to random images of the same shape, and say so
        x = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        source = f"RANDOM images ({exc})"
    return ((x[:, None].astype(np.float32) / 255.0 - 0.286) / 0.353).astype(np.float32), source


def _macs(model: Any) -> int:
    """Conv + Linear MACs per 1x28x28 image (forward hooks)."""
    import torch

    total = [0]

    def hook(mod: Any, _inp: Any, out: Any) -> None:
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += out[0].numel() * k
        elif isinstance(mod, torch.nn.Linear):
            total[0] += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return total[0]


def _student(widths: list[int], images: np.ndarray, folder: Path, calib: np.ndarray) -> tuple[Path, Path, int]:
    import torch

    from edgecompress.export.onnx_export import quantize_int8
    from edgecompress.models.build import build_model
    from edgecompress.models.config import ModelSpec

    torch.manual_seed(0)
    model = build_model(
        ModelSpec(family="cnn", params={"channels": widths}), in_channels=1, num_classes=10, input_size=(28, 28)
    )
    with torch.no_grad():  # BatchNorm statistics of real images, so activation ranges are realistic
        model.train()
        for i in range(0, len(images), 256):
            model(torch.from_numpy(images[i : i + 256]))
    model.eval()
    name = "-".join(map(str, widths))
    fp32, int8 = folder / f"{name}.onnx", folder / f"{name}-int8.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.from_numpy(images[:2]),),
            str(fp32),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}},
        )
    quantize_int8(fp32, int8, calib, method="percentile", keep_stem_float=True)
    return fp32, int8, _macs(model)


class _OpenVINO:
    """An OpenVINO CPU request with ``run(None, feed)`` like an ORT session (same settings as the device agent)."""

    def __init__(self, xml: Path, threads: int) -> None:
        import openvino as ov

        compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads})
        self._request = compiled.create_infer_request()

    def run(self, _outputs: Any, feed: dict[str, np.ndarray]) -> Any:
        self._request.infer({0: next(iter(feed.values()))})
        return [self._request.get_output_tensor(0).data]


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="8-8-16-16-40-40,8-16-16-16-40-40,16-16-16-16-40-40")
    ap.add_argument("--profile", default="", help="width lists whose INT8 per-node profile to print")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--openvino", action="store_true", help="also time OpenVINO INT8 IRs (NNCF) of each student")
    args = ap.parse_args(argv)
    import os

    import torch

    torch.set_num_threads(args.threads)
    images, source = _images(2560)
    calib, x = images[2048:], np.ascontiguousarray(images[: args.batch])
    folder = Path(tempfile.mkdtemp(prefix="int8-widths-"))
    sessions: dict[str, tuple[Any, dict[str, np.ndarray], int]] = {}
    peak = _session(save_model(gemm_int8_qdq_model(*PEAK), folder / "peak.onnx"), args.threads)
    xp = np.random.default_rng(0).standard_normal(PEAK[:2]).astype(np.float32)
    sessions["peak-int8"] = (peak, {peak.get_inputs()[0].name: xp}, gemm_macs(*PEAK))
    for spec in args.widths.split(","):
        widths = [int(v) for v in spec.split("-")]
        fp32, int8, macs = _student(widths, images[:2048], folder, calib)
        for prec, path in (("fp32", fp32), ("int8", int8)):
            sessions[f"{spec} {prec}"] = (_session(path, args.threads), {"input": x}, macs * args.batch)
        if args.openvino:
            from edgecompress.export.openvino_export import quantize_ir

            xml = folder / f"{spec}-ov-int8.xml"
            quantize_ir(fp32, xml, calib, method="minmax")
            sessions[f"{spec} openvino-int8"] = (_OpenVINO(xml, args.threads), {"input": x}, macs * args.batch)
    for sess, feed, _ in sessions.values():
        for _ in range(10):
            sess.run(None, feed)
    secs: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for r in range(args.rounds):  # round-robin, order rotated per round
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            sess, feed, _ = sessions[k]
            c0, n = time.process_time(), 0
            while time.process_time() - c0 < args.min_time:
                sess.run(None, feed)
                n += 1
            secs[k].append((time.process_time() - c0) / n)
    peak_rate = [sessions["peak-int8"][2] / t for t in secs["peak-int8"]]
    print(f"data: {source}; batch {args.batch}; threads {args.threads}; {args.rounds} rounds (CPU time)")
    print(f"load average after the run: {[round(v, 2) for v in os.getloadavg()]}")
    print(f"ONNX Runtime INT8 peak GEMM {PEAK}: {statistics.median(peak_rate) / 1e9:.1f} GMAC/s (median of rounds)\n")
    print("| student widths | artifact | MACs/image | CPU ms per batch | GMAC/s | fraction of ORT INT8 peak |")
    print("|---|---|---|---|---|---|")
    for k, (_, _, macs) in sessions.items():
        if k == "peak-int8":
            continue
        spec, prec = k.split()
        frac = statistics.median(macs / t / p for t, p in zip(secs[k], peak_rate, strict=True))
        med = statistics.median(secs[k])
        shown = f"{100 * frac:.1f} %" if prec != "openvino-int8" else "— (ORT's peak)"
        print(
            f"| [{spec.replace('-', ', ')}] | {prec} | {macs / args.batch / 1e6:.2f} M | {med * 1e3:.3f} | "
            f"{macs / med / 1e9:.1f} | {shown} |"
        )
    for spec in filter(None, args.profile.split(",")):
        prof = profile_ort(folder / f"{spec}-int8.onnx", x, threads=args.threads, runs=60, workdir=folder)
        label = spec.replace("-", ", ")
        print(f"\nProfile of [{label}] int8 (batch {args.batch}, {prof['total_us']:.0f} µs of kernels)")
        print("\n| node | op | output | µs | share | MMACs | GMAC/s |\n|---|---|---|---|---|---|---|")
        for nd in prof["nodes"][:8]:
            mm = f"{nd['macs'] / 1e6:.1f}" if nd["macs"] else "—"
            gm = f"{nd['gmacs']:.1f}" if nd["gmacs"] else "—"
            out = "x".join(map(str, nd["out"] or []))
            share = nd["us"] / prof["total_us"]
            print(f"| {nd['node']} | {nd['op']} | {out} | {nd['us']:.0f} | {share:.0%} | {mm} | {gm} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
