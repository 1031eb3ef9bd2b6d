"""Compress to a budget, piece by piece: the latency fit, the choice and its one-line refusal, the cache, the grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgecompress.budget.cache import LatencyCache
from edgecompress.budget.choose import BudgetError, choose, feasible, fit_latency, with_predictions
from edgecompress.budget.config import TargetConfig
from edgecompress.budget.records import Candidate, Probe


def _cand(name: str, macs: int, p50s: dict[str, float], size: int = 1000) -> Candidate:
    probes = [
        Probe(format=k.split(":")[0], precision=k.split(":")[1], p50_ms=v, size_bytes=size) for k, v in p50s.items()
    ]
    return Candidate(name=name, target_ratio=macs / 1e6, mac_ratio=macs / 1e6, macs=macs, params=macs // 10,
                     widths=[macs // 1000], probes=probes)  # fmt: skip


def _grid() -> list[Candidate]:
    # p50 = 0.01 * (MACs / 1000) ** 0.5 for fp32; int8 twice as fast
    out = [_cand("teacher", 1_000_000, {"onnx:fp32": 0.01 * 1000**0.5, "onnx:int8": 0.005 * 1000**0.5})]
    for macs in (400_000, 100_000, 25_000, 5_000):
        x = (macs / 1000) ** 0.5
        out.append(_cand(f"c{macs}", macs, {"onnx:fp32": 0.01 * x, "onnx:int8": 0.005 * x}, size=macs // 10))
    return out


def test_fit_recovers_a_power_law_and_predicts_each_candidate():
    fits = {f"{f.format}:{f.precision}": f for f in fit_latency(_grid())}
    assert set(fits) == {"onnx:fp32", "onnx:int8"}
    assert fits["onnx:fp32"].slope == pytest.approx(0.5)
    assert math.exp(fits["onnx:fp32"].intercept) == pytest.approx(0.01 * 1000**-0.5)
    assert fits["onnx:fp32"].max_rel_residual == pytest.approx(0.0, abs=1e-9)
    for cand in with_predictions(_grid(), list(fits.values())):
        for p in cand.probes:
            assert p.predicted_ms == pytest.approx(p.p50_ms)


def test_fit_keeps_the_line_when_latency_is_linear_in_macs():
    cands = [_cand(f"c{m}", m, {"onnx:fp32": 0.02 + 1e-7 * m}) for m in (5_000, 25_000, 100_000, 400_000, 1_000_000)]
    (fit,) = fit_latency(cands)
    assert fit.kind == "linear" and fit.slope == pytest.approx(1e-7) and fit.intercept == pytest.approx(0.02)
    assert fit.max_rel_residual == pytest.approx(0.0, abs=1e-9)
    assert fit_latency(_grid())[0].kind == "power"


def test_choice_is_the_largest_candidate_meeting_the_budget_with_the_margin():
    cands = _grid()
    # c100000 in int8 runs at 0.005 * 10 = 0.05 ms: with a 10 % margin 0.055 > 0.052; c25000 fp32 = 0.05 also misses
    target = TargetConfig(latency_ms=0.052, margin=0.1)
    choice, ranked = choose(cands, target)
    assert (choice.candidate, choice.pair) == ("c25000", "onnx:int8")
    assert all(c.macs <= 25_000 for c, _ in ranked) and ranked[0][0].name == "c25000"
    without_margin = choose(cands, TargetConfig(latency_ms=0.052, margin=0.0))[0]
    assert (without_margin.candidate, without_margin.pair) == ("c100000", "onnx:int8")


def test_every_budget_counts_and_the_teacher_is_never_chosen():
    cands = _grid()
    assert all(c.name != "teacher" for c, _ in feasible(cands, TargetConfig(latency_ms=1000)))
    # size: c400000 is 40 kB, c100000 is 10 kB
    assert choose(cands, TargetConfig(size_kb=20_000 / 1024))[0].candidate == "c100000"
    # speed-up over the teacher's FP32 (0.316 ms): 4x with the margin leaves int8 at <= 0.0719 ms -> c100000 (0.05)
    choice = choose(cands, TargetConfig(speedup=4, margin=0.1))[0]
    assert (choice.candidate, choice.pair) == ("c100000", "onnx:int8")


def test_impossible_budget_names_the_fastest_measured_latency():
    cands = _grid()
    fastest = min(p.p50_ms for c in cands[1:] for p in c.probes)
    with pytest.raises(BudgetError) as info:
        choose(cands, TargetConfig(latency_ms=0.001))
    message = str(info.value)
    assert "\n" not in message and "fix:" in message
    assert f"{fastest:.4g} ms" in message and "c5000" in message


def test_unmeasurable_candidates_are_a_device_problem_not_a_budget():
    cands = [c.model_copy(update={"probes": [Probe(format="onnx", precision="fp32", ok=False, error="boom")]})
             for c in _grid()]  # fmt: skip
    with pytest.raises(BudgetError, match="no candidate could be measured .*boom"):
        choose(cands, TargetConfig(latency_ms=1))


def test_cache_round_trip_is_atomic_and_ignores_a_broken_file(tmp_path: Path):
    cache = LatencyCache(tmp_path / "c")
    key = LatencyCache.key(arch="a", widths=[8, 16], pair="onnx:fp32", device={"name": "local"}, batch=1, graph={})
    assert cache.get(key) is None
    cache.put(key, Probe(format="onnx", precision="fp32", p50_ms=0.5, size_bytes=10))
    got = cache.get(key)
    assert got is not None and got.cached and got.p50_ms == 0.5
    assert [p.name for p in (tmp_path / "c").iterdir()] == [f"{key}.json"]  # no temporary left behind
    other = LatencyCache.key(arch="a", widths=[8, 16], pair="onnx:fp32", device={"name": "local"}, batch=2, graph={})
    assert other != key
    (tmp_path / "c" / f"{key}.json").write_text("{not json")
    assert cache.get(key) is None
    json.dumps(LatencyCache.key(arch="a", widths=[], pair="x:y", device={}, batch=1, graph={}))


def test_candidates_are_cut_from_the_teacher_with_rounded_widths():
    import torch

    from edgecompress.budget.candidates import architecture_hash, cut_candidates
    from edgecompress.models import ModelSpec, build_model

    torch.manual_seed(0)
    teacher = build_model(ModelSpec(family="cnn", params={"channels": [32, 64]}), in_channels=1, num_classes=10,
                          input_size=(8, 8))  # fmt: skip
    cands, notes = cut_candidates(teacher, (1, 8, 8), [0.5, 0.17, 0.058, 0.03], round_to=8)
    assert any("at 0.03 " in n and "round_to 8 was not met" in n for n in notes)  # skipped: off the kernels' blocks
    assert cands[0][0].name == "teacher" and cands[0][0].mac_ratio == 1.0
    macs = [c.macs for c, _ in cands]
    assert macs == sorted(macs, reverse=True) and len(set(macs)) == len(macs)
    for cand, model in cands[1:]:
        assert cand.mac_ratio <= cand.target_ratio + 1e-9
        assert all(w % 8 == 0 for w in cand.widths[:-1]) and cand.widths[-1] == 10  # the classifier keeps its classes
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert architecture_hash(teacher, (1, 8, 8)) != architecture_hash(cands[1][1], (1, 8, 8))


@pytest.mark.slow  # real exports and agent runs (~15 s on 2 shared cores)
def test_measure_skips_what_the_device_refuses_and_a_second_pass_reads_the_cache(tmp_path: Path):
    """Real export and agent timing of two tiny candidates on a local profile that accepts only ONNX FP32."""
    import numpy as np
    import torch

    from edgecompress.budget.candidates import architecture_hash, cut_candidates
    from edgecompress.budget.measure import ProbeSetup, measure_candidates
    from edgecompress.devices.config import BenchmarkConfig
    from edgecompress.export.config import ExportConfig
    from edgecompress.models import ModelSpec, build_model

    profile = tmp_path / "fp32-only.yaml"
    profile.write_text("name: fp32-only\ntransport: local\nruntimes: [onnxruntime]\nformats: ['onnx:fp32']\n")
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(family="cnn", params={"channels": [16, 32]}), in_channels=1, num_classes=10,
                          input_size=(8, 8))  # fmt: skip
    cands, _ = cut_candidates(teacher, (1, 8, 8), [0.3], round_to=8)
    rng = np.random.default_rng(0)
    setup = ProbeSetup(
        device=str(profile), batch_size=1, pairs=[("onnx", "fp32"), ("onnx", "int8")],
        export_cfg=ExportConfig(), bench_cfg=BenchmarkConfig(min_time_s=0.0, min_iters=3, repeats=2, warmup_iters=1),
        input_shape=(1, 8, 8), num_classes=10, calib_x=rng.standard_normal((16, 1, 8, 8)).astype(np.float32),
        val=None, workdir=tmp_path / "probes", cache=LatencyCache(tmp_path / "cache"),
        arch=architecture_hash(teacher, (1, 8, 8)),
    )  # fmt: skip
    first, measured = measure_candidates(cands, setup)
    assert measured == len(cands)  # one FP32 probe per candidate; INT8 never exported
    for cand in first:
        fp32, int8 = cand.probe("onnx:fp32"), cand.probe("onnx:int8")
        assert fp32 is not None and fp32.ok and fp32.p50_ms > 0 and fp32.size_bytes > 0 and not fp32.cached
        assert int8 is not None and not int8.ok and "does not accept onnx:int8" in int8.error
    assert not any(p.name.startswith("onnx-int8") for p in (tmp_path / "probes").rglob("*"))
    again, measured = measure_candidates(cands, setup)
    assert measured == 0
    assert [c.probe("onnx:fp32").p50_ms for c in again] == [c.probe("onnx:fp32").p50_ms for c in first]
    assert all(c.probe("onnx:fp32").cached for c in again)
