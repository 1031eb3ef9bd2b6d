"""Compress to a budget: is latency measured before training a good prediction, and what does the search cost?

For the candidate students of ``examples/budget.yaml`` (cut from its Fashion-MNIST teacher's architecture by
torch-pruning at geometric MAC ratios, channels in multiples of 8), in each format considered:

* **predicted**: the candidate exported *untrained* and timed on this machine through the benchmark agent — exactly
  the budget stage's probe (:func:`edgecompress.budget.measure_candidates`, with a fresh latency cache) — and the
  power-law fit of those probes against MACs;
* **measured**: the same architecture *trained* briefly (cross-entropy), exported by the same export code, timed by
  the same agent — the final artifact the pipeline would ship.

Reported: per candidate and format the untrained p50, the fit's p50, the trained p50 and the errors
``|predicted − measured| / measured``; their median over the candidates (the issue's "within 15 %" check). Then the
cost: the search (cut + export + time every candidate untrained) against training, exporting and timing every
candidate, both measured in this run (wall seconds), and the budget path's total (search + the chosen candidate only).
The full-mode training budget is what the example trains with; quick mode trains each candidate one short epoch, so
its "train every candidate" cost is a lower bound (it is labelled so).

    python -m benchmarks.budget            # quick: ONNX Runtime FP32 + INT8, one short epoch each (a few minutes)
    python -m benchmarks.budget --full     # the example's four formats and training budget (~30 min on 2 cores)

Outputs ``budget.json`` and ``budget.md`` in ``--out`` (default ``runs/bench/budget-<mode>``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._experiments import load_fashion, machine_info, machine_line, markdown_table, write_outputs

log = logging.getLogger("budget")

ROUNDS = 3  # alternating untrained / trained timings per candidate and format
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "budget.yaml"


@dataclass(frozen=True)
class Mode:
    max_train: int
    epochs: int
    max_steps_per_epoch: int | None
    formats: tuple[str, ...]


MODES = {
    "quick": Mode(max_train=4000, epochs=1, max_steps_per_epoch=20, formats=("onnx:fp32", "onnx:int8")),
    "full": Mode(max_train=20000, epochs=3, max_steps_per_epoch=None,
                 formats=("onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:int8")),
}  # fmt: skip


def _rel_err(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or measured <= 0:
        return None
    return abs(predicted - measured) / measured


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.median(vals)) if vals else None


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.4g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the example's formats and training budget (~30 min)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default runs/bench/budget-<mode>)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared; default 1)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in ("edgecompress.distill.trainer", "torch_pruning", "onnxruntime", "nncf", "edgecompress.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from edgecompress.budget import LatencyCache, ProbeSetup, architecture_hash, cut_candidates, measure_candidates
    from edgecompress.budget.choose import choose, fit_latency, with_predictions
    from edgecompress.budget.measure import probe_configs
    from edgecompress.config import load_config
    from edgecompress.devices import benchmark_artifacts
    from edgecompress.distill import train_model
    from edgecompress.distill.config import LossConfig, TrainConfig
    from edgecompress.errors import EdgeCompressError
    from edgecompress.export import ExportContract, export_all
    from edgecompress.models import ModelSpec, build_model

    torch.set_num_threads(args.threads)
    mode_name = "full" if args.full else "quick"
    mode = MODES[mode_name]
    out = args.out or Path("runs/bench") / f"budget-{mode_name}"
    info = machine_info(args.threads)
    cfg = load_config(EXAMPLE)
    target = cfg.target
    assert target is not None
    export_cfg = cfg.export.model_copy(update={"formats": list(mode.formats), "max_accuracy_drop": 1.0})
    bench_cfg = cfg.benchmark.model_copy(update={"batch_sizes": [target.batch_size], "save_logits": False})
    splits = load_fashion(max_train=mode.max_train, max_test=1000, calib_size=256, seed=0)
    c, h, w = splits.input_shape
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(**cfg.teacher.model.model_dump()), in_channels=c, num_classes=splits.num_classes,
                          input_size=(h, w)).eval()  # fmt: skip

    # 1. the search, as the budget stage does it (a fresh cache: everything is measured)
    t0 = time.perf_counter()
    cands, notes = cut_candidates(teacher, splits.input_shape, target.ratios(), round_to=target.round_to)
    work = out / "work"
    setup = ProbeSetup(
        device=target.device, batch_size=target.batch_size, pairs=[tuple(p.split(":")) for p in mode.formats],
        export_cfg=export_cfg, bench_cfg=bench_cfg, input_shape=splits.input_shape, num_classes=splits.num_classes,
        calib_x=np.asarray(splits.calib.x), val=(np.asarray(splits.val.x), splits.val.y), workdir=work / "probes",
        cache=LatencyCache(work / f"cache-{time.time_ns()}"), arch=architecture_hash(teacher, splits.input_shape),
    )  # fmt: skip
    measured, n_probes = measure_candidates(cands, setup)
    fits = fit_latency(measured)
    measured = with_predictions(measured, fits)
    search_s = time.perf_counter() - t0
    try:
        choice = choose(measured, target)[0]
    except EdgeCompressError as exc:
        choice = None
        notes.append(f"no candidate meets the example's budget here: {exc}")
    log.info("search: %d probes in %.1f s", n_probes, search_s)

    # 2. every candidate trained briefly, exported and timed as the final artifact would be
    tcfg = TrainConfig(epochs=mode.epochs, batch_size=128, lr=0.05, warmup_epochs=0,
                       max_steps_per_epoch=mode.max_steps_per_epoch)  # fmt: skip
    rows: list[dict[str, Any]] = []
    cost: dict[str, dict[str, float]] = {}
    probe_cfg = probe_configs(setup)[0]
    contract = ExportContract(input_shape=splits.input_shape, num_classes=splits.num_classes)
    for (cand, model), rec in zip(cands, measured, strict=True):
        if cand.name == "teacher":
            continue
        untrained = copy.deepcopy(model).eval()
        t1 = time.perf_counter()
        trained = train_model(model.train(), splits, tcfg, workdir=work / "train" / cand.name, seed=0,
                              loss=LossConfig(kind="ce"), progress=False).model.eval()  # fmt: skip
        t2 = time.perf_counter()
        arts = export_all(trained, contract=contract, formats=list(mode.formats), calib_x=np.asarray(splits.calib.x),
                          out_dir=work / "final" / cand.name, cfg=export_cfg, val_x=np.asarray(splits.val.x),
                          val_y=splits.val.y)  # fmt: skip
        t3 = time.perf_counter()
        # the same architecture untrained again (the probe's export), timed back to back with the trained one in
        # alternating rounds, so the machine's load drifts cancel: does latency depend on the weights?
        again = export_all(untrained, contract=contract, formats=list(mode.formats),
                           calib_x=np.asarray(splits.calib.x), out_dir=work / "untrained" / cand.name, cfg=probe_cfg,
                           val_x=np.asarray(splits.val.x)[:128], val_y=splits.val.y[:128])  # fmt: skip
        batch = [
            a.model_copy(update={"name": f"{cand.name}-{kind}-{a.name}-r{r}"})
            for r in range(ROUNDS)
            for kind, group in (("untrained", again), ("trained", arts))
            for a in group
            if a.ok
        ]
        t4 = time.perf_counter()
        bench = benchmark_artifacts(batch, [target.device], eval_x=None, eval_y=None, cfg=bench_cfg,
                                    workdir=work / "paired-bench")  # fmt: skip
        t5 = time.perf_counter()
        # the cost of this candidate on the "train every candidate" path: training, its export, its share of timing
        cost[cand.name] = {"train_s": t2 - t1, "export_s": t3 - t2, "bench_s": (t5 - t4) / (2 * ROUNDS)}
        p50 = {r.artifact: r.p50_at(target.batch_size) for r in bench if r.ok}
        for probe in rec.probes:
            name = f"{probe.format}-{probe.precision}"
            u = [p50.get(f"{cand.name}-untrained-{name}-r{r}") for r in range(ROUNDS)]
            t = [p50.get(f"{cand.name}-trained-{name}-r{r}") for r in range(ROUNDS)]
            final = _median(t)
            rows.append({
                "candidate": cand.name, "macs": cand.macs, "mac_ratio": cand.mac_ratio, "pair": probe.pair,
                "untrained_p50_ms": probe.p50_ms, "fit_p50_ms": probe.predicted_ms, "trained_p50_ms": final,
                "untrained_again_p50_ms": _median(u), "untrained_cv": probe.cv,
                "error_untrained": _rel_err(probe.p50_ms, final), "error_fit": _rel_err(probe.predicted_ms, final),
                "error_paired": _rel_err(_median(u), final), "rounds_untrained": u, "rounds_trained": t,
            })  # fmt: skip
        log.info("%s: trained %.1f s, exported %.1f s, paired timing %.1f s", cand.name, t2 - t1, t3 - t2, t5 - t4)

    every = sum(sum(v.values()) for v in cost.values())
    chosen = cost.get(choice.candidate) if choice is not None else None
    budget_path = search_s + sum(chosen.values()) if chosen else None
    med_untrained = _median([r["error_untrained"] for r in rows])
    med_fit = _median([r["error_fit"] for r in rows])
    med_paired = _median([r["error_paired"] for r in rows])
    chosen_row = next((r for r in rows if choice and (r["candidate"], r["pair"]) == (choice.candidate, choice.pair)),
                      {})  # fmt: skip
    table = markdown_table(
        ["candidate", "MACs", "of teacher", "format", "probe p50 ms (search)", "fit p50 ms",
         "untrained p50 ms (paired)", "trained p50 ms (paired)", "error probe %", "error fit %", "error paired %"],
        [[r["candidate"], f"{r['macs']:,}", f"{100 * r['mac_ratio']:.3g} %", r["pair"], _ms(r["untrained_p50_ms"]),
          _ms(r["fit_p50_ms"]), _ms(r["untrained_again_p50_ms"]), _ms(r["trained_p50_ms"]),
          _pct(r["error_untrained"]), _pct(r["error_fit"]), _pct(r["error_paired"])] for r in rows],
    )  # fmt: skip
    capped = f" of at most {mode.max_steps_per_epoch} steps" if mode.max_steps_per_epoch else ""
    training = "one short epoch per candidate (a lower bound)" if mode_name == "quick" else "the example's training"
    md = "\n\n".join([
        f"`python -m benchmarks.budget{' --full' if args.full else ''}` ({mode_name} mode: {len(splits.train)} "
        f"Fashion-MNIST training images, {mode.epochs} epoch(s){capped} per candidate; target {target.device}, "
        f"batch {target.batch_size}; formats {', '.join(mode.formats)}).",
        machine_line(info),
        table,
        f"Median |untrained − trained| / trained over {len(rows)} candidate × format pairs: timed back to back "
        f"({ROUNDS} alternating rounds, medians) **{_pct(med_paired)} %**; the search's probe (timed minutes earlier) "
        f"**{_pct(med_untrained)} %**; the fit **{_pct(med_fit)} %**"
        + (f". The example's choice ({choice.candidate} in {choice.pair}): paired "
           f"{_pct(chosen_row.get('error_paired'))} %, probe {_pct(chosen_row.get('error_untrained'))} %."
           if choice else "."),
        f"Cost (wall seconds, this run): the search — cut, export and time {n_probes} untrained probes — "
        f"**{search_s:.0f} s**; training, exporting and timing every candidate ({training}): **{every:.0f} s**; the "
        f"budget path (search + the chosen candidate only): "
        f"**{'—' if budget_path is None else f'{budget_path:.0f} s'}**.",
        *([f"Notes: {'; '.join(notes)}"] if notes else []),
    ])  # fmt: skip
    payload = {"mode": mode_name, "machine": info, "rows": rows, "cost": cost, "search_s": search_s,
               "probes": n_probes, "every_candidate_s": every, "budget_path_s": budget_path,
               "median_error_untrained": med_untrained, "median_error_fit": med_fit, "median_error_paired": med_paired,
               "choice": choice.model_dump() if choice else None, "notes": notes,
               "fits": [f.model_dump() for f in fits]}  # fmt: skip
    j, m = write_outputs(out, "budget", payload, md)
    print(md)
    print(f"\nwrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
