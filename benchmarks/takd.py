"""TAKD on Fashion-MNIST: does a teacher assistant help a student much smaller than its teacher? (two gaps, auto)

Mirzadeh et al. (AAAI 2020, arXiv 1902.03393) report that when the teacher–student gap is large, distilling through a
mid-sized teacher assistant (TA) beats direct KD, and the full path through every intermediate size beats one TA.
This script measures it with the library, plain CNNs in the spirit of the paper's 10 → 8 → 6 → 4 → 2 conv layer path,
for the same 2-conv student (1.4k params) at two gaps (``GAPS``):

* ``58x``: teacher = 10 conv layers (CE, trained once, seed 0); one TA = TA6; path = TA8 → TA6 → TA4;
* ``22x``: teacher = TA8 (itself distilled from the 10-conv teacher: the path's first TA); one TA = TA4;
  path = TA6 → TA4 (so the path student is the same as at 58x).

Methods per gap: ``scratch`` (CE only), ``kd`` (Hinton KD from the gap's teacher), ``takd-1ta``, ``takd-path``,
``dist`` (DIST, Huang et al. 2022) and ``auto``, the pipeline's decision rule: short seeded trials (1/4 of the epochs)
of each candidate, the best val accuracy wins, and auto's test number is the chosen method's full-budget student of
that seed (no training beyond the trials). Protocol: the teacher and every assistant are trained once (seed 0) and
shared by all seeds — like the teacher in the paper's protocol — each temperature-scaled on val before it teaches
(z / T, the library's ``calibrate_teachers``), its logits on the train split computed once (no augmentation); the
students are trained per seed (seeds vary initialization and batch order; one fixed data split). Every KD hop,
assistants included, uses the same (T, α) (``--kd-temperature`` / ``--kd-alpha``, tuned by
``benchmarks/kd_diagnosis.py``); DIST keeps T = 4, α = 0.9. Every model is selected on the val split (best val
accuracy epoch), T is fitted on val, the test split is only evaluated. Reported: mean ± std over seeds of test
accuracy, ECE before / after TS, NLL after TS, fidelity to the gap's teacher (Stanton et al. 2021: top-1 agreement,
KL(p_teacher ‖ p_student) on test, teacher as it taught), and the raw per-seed numbers.

    python -m benchmarks.takd --quick                 # smoke run, a few minutes
    python -m benchmarks.takd --budget converge       # 10,800 train images, students 15 epochs, 3 seeds (~45 min)
    python -m benchmarks.takd --budget converge --epochs 30 --gaps 58x   # the same teacher/assistants, longer students

Outputs ``takd.json`` and ``takd.md`` in ``--out`` (default ``runs/bench/takd-<budget>``), rewritten after every
student; every training folder is resumable (a killed run continues where it stopped).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError

from ._experiments import (
    aggregate,
    build_cnn,
    fmt_count,
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
    """How a student is made: its loss and which assistants of the gap sit between the teacher and it."""

    loss: str  # LossConfig.kind
    assistants: str = "none"  # none | one (the gap's single TA) | path (every intermediate size)


METHODS: dict[str, Method] = {
    "scratch": Method("ce"),
    "kd": Method("kd"),
    "takd-1ta": Method("kd", "one"),
    "takd-path": Method("kd", "path"),
    "dist": Method("dist"),
}


@dataclass(frozen=True)
class Gap:
    """A teacher/student gap: the teacher's lineage (a distilled TA8 can be a teacher), its single TA and its path."""

    teacher: tuple[str, ...]
    one_ta: tuple[str, ...]
    path: tuple[str, ...]

    def lineage(self, method: str) -> tuple[str, ...]:
        """The members a student of ``method`` learns through, teacher first (empty for scratch)."""
        kind = METHODS[method]
        if kind.loss == "ce":
            return ()
        return self.teacher + {"none": (), "one": self.one_ta, "path": self.path}[kind.assistants]

    def describe(self, method: str) -> str:
        if METHODS[method].loss == "ce":
            return "CE on labels only, no teacher"
        lineage = self.lineage(method)[len(self.teacher) - 1 :]  # from the gap's teacher on
        names = [n.upper() if n.startswith("ta") else n for n in (*lineage, "student")]
        return " → ".join(names) + (" (DIST)" if METHODS[method].loss == "dist" else "")


# The same 2-conv student at two gaps: the 10-conv teacher (58x its MACs) and TA8 (22x; itself distilled from the
# teacher, the first TA of the path). Single TAs sit near the geometric middle of each gap (in MACs).
GAPS: dict[str, Gap] = {
    "58x": Gap(("teacher",), ("ta6",), ("ta8", "ta6", "ta4")),
    "22x": Gap(("teacher", "ta8"), ("ta4",), ("ta6", "ta4")),
}
DIST_LOSS = {"temperature": 4.0, "alpha": 0.9}  # DIST as in the earlier table (it was best there), every budget
KD_SETTING = (2.0, 0.9)  # (T, α) of every KD hop (assistants included): the best of benchmarks/kd_diagnosis.py


@dataclass(frozen=True)
class Budget:
    """Data and training budget of one mode: the teacher and the assistants train ``teacher_epochs``, students
    ``epochs`` (auto's trials a quarter of that)."""

    max_train: int
    max_test: int | None
    teacher_epochs: int
    epochs: int
    seeds: int


BUDGETS = {
    "quick": Budget(max_train=3000, max_test=2000, teacher_epochs=5, epochs=5, seeds=2),
    "full": Budget(max_train=4000, max_test=3000, teacher_epochs=10, epochs=10, seeds=3),
    "converge": Budget(max_train=12000, max_test=None, teacher_epochs=15, epochs=15, seeds=3),
}


def parse_methods(text: str) -> list[str]:
    """``--methods`` of this script (see ``_experiments.parse_methods``)."""
    return _parse_methods(text, METHODS, "method")


def train_config(epochs: int, **overrides: Any) -> Any:
    """SGD, lr 0.1, cosine, 1 warm-up epoch (at most ``epochs``), batch 128, no augmentation; ``overrides`` win."""
    from edgecompress.distill import TrainConfig

    base: dict[str, Any] = {"epochs": epochs, "batch_size": 128, "lr": 0.1, "warmup_epochs": min(1, epochs)}
    return TrainConfig(**{**base, "augment": False, **overrides})


def train_teacher(splits: Any, epochs: int, workdir: Path, *, label_smoothing: float = 0.0) -> Any:
    """The teacher: 10 conv layers, CE (optionally label-smoothed), seed 0, trained once (resumes / reloads)."""
    from edgecompress.distill import LossConfig, train_model

    m = MEMBERS["teacher"]
    model = build_cnn(m.channels, m.pool_every, splits, seed=0)
    cfg = train_config(epochs, label_smoothing=label_smoothing) if label_smoothing else train_config(epochs)
    res = train_model(model, splits, cfg, workdir=workdir, seed=0, loss=LossConfig(kind="ce"), progress=False)
    return res.model


def kd_loss(method: str, kd_t: float, kd_alpha: float) -> Any:
    """The loss of ``method``: CE, the tuned KD setting (every KD hop, assistants included) or DIST."""
    from edgecompress.distill import LossConfig

    kind = METHODS[method].loss
    if kind == "ce":
        return LossConfig(kind="ce")
    if kind == "dist":
        return LossConfig(kind="dist", **DIST_LOSS)
    return LossConfig(kind="kd", temperature=kd_t, alpha=kd_alpha)


def _folder(lineage: tuple[str, ...], loss: str) -> str:
    return f"{loss}-from-" + "-".join(lineage) if lineage else loss


class Teachers:
    """The teacher and every assistant any gap needs, each trained once (seed 0) and cached as it teaches."""

    def __init__(self, splits: Any, budget: Budget, workdir: Path, kd_loss_cfg: Any) -> None:
        from ._experiments import as_teacher

        self.splits, self.budget, self.workdir, self.loss = splits, budget, workdir, kd_loss_cfg
        self.ta_rows: list[dict[str, Any]] = []
        self.by_lineage = {
            ("teacher",): as_teacher(
                "teacher", train_teacher(splits, budget.teacher_epochs, workdir / "teacher"), splits
            )
        }

    def get(self, lineage: tuple[str, ...]) -> Any:
        """The member at the end of ``lineage`` (trained by KD from its predecessor, which is made first)."""
        from ._experiments import as_teacher, train_student

        if lineage not in self.by_lineage:
            parent = self.get(lineage[:-1])
            m = MEMBERS[lineage[-1]]
            model = build_cnn(m.channels, m.pool_every, self.splits, seed=7 + len(lineage))
            t0 = time.perf_counter()
            row, model = train_student(
                model,
                self.splits,
                train_config(self.budget.teacher_epochs),
                workdir=self.workdir / "assistants" / "-".join(lineage),
                seed=0,
                loss=self.loss,
                teacher=parent,
                reference=self.by_lineage[("teacher",)].test_logits,
            )
            self.ta_rows.append({"member": " → ".join(lineage), **row})
            self.by_lineage[lineage] = as_teacher(lineage[-1], model, self.splits)
            log.info(
                "assistant %s: test acc %.4f (%.0f s)", " → ".join(lineage), row["accuracy"], time.perf_counter() - t0
            )
        return self.by_lineage[lineage]


def run_student(
    method: str, gap: Gap, teachers: Teachers, seed: int, epochs: int, kd: tuple[float, float], workdir: Path
) -> dict[str, Any]:
    """One 2-conv student of ``method`` at ``gap`` (resumable; a (loss, lineage) already trained is reloaded)."""
    from ._experiments import train_student

    lineage = gap.lineage(method)
    loss = kd_loss(method, *kd)
    m = MEMBERS["student"]
    model = build_cnn(m.channels, m.pool_every, teachers.splits, seed=1000 * seed + 1)
    row, _ = train_student(
        model,
        teachers.splits,
        train_config(epochs),
        workdir=workdir / f"seed{seed}" / _folder(lineage, loss.kind),
        seed=seed,
        loss=loss,
        teacher=teachers.get(lineage) if lineage else None,
        reference=teachers.get(gap.teacher).test_logits,
    )
    return {"method": method, **row}


def members_table(splits: Any, teachers: Teachers) -> str:
    """Params / MACs of each member and the test accuracy of each trained teacher / assistant (seed 0)."""
    from edgecompress.models import count_macs, count_params

    shape = tuple(splits.input_shape)
    student = MEMBERS["student"]
    s_macs = count_macs(build_cnn(student.channels, student.pool_every, splits, seed=0), shape)
    rows = []
    for name, m in MEMBERS.items():
        model = build_cnn(m.channels, m.pool_every, splits, seed=0)
        macs = count_macs(model, shape)
        accs = [
            f"{' → '.join(k)}: {100 * t.accuracy:.2f} (T={t.temperature:.2f})"
            for k, t in teachers.by_lineage.items()
            if k[-1] == name
        ]
        rows.append(
            [
                name,
                m.depth,
                list(m.channels),
                fmt_count(count_params(model)),
                fmt_count(macs),
                f"{macs / s_macs:.1f}x",
                "; ".join(accs) or "see methods table",
            ]
        )
    return markdown_table(
        [
            "member",
            "conv layers",
            "widths",
            "params",
            "MACs",
            "MACs / student",
            "test acc % (trained once, seed 0; T fitted on val)",
        ],
        rows,
    )


def gap_summary(rows: list[dict[str, Any]], picks: dict[int, str]) -> dict[str, Any]:
    """Best method on test, auto's mean and picks, 'auto within one std of the best', TAKD ordering."""
    agg = aggregate(rows, "method", ["accuracy"])
    means = {k: v["accuracy"][0] for k, v in agg.items() if k != "auto"}
    if not means:
        return {}
    best = max(means, key=means.__getitem__)
    out: dict[str, Any] = {"best": best, "best_mean": means[best], "best_std": agg[best]["accuracy"][1], "picks": picks}
    if "auto" in agg:
        auto = agg["auto"]["accuracy"][0]
        out.update(auto_mean=auto, auto_within_one_std=auto >= means[best] - agg[best]["accuracy"][1] - 1e-9)
    if all(k in means for k in ("takd-path", "takd-1ta", "kd")):
        out["takd_order_path_gt_1ta_gt_kd"] = means["takd-path"] > means["takd-1ta"] > means["kd"]
    return out


def gap_markdown(
    name: str, gap: Gap, rows: list[dict[str, Any]], trials: list[dict[str, Any]], methods: list[str]
) -> str:
    """Tables of one gap: mean ± std per method (+ auto), raw per-seed numbers, the trials and auto's picks."""
    from ._experiments import RESULT_COLUMNS, RESULT_HEADERS, per_seed_table, summary_rows

    names = [*methods, "auto"]
    body = summary_rows(rows, "method", names, RESULT_COLUMNS)
    for r in body:
        r.insert(1, gap.describe(r[0]) if r[0] != "auto" else "trials at 1/4 epochs, best val wins")
    picks = {int(t["seed"]): t["picked"] for t in trials if t.get("picked")}
    summ = gap_summary(rows, picks)
    trial_rows = [
        [
            t["seed"],
            *(f"{100 * t['val'][m]:.2f}" if m in t["val"] else "—" for m in methods),
            t.get("picked", "—"),
            f"{t['seconds']:.0f}",
        ]
        for t in trials
    ]
    parts = [
        f"#### Gap {name}: "
        + (
            "the 10-conv teacher"
            if len(gap.teacher) == 1
            else f"{gap.teacher[-1].upper()} as the teacher (distilled: {' → '.join(gap.teacher)})"
        ),
        markdown_table(["method", "path", "seeds", *RESULT_HEADERS], body),
        per_seed_table(rows, "method", names),
        markdown_table(["seed", *(f"{m} trial val %" for m in methods), "auto picked", "trials s"], trial_rows),
    ]
    if summ:
        line = f"Best on test: **{summ['best']}** ({100 * summ['best_mean']:.2f} ± {100 * summ['best_std']:.2f} %)"
        if "auto_mean" in summ:
            line += (
                f"; auto {100 * summ['auto_mean']:.2f} % — within one std of the best: "
                f"{'yes' if summ['auto_within_one_std'] else 'no'}"
            )
        if "takd_order_path_gt_1ta_gt_kd" in summ:
            line += f"; TAKD ordering path > 1 TA > KD: {'yes' if summ['takd_order_path_gt_1ta_gt_kd'] else 'no'}"
        parts.append(line + ".")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=list(BUDGETS), default="full", help="data / epochs / seeds (see BUDGETS)")
    ap.add_argument("--quick", action="store_true", help="same as --budget quick")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the budget's)")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the budget's; same assistants)")
    ap.add_argument("--methods", default="all", help=f"comma-separated subset of: {', '.join(METHODS)}")
    ap.add_argument("--gaps", default="all", help=f"comma-separated subset of: {', '.join(GAPS)}")
    ap.add_argument("--kd-temperature", type=float, default=KD_SETTING[0], help="T of every KD hop")
    ap.add_argument("--kd-alpha", type=float, default=KD_SETTING[1], help="α of every KD hop")
    ap.add_argument("--no-auto", action="store_true", help="skip the auto trials")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default runs/bench/takd-<budget>)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared; default 1)")
    args = ap.parse_args(argv)
    methods = start(args, METHODS, what="method", quiet=("edgecompress.distill.trainer", "torch_pruning"))
    if methods is None:
        return 2
    try:
        gaps = _parse_methods(args.gaps, GAPS, "gap")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mode = "quick" if args.quick else args.budget
    budget = BUDGETS[mode]
    epochs = args.epochs or budget.epochs
    budget = Budget(budget.max_train, budget.max_test, budget.teacher_epochs, epochs, args.seeds or budget.seeds)
    stem = "takd" if args.epochs is None else f"takd-{epochs}ep"  # other student epochs: their own result files
    stem += "" if args.gaps == "all" else "-" + "-".join(gaps)
    kd = (args.kd_temperature, args.kd_alpha)
    out = args.out or Path("runs/bench") / f"takd-{mode}"
    info, started = machine_info(args.threads), time.perf_counter()
    trial_epochs = max(1, round(budget.epochs / 4))

    splits = load_fashion(max_train=budget.max_train, max_test=budget.max_test, calib_size=0, seed=0)
    log.info("data: train %d, val %d, test %d", len(splits.train), len(splits.val), len(splits.test))
    teachers = Teachers(splits, budget, out / "work", kd_loss("kd", *kd))
    for g in gaps:  # every assistant first (once), so the students' cost is comparable
        for method in methods:
            teachers.get(GAPS[g].lineage(method) or ("teacher",))
    rows: dict[str, list[dict[str, Any]]] = {g: [] for g in gaps}
    trials: dict[str, list[dict[str, Any]]] = {g: [] for g in gaps}
    cmd = f"python -m benchmarks.takd --budget {mode}" + (f" --seeds {args.seeds}" if args.seeds else "")
    cmd += (f" --epochs {args.epochs}" if args.epochs else "") + (f" --gaps {args.gaps}" if args.gaps != "all" else "")
    cmd += f" --kd-temperature {kd[0]:g} --kd-alpha {kd[1]:g}"
    cmd += (f" --methods {args.methods}" if args.methods != "all" else "") + (" --no-auto" if args.no_auto else "")

    def report(done: bool) -> tuple[str, Path, Path]:
        """Write takd.json / takd.md; called after every student, so a cut-off run leaves a labelled partial table."""
        minutes = (time.perf_counter() - started) / 60
        n = sum(len(v) for v in rows.values())
        status = "" if done else f"PARTIAL ({n} student rows so far), "
        md = "\n\n".join(
            [
                f"`{cmd}` ({status}{mode} budget: train {len(splits.train)}, val {len(splits.val)}, test "
                f"{len(splits.test)} Fashion-MNIST images; teacher {budget.teacher_epochs} epochs, assistants "
                f"{budget.teacher_epochs}, students {budget.epochs} epochs, auto's trials {trial_epochs}; "
                f"KD T = {kd[0]:g}, α = {kd[1]:g} on every KD hop; DIST T = {DIST_LOSS['temperature']:g}, "
                f"α = {DIST_LOSS['alpha']:g}; {budget.seeds} seeds; {minutes:.1f} min wall in this invocation).",
                machine_line(info),
                *(gap_markdown(g, GAPS[g], rows[g], trials[g], methods) for g in gaps),
                members_table(splits, teachers),
            ]
        )
        payload = {
            "budget": {"name": mode, **budget.__dict__, "trial_epochs": trial_epochs},
            "complete": done,
            "kd": {"temperature": kd[0], "alpha": kd[1]},
            "dist": DIST_LOSS,
            "machine": info,
            "minutes": minutes,
            "gaps": {
                g: {
                    "teacher": GAPS[g].teacher,
                    "one_ta": GAPS[g].one_ta,
                    "path": GAPS[g].path,
                    "rows": rows[g],
                    "trials": trials[g],
                    "summary": gap_summary(
                        rows[g], {int(t["seed"]): t["picked"] for t in trials[g] if t.get("picked")}
                    ),
                }
                for g in gaps
            },
            "assistants": teachers.ta_rows,
        }
        return (md, *write_outputs(out, stem, payload, md))

    for seed in range(budget.seeds):
        for g in gaps:
            gap = GAPS[g]
            if not args.no_auto:  # the pipeline's rule: short seeded trials of each candidate, best val accuracy wins
                t0, val = time.perf_counter(), {}
                for method in methods:
                    val[method] = run_student(
                        method, gap, teachers, seed, trial_epochs, kd, out / "work" / f"trials-{trial_epochs}ep"
                    )["val_accuracy"]
                picked = max(methods, key=lambda m: val[m])  # first max on ties (scratch first)
                trials[g].append({"seed": seed, "val": val, "picked": picked, "seconds": time.perf_counter() - t0})
            for method in methods:
                t0 = time.perf_counter()
                row = run_student(method, gap, teachers, seed, budget.epochs, kd, out / "work" / f"students-{epochs}ep")
                rows[g].append(row)
                log.info(
                    "gap %s seed %d %-9s test acc %.4f ECE(TS) %.4f (%.0f s)",
                    g,
                    seed,
                    method,
                    row["accuracy"],
                    row["ece_after"],
                    time.perf_counter() - t0,
                )
                report(done=False)
            if not args.no_auto:
                chosen = next(r for r in rows[g] if r["seed"] == seed and r["method"] == trials[g][-1]["picked"])
                rows[g].append({**chosen, "method": "auto", "picked": chosen["method"]})
                report(done=False)
    md, j, m = report(done=True)
    print(md)
    print(f"\nwrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
