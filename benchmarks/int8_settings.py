"""INT8 settings the pipeline chose, side by side with the alternatives: latency and accuracy through each runtime.

For a finished run directory this re-quantizes the run's FP32 ONNX artifact in this one process with the pipeline's
own quantizers (``edgecompress.export.onnx_export.quantize_int8`` / ``openvino_export.quantize_ir``) and the run's
calibration images, once per setting, then times every variant interleaved round by round (the device harness, as in
``deploy_speed.py``) and evaluates it on the test split through its runtime:

- ONNX Runtime INT8, thin image stem quantized vs kept in float (``export.keep_stem_float``);
- OpenVINO INT8 (NNCF), fast vs full bias correction (``quantize_ir(fast_bias_correction=...)``).

The FP32 artifacts are rows too, for reference. Each pair's ratio is measured in the same rounds.

    python -m benchmarks.int8_settings runs/demo --threads 1 --min-time 0.3 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.errors import ConfigError

if TYPE_CHECKING:
    from edgecompress.pipeline.loaded import LoadedRun

from ._common import (
    Entry,
    artifact_named,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    round_robin,
    run_and_print,
    set_torch_threads,
    summarize_rounds,
)
from .deploy_speed import bench_inputs, evaluate_entries

log = logging.getLogger("int8_settings")


@dataclass(frozen=True)
class Variant:
    """One INT8 setting: the quantizer option it passes, and the variant it is measured against (if any)."""

    name: str
    runtime: str
    setting: str
    option: dict[str, bool]  # keyword for quantize_int8 (onnxruntime) or quantize_ir (openvino)
    default: bool  # the pipeline's choice
    versus: str | None = None


VARIANTS = [
    Variant("ort-int8-stem-int8", "onnxruntime", "stem conv quantized", {"keep_stem_float": False}, False),
    Variant(
        "ort-int8-stem-float",
        "onnxruntime",
        "stem conv in float (keep_stem_float)",
        {"keep_stem_float": True},
        True,
        versus="ort-int8-stem-int8",
    ),
    Variant("ov-int8-fast-bc", "openvino", "NNCF fast bias correction", {"fast_bias_correction": True}, False),
    Variant(
        "ov-int8-full-bc",
        "openvino",
        "NNCF full bias correction",
        {"fast_bias_correction": False},
        True,
        versus="ov-int8-fast-bc",
    ),
]


def _base_onnx(run: LoadedRun) -> Path:
    art = artifact_named(run, "onnx-fp32")
    if art is None or art.model_file is None:
        raise ConfigError(f"{run.root}: the run has no onnx-fp32 artifact", "export with formats including onnx:fp32")
    return art.model_file


def _ort_choice(run: LoadedRun) -> tuple[str, bool]:
    """The calibration method and head setting the run's onnx-int8 export chose (minmax / quantized head if none)."""
    art = artifact_named(run, "onnx-int8")
    info = art.info if art is not None else {}
    return str(info.get("calibration_method") or "minmax"), bool((info.get("selection") or {}).get("keep_head_float"))


def build_variants(run: LoadedRun, folder: Path, *, threads: int | None) -> list[Entry]:
    """Quantize every variant into ``folder`` and load it; FP32 references first."""
    from edgecompress.devices.host_runtimes import get_runtime
    from edgecompress.export import onnx_export as ox
    from edgecompress.export import openvino_export as ovx

    base, calib = _base_onnx(run), run.splits.calib.x
    method, head = _ort_choice(run)
    ovx.export_ir(base, folder / "fp32" / "model.xml", precision="fp32")
    files: dict[str, tuple[str, Path, str, bool | None]] = {
        "onnx-fp32": ("onnxruntime", base, "reference", None),
        "openvino-fp32": ("openvino", folder / "fp32" / "model.xml", "reference", None),
    }
    for v in VARIANTS:
        with contextlib.redirect_stdout(sys.stderr):
            if v.runtime == "onnxruntime":
                path = folder / f"{v.name}.onnx"
                ox.quantize_int8(base, path, calib, method=method, keep_head_float=head, **v.option)
            else:
                path = folder / v.name / "model.xml"
                ovx.quantize_ir(base, path, calib, **v.option)
        files[v.name] = (v.runtime, path, v.setting, v.default)
    entries = []
    for name, (runtime, path, setting, default) in files.items():
        rt = get_runtime(runtime)
        rt.load(path, threads=threads)
        meta = {"runtime": runtime, "setting": setting, "default": default}
        entries.append(Entry(name, rt, "fp32" if "fp32" in name else "int8", None, meta))
    return entries


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from edgecompress.pipeline.loaded import load_run

    set_torch_threads(args.threads)
    run = load_run(args.run_dir)
    test = run.splits.test
    if test is None or run.splits.calib is None:
        raise ConfigError(f"{run.root}: the run has no labelled test or calib split", "use a run with data")
    with tempfile.TemporaryDirectory(prefix="int8-settings-") as tmp:
        entries = build_variants(run, Path(tmp), threads=args.threads)
        log.info("evaluating %d variants on %d test samples", len(entries), len(test.y))
        metrics = evaluate_entries(entries, test.x, test.y)
        log.info("timing %d variants at batch %d, %d rounds", len(entries), args.batch, args.rounds)
        results = round_robin(entries, bench_inputs(test.x, [args.batch]), rounds=args.rounds, min_time_s=args.min_time)
    pairs = {v.name: v.versus for v in VARIANTS if v.versus}
    rows = []
    for e in entries:
        ref = pairs.get(e.name)
        summary = summarize_rounds(results[(e.name, args.batch)], reference=results[(ref, args.batch)] if ref else None)
        rows.append({"name": e.name, **e.meta, **metrics[e.name], "timing": summary, "vs": ref})
    return {
        "machine": machine_info(args.threads),
        "command": " ".join(sys.argv),
        "batch": args.batch,
        "rounds": args.rounds,
        "min_time_s": args.min_time,
        "ort_calibration_method": _ort_choice(run)[0],
        "rows": rows,
    }


def render(report: dict[str, Any]) -> str:
    fp32 = {r["runtime"]: r["accuracy"] for r in report["rows"] if r["setting"] == "reference"}
    headers = ["variant", "runtime", "setting", "pipeline default", f"p50 ms b{report['batch']}", "CPU ms",
               "speed vs the alternative", "accuracy", "Δ vs FP32 (points)", "ECE"]  # fmt: skip
    rows = []
    for r in report["rows"]:
        t = r["timing"]
        rows.append(
            [
                r["name"],
                r["runtime"],
                r["setting"],
                {True: "yes", False: "no", None: "—"}[r["default"]],
                fmt(t["p50"], ".3f"),
                fmt(t["cpu_p50"], ".3f"),
                fmt(t.get("speedup"), ".2f", suffix="×") if r["vs"] else "—",
                fmt(r["accuracy"], ".2f", 100, "%"),
                fmt((r["accuracy"] - fp32[r["runtime"]]) * 100, "+.2f") if r["setting"] != "reference" else "—",
                fmt(r["ece"], ".4f"),
            ]
        )
    return "\n".join(
        [
            markdown_table(headers, rows),
            "",
            f"Machine: {machine_line(report['machine'])}",
            f"Timing: {report['rounds']} interleaved rounds × min {report['min_time_s']} s per variant at batch "
            f"{report['batch']}; ORT INT8 calibration method as the run chose: {report['ort_calibration_method']}. "
            "Accuracy/ECE on the whole test split through each runtime.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished `edgecompress run` directory")
    p.add_argument("--batch", type=int, default=32, help="batch size to time (default 32)")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per variant and round (default 0.3)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write the full results as JSON here")
    args = p.parse_args(argv)
    return run_and_print(run_benchmark, render, args)


if __name__ == "__main__":
    sys.exit(main())
