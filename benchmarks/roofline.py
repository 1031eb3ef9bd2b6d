"""How close the deployed student runs to this CPU's limit: achieved MAC/s over measured peak GEMM MAC/s.

1. Peak: a GEMM (``[M,K] @ [K,N]``, default 128x512x512 = 33.6 M MACs) as ONNX, FP32 and INT8 (QDQ with
   uint8 activations and per-channel int8 weights, the pipeline's own quantization form), loaded through the same
   runtimes and runtime settings as the artifacts: ONNX Runtime CPU and OpenVINO CPU (OpenVINO with its default
   inference precision, which on CPUs with AVX512-BF16/AMX is bf16 even for an FP32 model: the table says so).
   The size is chosen so one call takes about as long as the artifacts' batch-32 calls (0.1-1 ms): on a shared
   machine, calls of 5+ ms are almost always cut by a scheduler time slice, which would understate the peak
   (256x1024x1024 measured 20 GMAC/s p50 against 55 for 128x512x512 in FP32 on the same loaded machine).
2. Achieved: each student artifact at batch 32, MACs per sample (torch-pruning's counter on the rebuilt student)
   × samples/s.
3. Fraction = achieved / peak of the same runtime and precision, per round, median over rounds (peaks and
   artifacts are timed round-robin with the device harness, so machine noise hits both alike).
4. Profile (``--profile``, default on): ONNX Runtime ``enable_profiling`` per-node times and the optimized graph
   (fused ops, per-layer MACs and GMAC/s); OpenVINO ``PERF_COUNT`` per-layer times with the kernel chosen
   (``exec_type``: jit/brgconv/ref, I8/FP32/BF16) and reorders.

    python -m benchmarks.roofline runs/demo --threads 1 --rounds 5 --min-time 0.3

5. Batch-1 floor (``--floor``, default on): each artifact at batch 1 beside an identity model of the same input in
   the same runtime (its per-call floor: binding, bookkeeping, output copy), in the same rounds as the peaks. The
   floor of a model is that per-call cost plus its MACs at the runtime's measured peak; the table gives p50 over
   both (the per-call floor alone, and the floor with the compute).

Goals (issues): every INT8 artifact at batch 32 at >= 50 % of its runtime's measured INT8 peak; the batch-1 p50 of
the best artifact of each runtime within 2x of its floor.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    CPU_RUNTIMES,
    Entry,
    cpu_artifacts,
    fmt,
    fraction_of_peak,
    gemm_fp32_model,
    gemm_int8_qdq_model,
    gemm_macs,
    load_everywhere,
    machine_info,
    machine_line,
    macs_per_second,
    markdown_table,
    median_or_none,
    precision_label,
    round_robin,
    run_and_print,
    save_model,
    set_torch_threads,
)
from ._floor import floor_goal, floor_rows, identity_entries, render_floor
from ._profile import profile_ort, profile_ov

log = logging.getLogger("roofline")

GOAL_FRACTION = 0.50


def peak_class(precision: str) -> str:
    """Which peak an artifact is compared with: int8 -> the INT8 GEMM, anything else -> the FP32 GEMM."""
    return "int8" if precision == "int8" else "fp32"


def peak_entries(folder: Path, m: int, k: int, n: int, *, threads: int | None) -> list[Entry]:
    """Peak-GEMM models (FP32 and INT8) loaded in every CPU runtime that is installed."""
    files = {
        "fp32": save_model(gemm_fp32_model(m, k, n), folder / "gemm_fp32.onnx"),
        "int8": save_model(gemm_int8_qdq_model(m, k, n), folder / "gemm_int8_qdq.onnx"),
    }
    out = []
    for prec, path in files.items():
        for rt_name, rt in load_everywhere(path, threads=threads, what=f"peak {prec}"):
            out.append(
                Entry(
                    f"peak-{rt_name}-{prec}",
                    rt,
                    prec,
                    gemm_macs(m, k, n),
                    {"runtime": rt_name, "used": rt.info().get("precision"), "file": str(path)},
                )
            )
    return sorted(out, key=lambda e: CPU_RUNTIMES.index(e.meta["runtime"]))  # per runtime: fp32, then int8


def best_fraction(
    art_rounds: list[dict], peak_rounds: list[dict], macs_per_sample: int, peak_macs: int
) -> float | None:
    """(artifact MAC/s at its fastest call) / (peak MAC/s at its fastest call): both free of scheduler noise."""
    if not art_rounds or not peak_rounds:
        return None
    a_min, p_min = min(r["min"] for r in art_rounds), min(r["min"] for r in peak_rounds)
    return fraction_of_peak(macs_per_sample * art_rounds[0]["batch"] / (a_min / 1e3), peak_macs / (p_min / 1e3))


def per_round_fraction(
    art_rounds: list[dict], peak_rounds: list[dict], macs_per_sample: int, peak_macs: int, key: str = "p50"
) -> float | None:
    """Median over rounds of (artifact MAC/s) / (peak MAC/s), both from the round's ``key`` (p50 or cpu_p50)."""
    fracs = []
    for a, p in zip(art_rounds, peak_rounds, strict=False):
        if not a.get(key) or not p.get(key):
            continue
        achieved = macs_per_second(macs_per_sample, a["batch"] / (a[key] / 1e3))
        peak = peak_macs / (p[key] / 1e3)
        fracs.append(fraction_of_peak(achieved, peak))
    return median_or_none(fracs)


# ----------------------------------------------------------------------------------------------------------------------


def run_roofline(args: argparse.Namespace) -> dict[str, Any]:
    from edgecompress.devices.host_runtimes import get_runtime
    from edgecompress.models import count_macs
    from edgecompress.pipeline.loaded import load_run

    set_torch_threads(args.threads)
    run = load_run(args.run_dir)
    m, k, n = (int(v) for v in args.gemm.split(","))
    s_macs = int(count_macs(run.student(), tuple(run.splits.input_shape)))
    test = run.splits.test if run.splits.test is not None else run.splits.val
    x = np.ascontiguousarray(test.x[np.arange(args.batch) % len(test.x)])
    with tempfile.TemporaryDirectory(prefix="roofline-") as tmp:
        peaks = peak_entries(Path(tmp), m, k, n, threads=args.threads)
        arts = []
        for art in cpu_artifacts(run):
            rt = get_runtime(art.runtime)
            rt.load(art.model_file, threads=args.threads)
            meta = {"runtime": art.runtime, "used": rt.info().get("precision"), "file": str(art.model_file)}
            arts.append(Entry(art.name, rt, art.precision, s_macs, meta))
        ids = identity_entries(Path(tmp), tuple(x.shape[1:]), threads=args.threads) if args.floor else []
        x1 = np.ascontiguousarray(x[:1])
        floor_res: dict[str, list[dict]] = collections.defaultdict(list)
        xs = {"gemm": np.random.default_rng(0).standard_normal((m, k)).astype(np.float32), "art": x}
        # The GEMMs and the artifacts take different inputs: interleave them with one round_robin call per round.
        peak_res: dict[str, list[dict]] = collections.defaultdict(list)
        art_res: dict[str, list[dict]] = collections.defaultdict(list)
        for _ in range(args.rounds):
            for (name, _b), res in round_robin(peaks, {0: xs["gemm"]}, rounds=1, min_time_s=args.min_time).items():
                peak_res[name] += res
            for (name, _b), res in round_robin(arts, {args.batch: x}, rounds=1, min_time_s=args.min_time).items():
                art_res[name] += res
            if ids:  # batch 1: every artifact beside the identity of its runtime, in the same round as the peaks
                for (name, _b), res in round_robin(arts + ids, {1: x1}, rounds=1, min_time_s=args.min_time).items():
                    floor_res[name] += res
        peak_rows = []
        peak_by_key = {}
        for e in peaks:
            rs = peak_res[e.name]
            macs_s = median_or_none([e.macs / (r["p50"] / 1e3) for r in rs])
            best = max(e.macs / (r["min"] / 1e3) for r in rs)
            peak_by_key[(e.meta["runtime"], e.precision)] = e
            peak_rows.append(
                {
                    "name": e.name,
                    "runtime": e.meta["runtime"],
                    "precision": e.precision,
                    "runs_as": precision_label(e.precision, e.meta["used"]),
                    "p50_ms": median_or_none([r["p50"] for r in rs]),
                    "gmacs_p50": macs_s / 1e9,
                    "gmacs_best": best / 1e9,
                    "gmacs_cpu": (median_or_none([e.macs / (r["cpu_p50"] / 1e3) for r in rs if r.get("cpu_p50")]) or 0)
                    / 1e9
                    or None,
                }
            )
        art_rows = []
        for e in arts:
            pk = peak_by_key.get((e.meta["runtime"], peak_class(e.precision)))
            rs = art_res[e.name]
            sps = median_or_none([r["throughput"] for r in rs])
            achieved = macs_per_second(e.macs, sps)
            row = {
                "name": e.name,
                "runtime": e.meta["runtime"],
                "precision": e.precision,
                "runs_as": precision_label(e.precision, e.meta["used"]),
                "macs": e.macs,
                "samples_s": sps,
                "gmacs": achieved / 1e9 if achieved else None,
                "peak": pk.name if pk else None,
                "peak_gmacs": median_or_none([pk.macs / (r["p50"] / 1e3) for r in peak_res[pk.name]]) / 1e9
                if pk
                else None,
                "fraction": per_round_fraction(rs, peak_res[pk.name], e.macs, pk.macs) if pk else None,
                "fraction_best": best_fraction(rs, peak_res[pk.name], e.macs, pk.macs) if pk else None,
                "fraction_cpu": per_round_fraction(rs, peak_res[pk.name], e.macs, pk.macs, key="cpu_p50")
                if pk
                else None,
            }
            if args.profile:
                try:
                    if e.meta["runtime"] == "onnxruntime":
                        row["profile"] = profile_ort(
                            Path(e.meta["file"]), x, threads=args.threads, runs=args.profile_runs, workdir=Path(tmp)
                        )
                    else:
                        row["profile"] = profile_ov(
                            Path(e.meta["file"]), x, threads=args.threads, runs=args.profile_runs
                        )
                except Exception as exc:  # noqa: BLE001 - a profiler failure must not hide the measured table
                    row["profile_error"] = f"{type(exc).__name__}: {exc}"
            art_rows.append(row)
        peaks_of = {
            e.name: (pk, peak_res[pk.name])
            for e in arts
            if (pk := peak_by_key.get((e.meta["runtime"], peak_class(e.precision)))) is not None
        }
        floors = floor_rows(arts, ids, floor_res, peaks_of)
    int8 = [r for r in art_rows if r["precision"] == "int8" and r["fraction"] is not None]
    best = max(int8, key=lambda r: r["fraction"]) if int8 else None
    goal = {
        "met": bool(int8) and all(r["fraction"] >= GOAL_FRACTION for r in int8),
        "per_artifact": {r["name"]: r["fraction"] for r in int8},
        "best": best["name"] if best else None,
        "fraction": best["fraction"] if best else None,
        "fraction_cpu": best.get("fraction_cpu") if best else None,
    }
    return {
        "machine": machine_info(args.threads),
        "command": " ".join(sys.argv),
        "gemm": [m, k, n],
        "batch": args.batch,
        "rounds": args.rounds,
        "peaks": peak_rows,
        "artifacts": art_rows,
        "goal": goal,
        "floors": floors,
        "floor_goal": floor_goal(floors) if floors else None,
    }


def render(report: dict[str, Any], *, top: int = 8) -> str:
    m, k, n = report["gemm"]
    lines = [
        f"Peak GEMM [{m}x{k}] @ [{k}x{n}] ({gemm_macs(m, k, n) / 1e6:.1f} M MACs), "
        f"median of {report['rounds']} rounds:",
        "",
    ]
    lines.append(
        markdown_table(
            [
                "peak model",
                "runtime",
                "precision",
                "runs as",
                "p50 ms",
                "GMAC/s (p50)",
                "GMAC/s (best round min)",
                "GMAC/s (CPU time)",
            ],
            [
                [
                    r["name"],
                    r["runtime"],
                    r["precision"],
                    r["runs_as"],
                    fmt(r["p50_ms"], ".2f"),
                    fmt(r["gmacs_p50"], ".1f"),
                    fmt(r["gmacs_best"], ".1f"),
                    fmt(r.get("gmacs_cpu"), ".1f"),
                ]
                for r in report["peaks"]
            ],
        )
    )
    lines += ["", f"Student artifacts at batch {report['batch']}:", ""]
    lines.append(
        markdown_table(
            [
                "artifact",
                "runtime",
                "precision",
                "runs as",
                "MACs/sample",
                "samples/s",
                "achieved GMAC/s",
                "peak GMAC/s",
                "fraction of peak (p50)",
                "fraction (fastest calls)",
                "fraction (CPU time)",
            ],
            [
                [
                    r["name"],
                    r["runtime"],
                    r["precision"],
                    r["runs_as"],
                    fmt(r["macs"] / 1e6, ".2f", suffix="M"),
                    fmt(r["samples_s"], ".0f"),
                    fmt(r["gmacs"], ".2f"),
                    fmt(r["peak_gmacs"], ".1f"),
                    fmt(r["fraction"], ".1f", 100, "%"),
                    fmt(r["fraction_best"], ".1f", 100, "%"),
                    fmt(r.get("fraction_cpu"), ".1f", 100, "%"),
                ]
                for r in report["artifacts"]
            ],
        )
    )
    g = report["goal"]
    lines += [
        "",
        f"Machine: {machine_line(report['machine'])}",
        f"Goal (every student INT8 artifact >= {GOAL_FRACTION:.0%} of its runtime's measured INT8 peak at batch "
        f"{report['batch']}): "
        + ("MET" if g["met"] else "NOT MET")
        + (
            " — " + ", ".join(f"{name} {frac:.1%}" for name, frac in g.get("per_artifact", {}).items())
            if g["best"]
            else " — no INT8 artifact"
        )
        + (f" (best in CPU time {g['fraction_cpu']:.1%})" if g.get("fraction_cpu") else ""),
    ]
    lines += render_floor(report)
    for r in report["artifacts"]:
        prof = r.get("profile")
        if r.get("profile_error"):
            lines += ["", f"Profile of {r['name']}: failed ({r['profile_error']})"]
        if not prof:
            continue
        lines += [
            "",
            f"Profile of {r['name']} (batch {report['batch']}, {prof['total_us'] / 1e3:.2f} ms of kernels):",
            "",
        ]
        if "optimized_ops" in prof:
            lines.append("Optimized graph: " + ", ".join(f"{op}×{c}" for op, c in prof["optimized_ops"].items()))
            lines.append("")
            lines.append(
                markdown_table(
                    ["node", "op", "output", "µs", "share", "MMACs", "GMAC/s"],
                    [
                        [
                            d["node"],
                            d["op"],
                            "x".join(map(str, d["out"] or [])),
                            fmt(d["us"], ".0f"),
                            fmt(d["us"] / prof["total_us"], ".0%"),
                            fmt(d["macs"] / 1e6 if d["macs"] else None, ".1f"),
                            fmt(d["gmacs"], ".1f"),
                        ]
                        for d in prof["nodes"][:top]
                    ],
                )
            )
        else:
            lines.append(
                f"Inference precision hint {precision_label('fp32', prof['precision'])}; "
                f"reorders executed: {prof['reorders']}"
            )
            lines.append("")
            lines.append(
                markdown_table(
                    ["layer type [kernel]", "µs", "share"],
                    [
                        [t, fmt(us, ".0f"), fmt(us / prof["total_us"], ".0%")]
                        for t, us in list(prof["by_type_us"].items())[:top]
                    ],
                )
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished `edgecompress run` directory")
    p.add_argument("--threads", type=int, default=1, help="threads for every runtime (default 1)")
    p.add_argument("--batch", type=int, default=32, help="artifact batch size (default 32)")
    p.add_argument("--gemm", default="128,512,512", help="peak GEMM M,K,N (default 128,512,512)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--no-profile", dest="profile", action="store_false", help="skip the per-op profiles")
    p.add_argument("--profile-runs", type=int, default=30)
    p.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the batch-1 timing against an identity model"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the full results as JSON here")
    args = p.parse_args(argv)
    return run_and_print(run_roofline, render, args)


if __name__ == "__main__":
    sys.exit(main())
