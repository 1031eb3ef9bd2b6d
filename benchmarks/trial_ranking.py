"""Do the decide stage's trials predict full-budget outcomes? Spearman's rank correlation, measured (issue 25).

For one pipeline config (the demo's, or the RGB workload's) with a converged teacher: run the decide stage's trials
(successive halving, ``distill.decide``) and record their ranking of the loss candidates and their cost; then train
**every** candidate at the final budget with the final run's settings (``distill_chain``: calibrated teacher,
augmentation, teacher targets, same student), for ``--seeds`` training seeds, and rank them by mean val accuracy.
Prints both tables, Spearman's rho between the two rankings (over every candidate), the trials' cost against one
full-budget student's training, and — the same runs answer it — how Hinton KD's T and alpha and DIST's T fare at
full budget, and how far each candidate is from scratch (test accuracy). Results go to ``--out`` as JSON.

    python -m benchmarks.trial_ranking src/edgecompress/pipeline/presets/fashion_mnist.yaml --out runs/bench/rank-fm
    python -m benchmarks.trial_ranking runs/bench/rgb32/rgb32.yaml --out runs/bench/rank-rgb

Every training folder is reused on a rerun (each ``train_model`` resumes), so the script can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import markdown_table
from benchmarks._experiments import fmt_mean_std, mean_std


def _spearman(order_a: list[str], order_b: list[str]) -> float:
    """Spearman's rho between two rankings of the same names (no ties: positions)."""
    from scipy.stats import spearmanr

    pos_b = {n: i for i, n in enumerate(order_b)}
    rho = spearmanr(list(range(len(order_a))), [pos_b[n] for n in order_a]).statistic
    return float(rho)


def run(
    config: Path,
    out: Path,
    *,
    seeds: list[int],
    threads: int | None,
    targets: str | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    import torch

    from edgecompress.config import load_config
    from edgecompress.data import load_splits
    from edgecompress.distill import distill_chain
    from edgecompress.distill.config import LossConfig
    from edgecompress.distill.decide import decide, loss_candidates
    from edgecompress.distill.evaluate import SplitLogits
    from edgecompress.models import count_macs, load_teacher, prune_search

    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(config)
    dcfg = cfg.distill
    if dcfg.loss.kind != "auto":
        dcfg = dcfg.model_copy(update={"loss": LossConfig(kind="auto")})
    dcfg = dcfg.model_copy(update={"assistants": "none"})  # the loss ranking; the chain step is not measured here
    if targets is not None:
        dcfg = dcfg.model_copy(update={"teacher_targets": targets})
    splits = load_splits(cfg.data, seed=cfg.seed)
    c, h, w = splits.input_shape
    teacher = load_teacher(cfg.teacher, in_channels=c, num_classes=splits.num_classes, input_size=(h, w)).eval()
    member = dcfg.student
    pruned = prune_search(teacher, splits.input_shape, member.prune_ratio, round_to=member.round_to).model
    ratio = count_macs(pruned, splits.input_shape) / count_macs(teacher, splits.input_shape)

    def make(r: float | None) -> torch.nn.Module:
        if r is not None:
            raise ValueError("no assistants in this benchmark")
        return copy.deepcopy(pruned)

    out.mkdir(parents=True, exist_ok=True)
    known = SplitLogits.of(teacher, splits)  # the teacher runs once, as in the pipeline
    started = time.perf_counter()
    d = None
    if not only:  # the trials, unless only some candidates' full-budget runs are asked for
        d = decide(teacher, make, splits, dcfg, student_ratio=ratio, workdir=out / "trials", seed=cfg.seed,
                   augment_cfg=cfg.data.augment, teacher_logits=known)  # fmt: skip
    trial_seconds = time.perf_counter() - started
    full: dict[str, list[dict[str, float]]] = {}
    for name, loss in loss_candidates(dcfg):
        if only and name not in only:
            continue
        for seed in seeds:
            t0 = time.perf_counter()
            chain = distill_chain(teacher, [("student", make(None))], splits, dcfg.model_copy(update={"loss": loss}),
                                  workdir=out / "full" / f"seed{seed}" / name.replace(" ", "_").replace("α", "a"),
                                  seed=seed, augment_cfg=cfg.data.augment, progress=False,
                                  teacher_logits=known)  # fmt: skip
            s = chain.members[-1]
            full.setdefault(name, []).append({"seed": seed, "val": s.val_accuracy, "test": s.accuracy,
                                              "ece": s.ece_after, "seconds": time.perf_counter() - t0})  # fmt: skip
            print(f"{name} seed {seed}: val {s.val_accuracy:.4f} test {s.accuracy:.4f}", file=sys.stderr, flush=True)
    means = {n: mean_std(r["val"] for r in rows)[0] for n, rows in full.items()}
    full_order = sorted(means, key=lambda n: -means[n])
    rho = _spearman(d.ranking, full_order) if d is not None else float("nan")
    final_seconds = float(np.median([r["seconds"] for rows in full.values() for r in rows if r["seed"] == seeds[0]]))
    result = {
        "config": str(config),
        "student_mac_ratio": ratio,
        "teacher_targets": dcfg.teacher_targets,
        "trial_ranking": d.ranking if d is not None else full_order,
        "full_ranking": full_order,
        "spearman": rho,
        "rungs": d.rungs if d is not None else [],
        "trial_steps": d.budget_steps if d is not None else 0,
        "trial_seconds": trial_seconds,
        "final_student_seconds_median": final_seconds,
        "trials": [t.__dict__ for t in d.trials] if d is not None else [],
        "full": full,
        "seeds": seeds,
    }
    (out / "trial_ranking.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def report(res: dict[str, Any]) -> str:
    """Markdown: the trial ranking beside the full-budget one, rho, cost."""
    trial_pos = {n: i + 1 for i, n in enumerate(res["trial_ranking"])}
    scratch = res["full"].get("scratch (ce)", [])
    s_test = mean_std(r["test"] for r in scratch)[0] if scratch else float("nan")
    rows = []
    for i, name in enumerate(res["full_ranking"]):
        runs = res["full"][name]
        t_mean = mean_std(r["test"] for r in runs)[0]
        rows.append([i + 1, trial_pos[name], name, fmt_mean_std(r["val"] for r in runs),
                     fmt_mean_std(r["test"] for r in runs), f"{100 * (t_mean - s_test):+.2f}"])  # fmt: skip
    table = markdown_table(
        ["full rank", "trial rank", "candidate", "val % (full budget)", "test % (full budget)", "test vs scratch"], rows
    )
    share = res["trial_seconds"] / res["final_student_seconds_median"]
    return (
        f"{table}\n\nSpearman rho (trial ranking vs full-budget val ranking, {len(rows)} candidates, "
        f"{len(res['seeds'])} seed(s)): **{res['spearman']:.2f}**. Trials: rungs {res['rungs']} steps per model, "
        f"{res['trial_steps']} steps in all, {res['trial_seconds']:.0f} s = {100 * share:.0f} % of one full-budget "
        f"student's training ({res['final_student_seconds_median']:.0f} s, median)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trial_ranking", description=__doc__)
    parser.add_argument("config", type=Path, help="pipeline config with a trained teacher checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="working folder (resumable) and result JSON")
    parser.add_argument("--seeds", default="0,1", help="training seeds of the full-budget runs (comma-separated)")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--targets", choices=["clean", "online"], help="override distill.teacher_targets")
    parser.add_argument("--only", help="full-budget runs of these candidates only, no trials ('|'-separated names)")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split("|")] if args.only else None
    res = run(args.config, args.out, seeds=[int(s) for s in args.seeds.split(",")], threads=args.threads,
              targets=args.targets, only=only)  # fmt: skip
    print(report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
