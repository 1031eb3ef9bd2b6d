"""TAKD on Fashion-MNIST: does a teacher assistant help a student 58x smaller than its teacher? (finding, reproduced)

Mirzadeh et al. (AAAI 2020, arXiv 1902.03393) report that when the teacher–student gap is large, distilling through a
mid-sized teacher assistant (TA) beats direct KD, and the full path through every intermediate size beats one TA.
This script measures it with the library, plain CNNs in the spirit of the paper's 10 → 8 → 6 → 4 → 2 conv layer path:

* teacher: 10 conv layers (trained once with CE, seed 0, shared by every seed and method — the paper's protocol too);
* students (2 conv layers, >= 50x fewer MACs than the teacher) by five methods, each with several seeds:
  ``scratch`` (CE only), ``kd`` (Hinton KD from the teacher), ``takd-1ta`` (teacher → TA6 → student),
  ``takd-path`` (teacher → TA8 → TA6 → TA4 → student), ``dist`` (DIST, Huang et al. 2022, from the teacher).

Every hop is ``edgecompress.distill.distill_chain`` (each teacher temperature-scaled on val before it teaches,
KD T = 4, α = 0.9); every model is selected on the val split (best val accuracy epoch), T is fitted on val, and the
test split is only evaluated. Reported per method: mean ± std over seeds of test accuracy, ECE before and after
temperature scaling, NLL after TS, and fidelity to the teacher (Stanton et al. 2021: top-1 agreement and mean
KL(p_teacher ‖ p_student) on test, teacher as it taught, z / T). Data: one fixed split (data seed 0) for all seeds,
no augmentation (so the teacher's logits are cached once per sample), seeds vary initialization and shuffling.

    python -m benchmarks.takd --quick            # a few minutes on 2 shared cores
    python -m benchmarks.takd                    # full: ~30 min on 2 shared cores (load ~5-12)

Outputs ``takd.json`` and ``takd.md`` in ``--out`` (default ``runs/bench/takd-<mode>``); training folders under it
are resumable (a killed run continues where it stopped).
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
    aggregate,
    build_cnn,
    fmt_count,
    fmt_mean_std,
    load_fashion,
    machine_info,
    machine_line,
    markdown_table,
    start,
    write_outputs,
)
from ._experiments import parse_methods as _parse_methods

log = logging.getLogger("takd")


@dataclass(frozen=True)
class Member:
    """One plain CNN of the path: conv widths (depth = their count) and a 2x2 max-pool every ``pool_every`` convs."""

    channels: tuple[int, ...]
    pool_every: int = 2

    @property
    def depth(self) -> int:
        return len(self.channels)


MEMBERS: dict[str, Member] = {
    "teacher": Member((16, 32, 48, 64, 64, 96, 96, 128, 128, 192)),
    "ta8": Member((16, 16, 32, 32, 48, 48, 64, 64)),
    "ta6": Member((8, 12, 16, 24, 32, 32)),
    "ta4": Member((8, 8, 16, 16)),
    "student": Member((8, 16), pool_every=1),
}


@dataclass(frozen=True)
class Method:
    """How a student is made: its loss and the assistants between the teacher and it (largest first)."""

    loss: str  # LossConfig.kind
    assistants: tuple[str, ...] = ()
    description: str = ""


METHODS: dict[str, Method] = {
    "scratch": Method("ce", (), "CE on labels only, no teacher"),
    "kd": Method("kd", (), "teacher → student (Hinton KD)"),
    "takd-1ta": Method("kd", ("ta6",), "teacher → TA6 → student"),
    "takd-path": Method("kd", ("ta8", "ta6", "ta4"), "teacher → TA8 → TA6 → TA4 → student"),
    "dist": Method("dist", (), "teacher → student (DIST)"),
}


@dataclass(frozen=True)
class Budget:
    """Data and training budget of one mode."""

    max_train: int
    max_test: int | None
    teacher_epochs: int
    epochs: int
    seeds: int


BUDGETS = {
    "quick": Budget(max_train=3000, max_test=2000, teacher_epochs=5, epochs=5, seeds=2),
    "full": Budget(max_train=4000, max_test=3000, teacher_epochs=10, epochs=10, seeds=3),
}

METRICS = ("accuracy", "val_accuracy", "ece_before", "ece_after", "nll", "agreement", "kl", "temperature", "seconds")


def parse_methods(text: str) -> list[str]:
    """``--methods`` of this script (see ``_experiments.parse_methods``)."""
    return _parse_methods(text, METHODS, "method")


def train_config(epochs: int) -> Any:
    from edgecompress.distill import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=128, lr=0.1, warmup_epochs=1, augment=False)


def train_teacher(splits: Any, budget: Budget, workdir: Path) -> Any:
    """The teacher: 10 conv layers, CE, seed 0, trained once (resumes / reloads from ``workdir/teacher``)."""
    from edgecompress.distill import LossConfig, train_model

    m = MEMBERS["teacher"]
    model = build_cnn(m.channels, m.pool_every, splits, seed=0)
    res = train_model(
        model,
        splits,
        train_config(budget.teacher_epochs),
        workdir=workdir / "teacher",
        seed=0,
        loss=LossConfig(kind="ce"),
        progress=False,
    )
    return res.model


def _student_row(method: str, seed: int, rec: Any) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "accuracy": rec.accuracy,
        "val_accuracy": rec.val_accuracy,
        "ece_before": rec.ece_before,
        "ece_after": rec.ece_after,
        "nll": rec.nll,
        "agreement": rec.fidelity_agreement,
        "kl": rec.fidelity_kl,
        "temperature": rec.temperature,
        "seconds": rec.seconds,
    }


def run_scratch(teacher_ref: Any, splits: Any, budget: Budget, seed: int, workdir: Path) -> dict[str, Any]:
    """The student on labels only; evaluated exactly like a chain member (T on val, fidelity vs teacher z/T)."""
    import torch

    from edgecompress.distill import LossConfig, predict_logits, train_model
    from edgecompress.distill.evaluate import compute_metrics, fidelity, fit_temperature

    m = MEMBERS["student"]
    model = build_cnn(m.channels, m.pool_every, splits, seed=1000 * seed + 1)
    res = train_model(
        model,
        splits,
        train_config(budget.epochs),
        workdir=workdir,
        seed=seed,
        loss=LossConfig(kind="ce"),
        progress=False,
    )
    val, test = predict_logits(res.model, splits.val.x), predict_logits(res.model, splits.test.x)
    y_val, y_test = torch.from_numpy(splits.val.y), torch.from_numpy(splits.test.y)
    t = fit_temperature(val, y_val)
    before, after = compute_metrics(test, y_test), compute_metrics(test / t, y_test)
    fid = fidelity(test, teacher_ref)
    return {
        "method": "scratch",
        "seed": seed,
        "accuracy": before["accuracy"],
        "val_accuracy": res.best_val_accuracy,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll": after["nll"],
        "agreement": fid["agreement"],
        "kl": fid["kl"],
        "temperature": t,
        "seconds": sum(h.get("seconds", 0.0) for h in res.history),
    }


def run_chain(
    method: str, teacher: Any, splits: Any, budget: Budget, seed: int, workdir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One distilled student (and its assistants) through ``distill_chain``; returns its row and the TA records."""
    from edgecompress.distill import DistillConfig, LossConfig, distill_chain

    spec = METHODS[method]
    members = []
    for i, name in enumerate((*spec.assistants, "student")):
        m = MEMBERS[name]
        members.append((name, build_cnn(m.channels, m.pool_every, splits, seed=1000 * seed + 10 * (i + 1) + 7)))
    cfg = DistillConfig(train=train_config(budget.epochs), loss=LossConfig(kind=spec.loss), calibrate_teachers=True)
    result = distill_chain(teacher, members, splits, cfg, workdir=workdir, seed=seed, progress=False)
    tas = [
        {"method": method, "seed": seed, "member": r.name, "accuracy": r.accuracy, "ece_after": r.ece_after}
        for r in result.members[1:-1]
    ]
    return _student_row(method, seed, result.student), tas


def members_table(splits: Any, teacher_acc: float | None, ta_rows: list[dict[str, Any]]) -> str:
    """Params / MACs of each member (and its test accuracy where trained here)."""
    from edgecompress.models import count_macs, count_params

    shape = tuple(splits.input_shape)
    student = MEMBERS["student"]
    s_macs = count_macs(build_cnn(student.channels, student.pool_every, splits, seed=0), shape)
    ta_acc = aggregate(ta_rows, "member", ["accuracy"]) if ta_rows else {}
    rows = []
    for name, m in MEMBERS.items():
        model = build_cnn(m.channels, m.pool_every, splits, seed=0)
        macs = count_macs(model, shape)
        if name == "teacher":
            acc = "n/a" if teacher_acc is None else f"{100 * teacher_acc:.2f}"
        elif name in ta_acc:
            mean, std, n = ta_acc[name]["accuracy"]
            acc = f"{100 * mean:.2f} ± {100 * std:.2f} (n={n}, KD from its predecessor)"
        else:
            acc = "see methods table"
        rows.append(
            [
                name,
                m.depth,
                list(m.channels),
                fmt_count(count_params(model)),
                fmt_count(macs),
                f"{macs / s_macs:.1f}x",
                acc,
            ]
        )
    return markdown_table(["member", "conv layers", "widths", "params", "MACs", "MACs / student", "test acc %"], rows)


def methods_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Mean ± std over seeds per method (percent for accuracy, ECE and agreement)."""
    out = []
    for name in methods:
        group = [r for r in rows if r["method"] == name]
        if not group:
            continue

        def col(key: str, scale: float = 100.0, digits: int = 2, group: list = group) -> str:
            return fmt_mean_std((r.get(key) for r in group), scale=scale, digits=digits)

        out.append(
            [
                name,
                METHODS[name].description,
                len(group),
                col("accuracy"),
                col("ece_before"),
                col("ece_after"),
                col("nll", 1.0, 3),
                col("agreement"),
                col("kl", 1.0, 3),
            ]
        )
    headers = ["method", "path", "seeds", "test acc %", "ECE % (raw)", "ECE % (after TS)", "NLL (after TS)"]
    return markdown_table([*headers, "agreement w/ teacher %", "KL(teacher‖student)"], out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few minutes: 2000 train images, 2 seeds, few epochs")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 2)")
    ap.add_argument("--methods", default="all", help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default runs/bench/takd-<mode>)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared; default 1)")
    args = ap.parse_args(argv)
    methods = start(args, METHODS, what="method", quiet=("edgecompress.distill.trainer", "torch_pruning"))
    if methods is None:
        return 2
    import torch

    mode = "quick" if args.quick else "full"
    budget = BUDGETS[mode]
    if args.seeds is not None:
        budget = Budget(budget.max_train, budget.max_test, budget.teacher_epochs, budget.epochs, args.seeds)
    out = args.out or Path("runs/bench") / f"takd-{mode}"
    info = machine_info(args.threads)
    started = time.perf_counter()

    splits = load_fashion(max_train=budget.max_train, max_test=budget.max_test, calib_size=0, seed=0)
    log.info("data: train %d, val %d, test %d", len(splits.train), len(splits.val), len(splits.test))
    teacher = train_teacher(splits, budget, out / "work")
    from edgecompress.distill import predict_logits
    from edgecompress.distill.evaluate import compute_metrics, fit_temperature

    t_val, t_test = predict_logits(teacher, splits.val.x), predict_logits(teacher, splits.test.x)
    t_temp = fit_temperature(t_val, torch.from_numpy(splits.val.y))
    teacher_metrics = compute_metrics(t_test, torch.from_numpy(splits.test.y))
    teacher_ref = t_test / t_temp  # the teacher as it teaches
    log.info("teacher test acc %.4f (T = %.3f)", teacher_metrics["accuracy"], t_temp)

    rows: list[dict[str, Any]] = []
    ta_rows: list[dict[str, Any]] = []
    cmd = "python -m benchmarks.takd" + (" --quick" if args.quick else "")
    if args.seeds is not None:
        cmd += f" --seeds {args.seeds}"
    if args.methods != "all":
        cmd += f" --methods {args.methods}"

    def report(done: bool) -> tuple[str, Path, Path]:
        """Write takd.json / takd.md; called after every student, so a cut-off run leaves a labelled partial table."""
        minutes = (time.perf_counter() - started) / 60
        status = "" if done else f"PARTIAL ({len(rows)} of {budget.seeds * len(methods)} students so far), "
        md = "\n\n".join(
            [
                f"`{cmd}` ({status}{mode} mode: train {len(splits.train)}, val {len(splits.val)}, test "
                f"{len(splits.test)} Fashion-MNIST images; teacher {budget.teacher_epochs} epochs, every other model "
                f"{budget.epochs} epochs; {budget.seeds} seeds; {minutes:.1f} min wall in this invocation).",
                machine_line(info),
                methods_table(rows, methods),
                members_table(splits, teacher_metrics["accuracy"], ta_rows),
                f"Teacher (trained once, seed 0, shared by all seeds and methods): test acc "
                f"{100 * teacher_metrics['accuracy']:.2f} %, ECE {100 * teacher_metrics['ece']:.2f} % raw, "
                f"T = {t_temp:.3f}.",
            ]
        )
        payload = {
            "mode": mode,
            "complete": done,
            "budget": budget.__dict__,
            "machine": info,
            "minutes": minutes,
            "teacher": {**teacher_metrics, "temperature": t_temp},
            "rows": rows,
            "assistants": ta_rows,
            "summary": {k: {m: list(v) for m, v in d.items()} for k, d in aggregate(rows, "method", METRICS).items()},
        }
        return (md, *write_outputs(out, "takd", payload, md))

    for seed in range(budget.seeds):
        for method in methods:
            wd = out / "work" / f"seed{seed}" / method
            t0 = time.perf_counter()
            if method == "scratch":
                row = run_scratch(teacher_ref, splits, budget, seed, wd)
            else:
                row, tas = run_chain(method, teacher, splits, budget, seed, wd)
                ta_rows += tas
            rows.append(row)
            log.info(
                "seed %d %-9s test acc %.4f ECE(TS) %.4f agree %.4f (%.0f s)",
                seed,
                method,
                row["accuracy"],
                row["ece_after"],
                row["agreement"],
                time.perf_counter() - t0,
            )
            report(done=False)
    md, j, m = report(done=True)
    print(md)
    print(f"\nwrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
