"""Why does Hinton KD fall below training on labels for a 1.4k-parameter student? (diagnosis, seeds mean ± std)

At the earlier TAKD budget (3,600 images, 10 epochs) every KD-family student of ``benchmarks/takd.py`` was 4–6 points
below the same 2-conv student trained on labels. This script varies one thing at a time, at a budget where the
student converges, with the teacher trained once (seed 0) and its logits cached once (no augmentation):

* phase A (the grid): ``scratch`` (CE on labels) and Hinton KD over T ∈ {1, 2, 4} × α ∈ {0.5, 0.9} from the teacher
  temperature-scaled on val (the library's ``calibrate_teachers: true``), plus KD *without* the T² factor at
  T ∈ {2, 4}, α = 0.9;
* phase B (at the grid's best KD setting by mean **val** accuracy): the raw (uncalibrated) teacher; a label-smoothed
  teacher (LS 0.1, also trained once) distilled at T = 1 and T = 4 (the best α); twice the epochs, lr 0.03 and the
  learning rate chosen by the range test (``lr: auto``, one seed) instead of 0.1, each also for scratch.

The library's KD loss is ``(1 − α)·CE + α·T²·KL`` with no switch for the T². "No T²" — ``(1 − α)·CE + α·KL`` — is
trained exactly through the library loss: with α' = α / (α + (1 − α)·T²) the library loss is c·(wanted loss),
c = (1 − α') / (1 − α); SGD (momentum, decoupled clip) on c·L with learning rate η / c, weight decay λ·c and
gradient-clip norm g·c takes the same steps as on L with η, λ, g (see ``no_t2_variant``).

    python -m benchmarks.kd_diagnosis --quick    # a smoke run: tiny data, 1 seed, ~2 min
    python -m benchmarks.kd_diagnosis            # 3 seeds, 10,800 train images, student 15 epochs (~60 min, 1 thread)

The teachers are shared with ``python -m benchmarks.takd --budget converge`` (same data, same folder). Outputs
``kd_diagnosis.json`` / ``.md`` in ``--out`` (default ``runs/bench/kd-diagnosis[-quick]``), rewritten after every
student; every training folder resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ._experiments import (
    RESULT_COLUMNS,
    RESULT_HEADERS,
    Teacher,
    as_teacher,
    build_cnn,
    load_fashion,
    machine_info,
    machine_line,
    markdown_table,
    mean_std,
    per_seed_table,
    summary_rows,
    train_student,
    write_outputs,
)
from .takd import BUDGETS, MEMBERS, Budget, train_config, train_teacher

log = logging.getLogger("kd_diagnosis")

QUICK = Budget(max_train=1500, max_test=1000, teacher_epochs=2, epochs=3, seeds=1)


@dataclass(frozen=True)
class Setting:
    """One way to train the 2-conv student; everything not named here is the same for every setting."""

    name: str
    loss: str = "kd"  # ce | kd
    temperature: float = 4.0
    alpha: float = 0.9
    teacher: str = "ts"  # ts: CE teacher, temperature-scaled on val; raw: CE teacher as is; ls: LS-0.1 teacher, TS
    t2: bool = True  # the T² factor on the KL term (the library loss); False: trained through ``no_t2_variant``
    lr: float | str = 0.1
    epochs_factor: int = 1
    phase: str = "A"
    max_seeds: int | None = None  # run only the first seeds (a probe whose result decides whether more are needed)


def kd(temperature: float, alpha: float, **kw: Any) -> Setting:
    """A KD setting named by what differs from the grid (teacher, T², lr, epochs)."""
    tags = {"raw": " raw teacher", "ls": " LS teacher", "ts": ""}[kw.get("teacher", "ts")]
    tags += "" if kw.get("t2", True) else " no-T²"
    tags += f" lr {kw['lr']}" if "lr" in kw else ""
    tags += f" {kw['epochs_factor']}x epochs" if kw.get("epochs_factor", 1) > 1 else ""
    return Setting(f"kd T={temperature:g} α={alpha:g}{tags}", "kd", temperature, alpha, **kw)


def grid() -> list[Setting]:
    """Phase A: scratch, KD over T × α (calibrated teacher, with T²), KD without T² at T ∈ {2, 4}, α = 0.9."""
    out = [Setting("scratch", "ce")]
    out += [kd(t, a) for t in (1.0, 2.0, 4.0) for a in (0.5, 0.9)]
    out += [kd(t, 0.9, t2=False) for t in (2.0, 4.0)]
    return out


def follow_up(best: Setting) -> list[Setting]:
    """Phase B around the grid's best KD setting (by mean val accuracy): raw teacher, LS teacher at T = 1 and T = 4,
    twice the epochs, lr 0.03, lr auto (the last three also for scratch; lr auto is one seed: a range test capped at
    0.1 reproduces the lr-0.1 run exactly, so more seeds would only repeat it)."""
    t, a = best.temperature, best.alpha
    cands = [
        kd(t, a, teacher="raw", phase="B"),
        kd(1.0, a, teacher="ls", phase="B"),
        kd(4.0, a, teacher="ls", phase="B"),
        Setting("scratch 2x epochs", "ce", epochs_factor=2, phase="B"),
        kd(t, a, epochs_factor=2, phase="B"),
        Setting("scratch lr 0.03", "ce", lr=0.03, phase="B"),
        kd(t, a, lr=0.03, phase="B"),
        Setting("scratch lr auto", "ce", lr="auto", phase="B", max_seeds=1),
        kd(t, a, lr="auto", phase="B", max_seeds=1),
    ]
    seen: set[str] = set()
    return [s for s in cands if not (s.name in seen or seen.add(s.name))]


def no_t2_variant(temperature: float, alpha: float, cfg: Any) -> tuple[float, Any, float]:
    """(α', train config, c) such that the library loss (1 − α')·CE + α'·T²·KL equals c·((1 − α)·CE + α·KL).

    Training c·L with lr η/c, weight decay λ·c and clip norm g·c takes exactly the steps SGD takes on L with η, λ, g:
    the clipped gradient scales by c, weight decay adds λ·c·w = c·(λ·w), and the step is (η/c)·c·(...).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"no-T² needs 0 < alpha < 1, got {alpha}")
    a2 = alpha / (alpha + (1 - alpha) * temperature**2)
    c = (1 - a2) / (1 - alpha)
    update: dict[str, Any] = {"lr": float(cfg.lr) / c, "weight_decay": cfg.weight_decay * c}
    if cfg.grad_clip is not None:
        update["grad_clip"] = cfg.grad_clip * c
    return a2, cfg.model_copy(update=update), c


def student_config(s: Setting, budget: Budget) -> tuple[Any, Any]:
    """(LossConfig, TrainConfig) of a setting."""
    from edgecompress.distill import LossConfig

    cfg = train_config(budget.epochs * s.epochs_factor, lr=s.lr)
    if s.loss == "ce":
        return LossConfig(kind="ce"), cfg
    alpha = s.alpha
    if not s.t2:
        alpha, cfg, _ = no_t2_variant(s.temperature, s.alpha, cfg)
    return LossConfig(kind="kd", temperature=s.temperature, alpha=alpha), cfg


def run_setting(s: Setting, teachers: dict[str, Teacher], splits: Any, budget: Budget, seed: int, out: Path) -> dict:
    """One student of one setting and seed (resumes from ``out/work/<setting>/seed<seed>``)."""
    m = MEMBERS["student"]
    model = build_cnn(m.channels, m.pool_every, splits, seed=1000 * seed + 1)
    loss, cfg = student_config(s, budget)
    folder = s.name.replace(" ", "_").replace("=", "").replace("α", "a").replace("²", "2")
    row, _ = train_student(
        model,
        splits,
        cfg,
        workdir=out / "work" / folder / f"seed{seed}",
        seed=seed,
        loss=loss,
        teacher=None if s.loss == "ce" else teachers[s.teacher],
        reference=teachers["ts"].test_logits,
    )
    return {"setting": s.name, "phase": s.phase, **row}


def best_kd(rows: list[dict[str, Any]], settings: list[Setting]) -> Setting:
    """The phase-A KD setting (with T², calibrated teacher) of the highest mean val accuracy."""
    cands = [s for s in settings if s.phase == "A" and s.loss == "kd" and s.t2]
    return max(cands, key=lambda s: mean_std(r["val_accuracy"] for r in rows if r["setting"] == s.name)[0])


def curve_table(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Mean val accuracy % at 25 / 50 / 75 / 100 % of each setting's epochs: has the student converged?"""
    out = []
    for name in names:
        curves = [r["val_curve"] for r in rows if r["setting"] == name and r.get("val_curve")]
        if curves:
            n = min(len(c) for c in curves)
            cells = [
                f"{100 * mean_std(c[max(0, round(q * n) - 1)] for c in curves)[0]:.2f}" for q in (0.25, 0.5, 0.75, 1)
            ]
            out.append([name, n, *cells])
    return markdown_table(["setting", "epochs", "val % at 1/4", "1/2", "3/4", "end"], out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 seed, a few epochs")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default runs/bench/kd-diagnosis[-quick])")
    ap.add_argument("--teachers", type=Path, default=None, help="teachers' folder (default: takd converge's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared; default 1)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("edgecompress.distill.trainer").setLevel(logging.WARNING)
    if args.seeds is not None and args.seeds < 1:
        print(f"error: --seeds {args.seeds} is below 1 — fix: give at least one seed", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else BUDGETS["converge"]
    budget = replace(budget, seeds=args.seeds or budget.seeds)
    out = args.out or Path("runs/bench") / ("kd-diagnosis-quick" if args.quick else "kd-diagnosis")
    tdir = args.teachers or (out / "work" if args.quick else Path("runs/bench/takd-converge/work"))
    info, started = machine_info(args.threads), time.perf_counter()

    splits = load_fashion(max_train=budget.max_train, max_test=budget.max_test, calib_size=0, seed=0)
    ce = train_teacher(splits, budget.teacher_epochs, tdir / "teacher")
    ts = as_teacher("teacher", ce, splits)
    raw = replace(ts, name="teacher (raw)", module=ce, temperature=1.0)  # the same logits, times T
    raw.train_logits, raw.test_logits = ts.train_logits * ts.temperature, ts.test_logits * ts.temperature
    teachers = {"ts": ts, "raw": raw}
    cmd = "python -m benchmarks.kd_diagnosis" + (" --quick" if args.quick else "")
    rows: list[dict[str, Any]] = []
    settings = grid()

    def report(done: bool) -> tuple[Path, Path]:
        names = [s.name for s in settings]
        minutes = (time.perf_counter() - started) / 60
        status = "" if done else f"PARTIAL ({len(rows)} students so far), "
        headers = ["setting", "seeds", "val acc %", *RESULT_HEADERS, "best epoch"]
        cols = (("val_accuracy", 100.0, 2), *RESULT_COLUMNS, ("best_epoch", 1.0, 1))
        tlines = [
            f"{t.name}: test acc {100 * t.accuracy:.2f} %, raw ECE {100 * t.ece:.2f} %, T = {t.temperature:.3f}"
            for k, t in teachers.items()
            if k != "raw"
        ]
        md = "\n\n".join(
            [
                f"`{cmd}` ({status}train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} "
                f"Fashion-MNIST images; teachers {budget.teacher_epochs} epochs, student {budget.epochs} epochs "
                f"unless stated; {budget.seeds} seed(s); {minutes:.1f} min wall in this invocation).",
                machine_line(info),
                markdown_table(headers, summary_rows(rows, "setting", names, cols)),
                per_seed_table(rows, "setting", names),
                curve_table(rows, names),
                "Teachers (trained once, seed 0): " + "; ".join(tlines) + ".",
            ]
        )
        payload = {
            "complete": done,
            "budget": asdict(budget),
            "machine": info,
            "minutes": minutes,
            "settings": [asdict(s) for s in settings],
            "teachers": {
                k: {"accuracy": t.accuracy, "ece": t.ece, "temperature": t.temperature} for k, t in teachers.items()
            },
            "rows": rows,
        }
        return write_outputs(out, "kd_diagnosis", payload, md)

    def run(batch: list[Setting], *, seed_major: bool) -> None:
        """Phase A seed by seed (a one-seed grid early), phase B setting by setting (complete rows if cut off)."""
        order = (
            [(s, k) for k in range(budget.seeds) for s in batch]
            if seed_major
            else [(s, k) for s in batch for k in range(min(budget.seeds, s.max_seeds or budget.seeds))]
        )
        for s, seed in order:
            t0 = time.perf_counter()
            rows.append(run_setting(s, teachers, splits, budget, seed, out))
            r = rows[-1]
            log.info(
                "%-34s seed %d val %.4f test %.4f (%.0f s)",
                s.name,
                seed,
                r["val_accuracy"],
                r["accuracy"],
                time.perf_counter() - t0,
            )
            report(done=False)

    run(settings, seed_major=True)
    best = best_kd(rows, settings)
    log.info("best KD setting on val: %s", best.name)
    ls = train_teacher(splits, budget.teacher_epochs, tdir / "teacher-ls", label_smoothing=0.1)
    teachers["ls"] = as_teacher("LS-0.1 teacher", ls, splits)
    phase_b = follow_up(best)
    settings += phase_b
    run(phase_b, seed_major=False)
    j, m = report(done=True)
    print(m.read_text())
    print(f"wrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
