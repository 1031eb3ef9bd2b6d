"""Calibration of a Fashion-MNIST student trained with CE, LS and MbLS, in FP32 and after INT8 (finding, reproduced).

Liu et al. (CVPR 2022, arXiv 2111.15430) report that margin-based label smoothing (MbLS, m = 10, λ = 0.1) gives a
lower ECE than CE and label smoothing (LS) at about the same accuracy; Guo et al. (ICML 2017) that temperature
scaling (TS, one T fitted on val) brings ECE to about 1 %. This script trains the same plain CNN with each loss
through ``edgecompress.distill.train_model`` (selected on val), then, on the test split, reports accuracy, ECE
(15 equal-width bins), adaptive ECE (15 equal-mass bins) and NLL (``edgecompress.calibration.compute_metrics``):

1. FP32 raw; 2. FP32 after TS (T fitted on val, ``fit_temperature``);
3. INT8: T folded into the classifier (``fold_temperature``), exported to ONNX and quantized to INT8 QDQ
   (``edgecompress.export.export_all``, ``onnx:int8``, calibration images from the calib split), run through ONNX
   Runtime (``run_artifact``); ECE with the FP32 temperature;
4. INT8 re-fit: a new T fitted on the INT8 model's own val logits (through the runtime). The issue asks for the
   re-fit when INT8 moved ECE by > 0.5 pt; both are always reported and the table says when it was needed.

Goals checked (and printed as held / not held): ECE <= 1 % after TS; MbLS raw ECE below CE's and LS's with test
accuracy within 0.5 pt of theirs; INT8 ECE (after the re-fit where needed) within 0.5 pt of FP32-after-TS.

    python -m benchmarks.calibration --quick     # ~3 min on 2 shared cores
    python -m benchmarks.calibration             # full: ~15-25 min

Outputs ``calibration.json`` and ``calibration.md`` in ``--out`` (default ``runs/bench/calibration-<mode>``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._experiments import (
    build_cnn,
    fmt_count,
    fmt_mean_std,
    load_fashion,
    machine_info,
    machine_line,
    markdown_table,
    mean_std,
    start,
    write_outputs,
)
from ._experiments import parse_methods as _parse_methods

log = logging.getLogger("calibration")

STUDENT = {"channels": (16, 32, 64), "pool_every": 1}
REFIT_THRESHOLD = 0.005  # re-fit T through the runtime when INT8 moved ECE by more than 0.5 pt
ECE_GOAL = 0.01
ACC_TOLERANCE = 0.005
INT8_ECE_TOLERANCE = 0.005


@dataclass(frozen=True)
class LossVariant:
    """One training loss: CE with optional label smoothing ε and optional MbLS margin m / weight λ."""

    label_smoothing: float = 0.0
    mbls_margin: float | None = None
    mbls_weight: float = 0.1
    description: str = ""


METHODS: dict[str, LossVariant] = {
    "ce": LossVariant(description="cross-entropy"),
    "ls": LossVariant(label_smoothing=0.1, description="label smoothing ε = 0.1"),
    "mbls": LossVariant(mbls_margin=10.0, mbls_weight=0.1, description="MbLS m = 10, λ = 0.1"),
}


@dataclass(frozen=True)
class Budget:
    max_train: int
    max_test: int | None
    epochs: int
    seeds: int


BUDGETS = {
    "quick": Budget(max_train=3000, max_test=2000, epochs=4, seeds=1),
    "full": Budget(max_train=6000, max_test=5000, epochs=10, seeds=2),
}

STAGES = ("fp32", "fp32_ts", "int8", "int8_refit")
STAGE_LABELS = {
    "fp32": "FP32 raw",
    "fp32_ts": "FP32 + TS",
    "int8": "INT8 (FP32 T folded)",
    "int8_refit": "INT8 + T re-fit on val",
}


def parse_methods(text: str) -> list[str]:
    """``--methods`` of this script (see ``_experiments.parse_methods``)."""
    return _parse_methods(text, METHODS, "loss")


def train(method: str, splits: Any, budget: Budget, seed: int, workdir: Path) -> Any:
    """The student trained with ``method``'s loss (best val-accuracy epoch)."""
    from edgecompress.distill import LossConfig, TrainConfig, train_model

    v = METHODS[method]
    cfg = TrainConfig(epochs=budget.epochs, lr=0.05, warmup_epochs=1, label_smoothing=v.label_smoothing, augment=False)
    loss = LossConfig(kind="ce", mbls_margin=v.mbls_margin, mbls_weight=v.mbls_weight)
    model = build_cnn(STUDENT["channels"], STUDENT["pool_every"], splits, seed=1000 * seed + 5)
    return train_model(model, splits, cfg, workdir=workdir, seed=seed, loss=loss, progress=False).model


def evaluate(method: str, model: Any, splits: Any, seed: int, workdir: Path) -> dict[str, Any]:
    """Metrics of every stage (FP32 raw, + TS, INT8, INT8 + re-fit) on test; temperatures fitted on val."""
    from edgecompress.calibration import compute_metrics, fit_temperature, fold_temperature
    from edgecompress.distill import predict_logits
    from edgecompress.export import ExportConfig, ExportContract, export_all, run_artifact

    y_val, y_test = splits.val.y, splits.test.y
    val, test = predict_logits(model, splits.val.x).numpy(), predict_logits(model, splits.test.x).numpy()
    t = fit_temperature(val, y_val)
    stages = {"fp32": compute_metrics(test, y_test), "fp32_ts": compute_metrics(test / t, y_test)}

    folded = fold_temperature(model, t, input_shape=tuple(splits.input_shape))
    contract = ExportContract(input_shape=tuple(splits.input_shape), num_classes=splits.num_classes)
    cfg = ExportConfig(formats=["onnx:int8"], max_accuracy_drop=1.0)  # measure the drop, do not refuse it
    (art,) = export_all(
        folded,
        contract=contract,
        formats=["onnx:int8"],
        calib_x=splits.calib.x,
        out_dir=workdir / "export",
        metadata={"edgecompress.temperature": t},
        cfg=cfg,
        val_x=splits.val.x,
        val_y=y_val,
    )
    q_val, _ = run_artifact(art.runtime, art.model_file, splits.val.x, art.precision)
    q_test, rt_info = run_artifact(art.runtime, art.model_file, splits.test.x, art.precision)
    stages["int8"] = compute_metrics(q_test, y_test)
    t2 = fit_temperature(q_val, y_val)  # on logits already divided by T: the extra factor the INT8 graph needs
    stages["int8_refit"] = compute_metrics(q_test / t2, y_test)
    moved = abs(stages["int8"]["ece"] - stages["fp32_ts"]["ece"])
    return {
        "method": method,
        "seed": seed,
        "temperature": t,
        "int8_refit_factor": t2,
        "int8_ece_moved": moved,
        "refit_needed": moved > REFIT_THRESHOLD,
        "int8_choice": {
            "calibration_method": art.info.get("calibration_method"),
            "keep_head_float": (art.info.get("selection") or {}).get("keep_head_float"),
            "per_channel": art.info.get("per_channel"),
            "chosen_on": art.info.get("selection_data"),
        },
        "int8_runtime": {k: rt_info.get(k) for k in ("runtime", "version", "providers") if k in rt_info},
        "int8_size_bytes": art.size_bytes,
        "stages": stages,
    }


def stage_value(row: dict[str, Any], stage: str, metric: str) -> float:
    return float(row["stages"][stage][metric])


def results_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """One line per (loss, stage): mean ± std over seeds (percent; NLL in nats)."""
    out = []
    for method in methods:
        group = [r for r in rows if r["method"] == method]
        if not group:
            continue
        for stage in STAGES:

            def col(metric: str, scale: float = 100.0, digits: int = 2, stage: str = stage, group: list = group) -> str:
                return fmt_mean_std((stage_value(r, stage, metric) for r in group), scale=scale, digits=digits)

            note = ""
            if stage in ("fp32_ts", "int8"):
                note = "T = " + fmt_mean_std((r["temperature"] for r in group), scale=1.0, digits=3)
            if stage == "int8_refit":
                needed = sum(bool(r["refit_needed"]) for r in group)
                factor = fmt_mean_std((r["int8_refit_factor"] for r in group), scale=1.0, digits=3)
                note = f"extra factor {factor}; needed (ECE moved > 0.5 pt) in {needed}/{len(group)}"
            out.append(
                [
                    method,
                    STAGE_LABELS[stage],
                    col("accuracy"),
                    col("ece"),
                    col("adaptive_ece"),
                    col("nll", 1.0, 4),
                    note,
                ]
            )
    return markdown_table(["loss", "stage", "test acc %", "ECE %", "adaptive ECE %", "NLL", "note"], out)


def _mean(rows: list[dict[str, Any]], method: str, stage: str, metric: str) -> float:
    return mean_std(stage_value(r, stage, metric) for r in rows if r["method"] == method)[0]


def goals(rows: list[dict[str, Any]], methods: list[str]) -> list[tuple[str, bool | None, str]]:
    """The issue's three goals, each (statement, held?, the numbers behind it); None when it cannot be judged."""
    out: list[tuple[str, bool | None, str]] = []
    after = {m: _mean(rows, m, "fp32_ts", "ece") for m in methods}
    out.append(
        (
            "ECE <= 1 % after TS (every loss, mean over seeds)",
            all(v <= ECE_GOAL for v in after.values()),
            ", ".join(f"{m} {100 * v:.2f} %" for m, v in after.items()),
        )
    )
    if {"ce", "ls", "mbls"} <= set(methods):
        raw = {m: _mean(rows, m, "fp32", "ece") for m in ("ce", "ls", "mbls")}
        acc = {m: _mean(rows, m, "fp32", "accuracy") for m in ("ce", "ls", "mbls")}
        lower = raw["mbls"] < raw["ce"] and raw["mbls"] < raw["ls"]
        close = all(abs(acc["mbls"] - acc[m]) <= ACC_TOLERANCE for m in ("ce", "ls"))
        out.append(
            (
                "MbLS raw ECE below CE and LS, accuracy within 0.5 pt",
                lower and close,
                "raw ECE "
                + ", ".join(f"{m} {100 * v:.2f} %" for m, v in raw.items())
                + "; accuracy "
                + ", ".join(f"{m} {100 * v:.2f} %" for m, v in acc.items()),
            )
        )
        ts = {m: _mean(rows, m, "fp32_ts", "ece") for m in ("ce", "ls", "mbls")}
        out.append(
            (
                "(same comparison after TS) MbLS ECE below CE and LS",
                ts["mbls"] < ts["ce"] and ts["mbls"] < ts["ls"],
                ", ".join(f"{m} {100 * v:.2f} %" for m, v in ts.items()),
            )
        )
    else:
        out.append(("MbLS raw ECE below CE and LS, accuracy within 0.5 pt", None, "needs ce, ls and mbls"))
    diffs = []
    for m in methods:
        for r in (r for r in rows if r["method"] == m):
            stage = "int8_refit" if r["refit_needed"] else "int8"
            diffs.append(abs(stage_value(r, stage, "ece") - stage_value(r, "fp32_ts", "ece")))
    out.append(
        (
            "INT8 ECE within 0.5 pt of FP32 after TS (after the re-fit where needed; every run)",
            bool(diffs) and max(diffs) <= INT8_ECE_TOLERANCE,
            f"largest ECE change {100 * max(diffs):.2f} pt over {len(diffs)} runs" if diffs else "no runs",
        )
    )
    return out


def goals_table(items: list[tuple[str, bool | None, str]]) -> str:
    verdict = {True: "holds", False: "does not hold", None: "not judged"}
    return markdown_table(["goal", "verdict", "numbers"], [[g, verdict[ok], why] for g, ok, why in items])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: 3000 train images, 1 seed, 4 epochs")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 2, quick 1)")
    ap.add_argument("--methods", default="all", help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default runs/bench/calibration-<mode>)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared; default 1)")
    args = ap.parse_args(argv)
    methods = start(
        args,
        METHODS,
        what="loss",
        quiet=("edgecompress.distill.trainer", "edgecompress.export", "torch_pruning", "nncf"),
    )
    if methods is None:
        return 2
    mode = "quick" if args.quick else "full"
    budget = BUDGETS[mode]
    if args.seeds is not None:
        budget = Budget(budget.max_train, budget.max_test, budget.epochs, args.seeds)
    out = args.out or Path("runs/bench") / f"calibration-{mode}"
    info = machine_info(args.threads)
    started = time.perf_counter()

    splits = load_fashion(max_train=budget.max_train, max_test=budget.max_test, calib_size=512, seed=0)
    rows = []
    for seed in range(budget.seeds):
        for method in methods:
            wd = out / "work" / f"seed{seed}" / method
            t0 = time.perf_counter()
            model = train(method, splits, budget, seed, wd)
            row = evaluate(method, model, splits, seed, wd)
            rows.append(row)
            s = row["stages"]
            log.info(
                "seed %d %-4s acc %.4f ECE raw %.4f TS %.4f INT8 %.4f refit %.4f (%.0f s)",
                seed,
                method,
                s["fp32"]["accuracy"],
                s["fp32"]["ece"],
                s["fp32_ts"]["ece"],
                s["int8"]["ece"],
                s["int8_refit"]["ece"],
                time.perf_counter() - t0,
            )
    from edgecompress.models import count_macs, count_params

    probe = build_cnn(STUDENT["channels"], STUDENT["pool_every"], splits, seed=0)
    minutes = (time.perf_counter() - started) / 60
    cmd = "python -m benchmarks.calibration" + (" --quick" if args.quick else "")
    if args.seeds is not None:
        cmd += f" --seeds {args.seeds}"
    if args.methods != "all":
        cmd += f" --methods {args.methods}"
    md = "\n\n".join(
        [
            f"`{cmd}` ({mode} mode: student cnn {list(STUDENT['channels'])} "
            f"({fmt_count(count_params(probe))} params, {fmt_count(count_macs(probe, tuple(splits.input_shape)))} "
            f"MACs), {budget.epochs} epochs, train {len(splits.train)}, val {len(splits.val)}, calib "
            f"{len(splits.calib)}, test {len(splits.test)} Fashion-MNIST images; {budget.seeds} seed(s); "
            f"{minutes:.1f} min wall).",
            machine_line(info),
            results_table(rows, methods),
            goals_table(goals(rows, methods)),
        ]
    )
    payload = {"mode": mode, "budget": budget.__dict__, "machine": info, "minutes": minutes, "rows": rows}
    j, m = write_outputs(out, "calibration", payload, md)
    print(md)
    print(f"\nwrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
