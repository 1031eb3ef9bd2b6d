"""Accuracy-aware INT8 on an INT8-sensitive network: plain PTQ, mixed precision and QAT, side by side in one run.

The network is :class:`benchmarks.int8_sensitive.OutlierNet` (widths 32-64-64-128, one outlier activation channel
before its last conv) trained on 4,000 Fashion-MNIST images at 28x28; val and calibration are 600 / 400 other
images. ``export_all`` runs with the gate at ``--max-drop`` (default half a point) for ONNX Runtime and OpenVINO
INT8: once with the default ``int8_recovery`` (mixed precision must reach 1.3x FP32, else QAT), once with QAT forced
(``min_speedup`` out of reach). Every step's val accuracy and the speed against FP32 (the recovery's own paired
measurement: batch 1, one thread) are printed, with the layers kept float.

    python -m benchmarks.int8_recovery --json runs/bench/int8_recovery.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._common import fmt, machine_info, machine_line, markdown_table, run_and_print

FASHION_MEAN, FASHION_STD = 0.286, 0.353


def scenario(*, n_train: int = 4000, epochs: int = 4, width: int = 32, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """The trained outlier network and its val / calibration images (Fashion-MNIST, never seen in training)."""
    from edgecompress.data.fashion import load_fashion_mnist

    from .int8_sensitive import trained_outlier_net

    x, y, _, _ = load_fashion_mnist(None, allow_download=False)
    n = n_train + 1000
    x = ((x[:n, None].astype(np.float32) / 255.0 - FASHION_MEAN) / FASHION_STD).astype(np.float32)
    y = y[:n].astype(np.int64)
    model = trained_outlier_net(x[:n_train], y[:n_train], epochs=epochs, width=width, seed=seed)
    data = {"val_x": x[n_train : n_train + 600], "val_y": y[n_train : n_train + 600], "calib_x": x[n_train + 600 :]}
    return model, data


def _rows(label: str, arts: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for art in arts:
        rec = art.int8_recovery
        if rec is None:
            rows.append({"setting": label, "artifact": art.name, "fp32": art.fp32_val_accuracy, "step": "ptq",
                         "val": (art.val_metrics or {}).get("accuracy"), "shipped": art.ok})  # fmt: skip
            continue
        for step in rec.steps:
            rows.append({"setting": label, "artifact": art.name, "fp32": rec.fp32_val_accuracy, "step": step.kind,
                         "val": step.val_accuracy, "within_gate": step.within_gate, "speedup": step.speedup,
                         "float": step.float_layers, "seconds": round(step.seconds, 1),
                         "shipped": step is rec.shipped()})  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from edgecompress.export import ExportConfig, ExportContract, export_all

    torch.manual_seed(0)
    model, data = scenario(n_train=args.train, epochs=args.epochs, width=args.width)
    contract = ExportContract((1, 28, 28), 10)
    report: dict[str, Any] = {"machine": machine_info(1), "command": " ".join(sys.argv), "rows": []}
    report["shared_machine"] = args.shared
    settings = {"default (min_speedup 1.3)": {}, "QAT forced": {"min_speedup": 1e6}}
    for label, recovery in settings.items():
        cfg = ExportConfig(formats=["onnx:int8", "openvino:int8"], int8_calibration="minmax", keep_head_float=False,
                           max_accuracy_drop=args.max_drop, int8_recovery=recovery)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            arts = export_all(model, contract=contract, out_dir=Path(tmp), cfg=cfg, **data)
        report["rows"] += _rows(label, arts)
    return report


def render(report: dict[str, Any]) -> str:
    label = " (shared machine: other jobs ran beside it)" if report.get("shared_machine") else ""
    headers = ["setting", "artifact", "step", "val acc", "FP32 val acc", "in gate", "x FP32 speed", "float", "shipped"]
    rows = [
        [r["setting"], r["artifact"], r["step"], fmt(r.get("val"), ".2%"), fmt(r["fp32"], ".2%"),
         "yes" if r.get("within_gate") else "no", fmt(r.get("speedup"), ".2f"),
         len(r.get("float") or []), "yes" if r.get("shipped") else ""]
        for r in report["rows"]
    ]  # fmt: skip
    lines = [f"Machine{label}: {machine_line(report['machine'])}", f"Command: `{report['command']}`", ""]
    floats = sorted({", ".join(r["float"]) for r in report["rows"] if r.get("shipped") and r.get("float")})
    return "\n".join([*lines, markdown_table(headers, rows), "", *[f"Float layers shipped: {f}" for f in floats]])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--max-drop", type=float, default=0.005, help="export.max_accuracy_drop (fraction)")
    ap.add_argument("--shared", action="store_true", help="label timings as measured on a shared machine")
    ap.add_argument("--json", type=Path, default=None)
    return run_and_print(run, render, ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
