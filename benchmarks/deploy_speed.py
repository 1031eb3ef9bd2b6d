"""Deployed student vs teacher: latency, throughput, speedup, accuracy and ECE, side by side in one process.

For a finished run directory this times, on the same CPU, in this one process and with the same thread count:

- the teacher in PyTorch FP32 eager (the baseline every speedup is relative to),
- the teacher exported to ONNX FP32 in ONNX Runtime (separates "better runtime" from "smaller model"),
- the calibrated student in PyTorch FP32 eager,
- every student artifact of the run through its own runtime (``edgecompress.devices.host_runtimes.get_runtime``).

Timing is the device harness ``edgecompress.devices.agent.measure`` (warm-up, minimum time, percentiles after
outlier clipping), called round-robin: each round times every model once at every batch size, rotating the order,
so a noisy stretch of this shared machine hits all of them alike. p50/p90/throughput are medians over rounds; the
speedup is the median over rounds of teacher_p50 / model_p50 measured in the same round. Accuracy and ECE are
measured here on the test split through each runtime (the student's PyTorch logits divided by the fitted T).

    python -m benchmarks.deploy_speed runs/demo --batches 1,32 --threads 1 --min-time 0.3 --rounds 5

Goal (issue): the best student artifact >= 20x faster than the teacher at batch 32, within 1.5 accuracy points.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.errors import EdgeCompressError

if TYPE_CHECKING:
    from edgecompress.pipeline.loaded import LoadedRun

from ._common import (
    Entry,
    cpu_artifacts,
    fmt,
    machine_info,
    machine_line,
    markdown_table,
    parse_batches,
    precision_label,
    round_robin,
    run_and_print,
    set_torch_threads,
    summarize_rounds,
)

log = logging.getLogger("deploy_speed")

GOAL_SPEEDUP = 20.0
GOAL_MAX_DROP = 0.015
GOAL_BATCH = 32


def _teacher_onnx(run: LoadedRun, teacher: Any, folder: Path) -> Path:
    from edgecompress.export.contract import ExportContract
    from edgecompress.export.onnx_export import export_onnx

    contract = ExportContract(input_shape=tuple(run.splits.input_shape), num_classes=run.splits.num_classes)
    path = folder / "teacher_fp32.onnx"
    export_onnx(teacher, contract, path)
    return path


def build_entries(run: LoadedRun, *, threads: int | None, workdir: Path, teacher_onnx: bool = True) -> list[Entry]:
    """Load every model to time; the first entry is the PyTorch teacher (the reference)."""
    from edgecompress.devices.host_runtimes import get_runtime
    from edgecompress.models import count_macs

    from ._common import TorchRuntime

    shape = tuple(run.splits.input_shape)
    teacher, student = run.teacher(), run.student()
    t_macs, s_macs = int(count_macs(teacher, shape)), int(count_macs(student, shape))
    entries = [
        Entry(
            "teacher", TorchRuntime(teacher, threads=threads), "fp32", t_macs, {"runtime": "pytorch", "role": "teacher"}
        ),
    ]
    if teacher_onnx:
        rt = get_runtime("onnxruntime")
        with contextlib.redirect_stdout(sys.stderr):  # the dynamo exporter prints its passes
            path = _teacher_onnx(run, teacher, workdir)
        rt.load(path, threads=threads)
        entries.append(Entry("teacher-onnx-fp32", rt, "fp32", t_macs, {"runtime": "onnxruntime", "role": "teacher"}))
    entries.append(
        Entry(
            "student",
            TorchRuntime(student, threads=threads),
            "fp32",
            s_macs,
            {"runtime": "pytorch", "role": "student", "temperature": run.temperature},
        )
    )
    for art in cpu_artifacts(run):
        rt = get_runtime(art.runtime)
        rt.load(art.model_file, threads=threads)
        precision = precision_label(art.precision, rt.info().get("precision"))
        entries.append(
            Entry(
                art.name,
                rt,
                precision,
                s_macs,
                {"runtime": art.runtime, "role": "artifact", "run_json_metrics": art.test_metrics},
            )
        )
    return entries


def evaluate_entries(entries: list[Entry], x: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float]]:
    """Accuracy / ECE / NLL of every entry on (x, y), through its own runtime."""
    from edgecompress.devices.host_runtimes import classification_metrics

    out = {}
    for e in entries:
        logits = np.concatenate([e.runtime.run(x[i : i + 256]) for i in range(0, len(x), 256)])
        logits = logits / float(e.meta.get("temperature", 1.0))
        out[e.name] = classification_metrics(logits, y)
    return out


def bench_inputs(x: np.ndarray, batches: list[int]) -> dict[int, np.ndarray]:
    """Real test images at each batch size (cycled when the split is smaller than the batch)."""
    return {b: np.ascontiguousarray(x[np.arange(b) % len(x)]) for b in batches}


def goal_verdict(rows: list[dict[str, Any]], teacher_accuracy: float, batch: int = GOAL_BATCH) -> dict[str, Any]:
    """Is the best student artifact >= 20x faster than the PyTorch teacher at ``batch`` within 1.5 points?

    Also says where an accuracy gap comes from: the PyTorch student (distillation/pruning) or the export.
    """
    eligible = [r for r in rows if r["role"] == "artifact" and r.get("accuracy") is not None]
    fast = [r for r in eligible if (r["speedup"].get(batch) or 0) > 0]
    if not fast:
        return {"met": False, "reason": f"no student artifact was timed at batch {batch}"}
    within = [r for r in fast if teacher_accuracy - r["accuracy"] <= GOAL_MAX_DROP + 1e-12]
    best = max(within or fast, key=lambda r: r["speedup"][batch])
    drop = teacher_accuracy - best["accuracy"]
    student = next((r for r in rows if r["role"] == "student"), None)
    return {
        "met": bool(within) and best["speedup"][batch] >= GOAL_SPEEDUP,
        "best": best["name"],
        "speedup": best["speedup"][batch],
        "speedup_cpu": (best.get("speedup_cpu") or {}).get(batch),
        "speedup_vs_ort_teacher": (best.get("speedup_ort") or {}).get(batch),
        "accuracy_drop": drop,
        "within_accuracy": bool(within),
        "student_accuracy_drop": teacher_accuracy - student["accuracy"] if student else None,
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from edgecompress.pipeline.loaded import load_run

    set_torch_threads(args.threads)
    run = load_run(args.run_dir)
    batches = parse_batches(args.batches)
    test = run.splits.test
    if test is None:
        raise EdgeCompressError(f"{run.root}: the run has no labelled test split", "use a run with test data")
    x_eval, y_eval = (
        (test.x[: args.eval_samples], test.y[: args.eval_samples]) if args.eval_samples else (test.x, test.y)
    )
    with tempfile.TemporaryDirectory(prefix="deploy-speed-") as tmp:
        entries = build_entries(run, threads=args.threads, workdir=Path(tmp), teacher_onnx=not args.no_teacher_onnx)
        log.info("evaluating %d models on %d test samples", len(entries), len(y_eval))
        metrics = evaluate_entries(entries, x_eval, y_eval)
        log.info("timing %d models x batches %s, %d rounds", len(entries), batches, args.rounds)
        results = round_robin(entries, bench_inputs(test.x, batches), rounds=args.rounds, min_time_s=args.min_time)
    rows = []
    ort_teacher = next((e.name for e in entries if e.name == "teacher-onnx-fp32"), None)
    for e in entries:
        row: dict[str, Any] = {
            "name": e.name,
            "runtime": e.meta["runtime"],
            "precision": e.precision,
            "role": e.meta["role"],
            "macs": e.macs,
            **metrics[e.name],
            "run_json_metrics": e.meta.get("run_json_metrics"),
            "batch": {},
            "speedup": {},
        }
        for b in batches:
            s = summarize_rounds(results[(e.name, b)], reference=results[(entries[0].name, b)])
            row["batch"][b] = s
            row["speedup"][b] = s["speedup"]
            row.setdefault("speedup_cpu", {})[b] = s["speedup_cpu"]
            if ort_teacher is not None:
                row.setdefault("speedup_ort", {})[b] = summarize_rounds(
                    results[(e.name, b)], reference=results[(ort_teacher, b)]
                )["speedup"]
        rows.append(row)
    return {
        "machine": machine_info(args.threads),
        "command": " ".join(sys.argv),
        "batches": batches,
        "eval_samples": int(len(y_eval)),
        "rounds": args.rounds,
        "min_time_s": args.min_time,
        "rows": rows,
        "goal": goal_verdict(rows, rows[0]["accuracy"]),
    }


def render(report: dict[str, Any]) -> str:
    """The markdown table, the machine line and the goal verdict."""
    batches = report["batches"]
    headers = ["model", "runtime", "precision", "MACs/sample"]
    for b in batches:
        headers += [f"p50 ms b{b}", f"p90 ms b{b}"]
    big = max(batches)
    headers += [f"samples/s b{big}"] + [f"speedup b{b}" for b in batches]
    headers += [f"CPU ms b{big}", f"speedup CPU-time b{big}", f"vs ORT teacher b{big}", "accuracy", "ECE"]
    rows = []
    for r in report["rows"]:
        cells = [r["name"], r["runtime"], r["precision"], fmt(r["macs"] / 1e6, ".2f", suffix="M")]
        for b in batches:
            cells += [fmt(r["batch"][b]["p50"], ".3f"), fmt(r["batch"][b]["p90"], ".3f")]
        cells += [fmt(r["batch"][max(batches)]["throughput"], ".0f")]
        cells += [fmt(r["speedup"][b], ".1f", suffix="×") for b in batches]
        cells += [fmt(r["batch"][big].get("cpu_p50"), ".3f"), fmt(r["speedup_cpu"][big], ".1f", suffix="×")]
        cells += [fmt((r.get("speedup_ort") or {}).get(big), ".1f", suffix="×")]
        cells += [fmt(r["accuracy"], ".2f", 100, "%"), fmt(r["ece"], ".4f")]
        rows.append(cells)
    g = report["goal"]
    verdict = (
        f"Goal (best student artifact >= {GOAL_SPEEDUP:g}x the PyTorch teacher at batch {GOAL_BATCH}, within "
        f"{GOAL_MAX_DROP * 100:g} points): {'MET' if g['met'] else 'NOT MET'}"
    )
    if "best" in g:
        verdict += (
            f" — best: {g['best']} at {g['speedup']:.1f}x the PyTorch teacher"
            + (f" ({g['speedup_cpu']:.1f}x in CPU time)" if g.get("speedup_cpu") else "")
            + (
                f" ({g['speedup_vs_ort_teacher']:.1f}x the teacher in ONNX Runtime)"
                if g["speedup_vs_ort_teacher"]
                else ""
            )
            + f", accuracy {g['accuracy_drop'] * 100:.2f} points below the teacher"
            + ("" if g["within_accuracy"] else f" (over the {GOAL_MAX_DROP * 100:g}-point bound)")
        )
        if g.get("student_accuracy_drop") is not None:
            verdict += f"; the PyTorch student itself is {g['student_accuracy_drop'] * 100:.2f} points below"
    else:
        verdict += f" — {g['reason']}"
    spread = max((r["batch"][b]["spread"] or 0) for r in report["rows"] for b in batches)
    return "\n".join(
        [
            markdown_table(headers, rows),
            "",
            f"Machine: {machine_line(report['machine'])}",
            f"Timing: {report['rounds']} interleaved rounds × min {report['min_time_s']} s per model and batch; "
            f"largest round-to-round p50 spread {spread * 100:.0f}%. "
            f"Accuracy/ECE on {report['eval_samples']} test samples.",
            verdict,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a finished `edgecompress run` directory")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument(
        "--threads", type=int, default=1, help="threads for every runtime (default 1: stable on a shared CPU)"
    )
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per model, batch and round (default 0.3)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--eval-samples", type=int, default=None, help="first N test samples for accuracy (default all)")
    p.add_argument("--no-teacher-onnx", action="store_true", help="skip the teacher-in-ONNX-Runtime row")
    p.add_argument("--json", type=Path, default=None, help="also write the full results as JSON here")
    args = p.parse_args(argv)
    return run_and_print(run_benchmark, render, args)


if __name__ == "__main__":
    sys.exit(main())
