"""Latency before training: each candidate exported untrained in every format considered and timed on the target.

The export is the pipeline's own (:func:`edgecompress.export.export_all`, INT8 calibrated on a few real calib
images) and the timing is the benchmark stage's own (:func:`edgecompress.devices.benchmark_artifacts`: the on-device
agent with warm-up, repeats and their spread), so an SSH or adb target is measured exactly as the benchmark stage
measures it. Probes already in the :class:`~edgecompress.budget.cache.LatencyCache` are not measured again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress.budget.cache import LatencyCache, device_identity
from edgecompress.budget.records import Candidate, Probe

if TYPE_CHECKING:
    from torch import nn

    from edgecompress.devices.config import BenchmarkConfig
    from edgecompress.export.config import ExportConfig

log = logging.getLogger(__name__)

PROBE_CALIB = 64  # calibration images for a probe's INT8 graph: latency does not depend on the ranges found
PROBE_VAL = 128  # val images for the export's own checks (the accuracy gate is off for untrained candidates)
# export settings that change the graph (and so the latency); the others only change numbers
_GRAPH_KEYS = ("opset", "simplify", "dynamic_batch", "max_batch", "output_probabilities", "keep_head_float",
               "keep_stem_float")  # fmt: skip


@dataclass
class ProbeSetup:
    """Where and how candidates are measured."""

    device: str
    batch_size: int
    pairs: list[tuple[str, str]]
    export_cfg: ExportConfig
    bench_cfg: BenchmarkConfig
    input_shape: tuple[int, int, int]
    num_classes: int
    calib_x: np.ndarray
    val: tuple[np.ndarray, np.ndarray] | None
    workdir: Path
    cache: LatencyCache
    arch: str


def probe_configs(setup: ProbeSetup) -> tuple[ExportConfig, BenchmarkConfig]:
    """The export and benchmark settings of a probe: the run's own, with the accuracy gate off (an untrained
    candidate's accuracy means nothing), one INT8 range method, few calibration images, only the target batch."""
    export_cfg = setup.export_cfg.model_copy(
        update={
            "formats": [f"{f}:{p}" for f, p in setup.pairs],
            "max_accuracy_drop": 1.0,  # an untrained candidate's accuracy means nothing; a broken graph still fails
            "int8_calibration": "minmax",
            "calib_samples": min(setup.export_cfg.calib_samples, PROBE_CALIB),
        }
    )
    bench_cfg = setup.bench_cfg.model_copy(
        update={"batch_sizes": [setup.batch_size], "save_logits": False, "devices": [setup.device]}
    )
    return export_cfg, bench_cfg


def measure_candidates(cands: list[tuple[Candidate, nn.Module]], setup: ProbeSetup) -> tuple[list[Candidate], int]:
    """Every candidate's probes (cached or measured now), and how many were measured now.

    A probe that fails (export or device) is recorded with its error and not cached, so a later run tries again.
    """
    from edgecompress.devices import benchmark_artifacts
    from edgecompress.devices.profiles import load_profile
    from edgecompress.export import ExportContract, export_all
    from edgecompress.export.formats import FORMATS

    export_cfg, bench_cfg = probe_configs(setup)
    profile = load_profile(setup.device, [bench_cfg.profiles_dir])
    ident = device_identity(profile.model_dump(mode="json"), profile.threads or bench_cfg.threads)
    graph = {k: getattr(export_cfg, k) for k in _GRAPH_KEYS}
    contract = ExportContract.from_config(
        export_cfg,
        input_shape=setup.input_shape,
        num_classes=setup.num_classes,
        metadata={"edgecompress.budget_probe": "untrained candidate"},
    )
    probes: dict[tuple[str, str], Probe] = {}
    keys: dict[tuple[str, str], str] = {}
    to_bench: list[tuple[str, str, Any]] = []
    refused = [(f, p) for f, p in setup.pairs if not profile.accepts(f, p, FORMATS[f].runtime)]
    for cand, _ in cands:  # never exported: the device would not run them
        for fmt, prec in refused:
            why = f"device {profile.name} does not accept {fmt}:{prec} (its profile's formats / runtimes)"
            probes[cand.name, f"{fmt}:{prec}"] = Probe(format=fmt, precision=prec, ok=False, error=why)
    for cand, model in cands:
        missing = []
        for fmt, prec in setup.pairs:
            pair = f"{fmt}:{prec}"
            if (fmt, prec) in refused:
                continue
            key = LatencyCache.key(arch=setup.arch, widths=cand.widths, pair=pair, device=ident,
                                   batch=setup.batch_size, graph=graph)  # fmt: skip
            keys[cand.name, pair] = key
            hit = setup.cache.get(key)
            if hit is not None:
                probes[cand.name, pair] = hit
            else:
                missing.append((fmt, prec))
        if not missing:
            continue
        val_x, val_y = (setup.val[0][:PROBE_VAL], setup.val[1][:PROBE_VAL]) if setup.val is not None else (None, None)
        arts = export_all(
            model,
            contract=contract,
            formats=[f"{f}:{p}" for f, p in missing],
            calib_x=setup.calib_x,
            out_dir=setup.workdir / cand.name,
            cfg=export_cfg,
            val_x=val_x,
            val_y=val_y,
        )
        for art in arts:
            pair = f"{art.format}:{art.precision}"
            if not art.ok:
                probes[cand.name, pair] = Probe(format=art.format, precision=art.precision, ok=False,
                                                error=art.failure)  # fmt: skip
                continue
            to_bench.append((cand.name, pair, art.model_copy(update={"name": f"{cand.name}-{art.name}"})))
    if to_bench:
        rows = benchmark_artifacts([a for _, _, a in to_bench], [profile], eval_x=None, eval_y=None, cfg=bench_cfg,
                                   workdir=setup.workdir / "bench")  # fmt: skip
        by_name = {row.artifact: row for row in rows}
        for name, pair, art in to_bench:
            row = by_name.get(art.name)
            fmt, prec = pair.split(":")
            stats = row.latency_ms.get(setup.batch_size) if row is not None and row.ok else None
            if stats is None:
                why = row.failure if row is not None else f"{setup.device} does not accept {pair}"
                probes[name, pair] = Probe(format=fmt, precision=prec, ok=False, error=why)
                continue
            assert row is not None  # stats come from an ok row
            probe = Probe(format=fmt, precision=prec, p50_ms=stats.p50, p90_ms=stats.p90,
                          cv=row.latency_cv.get(setup.batch_size), size_bytes=art.size_bytes)  # fmt: skip
            setup.cache.put(keys[name, pair], probe)
            probes[name, pair] = probe
    measured = len(to_bench)
    out = []
    for cand, _ in cands:
        mine = [probes[cand.name, f"{f}:{p}"] for f, p in setup.pairs if (cand.name, f"{f}:{p}") in probes]
        out.append(cand.model_copy(update={"probes": mine}))
    log.info("budget: %d probe(s) measured on %s, %d from the cache", measured, setup.device,
             sum(p.cached for c in out for p in c.probes))  # fmt: skip
    return out, measured
