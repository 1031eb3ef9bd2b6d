"""Tests of the helpers of benchmarks/takd.py, kd_diagnosis.py and calibration.py (tables, registries, the no-T²
rewrite; no training)."""

from __future__ import annotations

import importlib
import math

import pytest

from edgecompress.errors import ConfigError


@pytest.fixture(scope="module")
def exp():
    return importlib.import_module("benchmarks._experiments")


@pytest.fixture(scope="module")
def takd():
    return importlib.import_module("benchmarks.takd")


@pytest.fixture(scope="module")
def diag():
    return importlib.import_module("benchmarks.kd_diagnosis")


@pytest.fixture(scope="module")
def calib():
    return importlib.import_module("benchmarks.calibration")


def test_mean_std_uses_sample_std_and_skips_missing(exp):
    mean, std, n = exp.mean_std([0.9, 0.8, None, float("nan"), 0.7])
    assert n == 3
    assert mean == pytest.approx(0.8)
    assert std == pytest.approx(0.1)  # ddof = 1
    assert exp.mean_std([0.5]) == (0.5, 0.0, 1)
    m, s, k = exp.mean_std([])
    assert k == 0 and math.isnan(m) and math.isnan(s)


def test_fmt_mean_std(exp):
    assert exp.fmt_mean_std([0.9, 0.8, 0.7]) == "80.00 ± 10.00"
    assert exp.fmt_mean_std([1.25, 1.35], scale=1.0, digits=3) == "1.300 ± 0.071"
    assert exp.fmt_mean_std([0.5]) == "50.00"  # one value: no spread claimed
    assert exp.fmt_mean_std([None]) == "n/a"


def test_fmt_count(exp):
    assert exp.fmt_count(1442) == "1.44k"
    assert exp.fmt_count(17_530_000) == "17.53M"
    assert exp.fmt_count(12) == "12"
    assert exp.fmt_count(None) == "n/a"


def test_markdown_table_and_row_check(exp):
    md = exp.markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]
    with pytest.raises(ConfigError):
        exp.markdown_table(["a", "b"], [[1]])


def test_aggregate_groups_by_key(exp):
    rows = [{"m": "kd", "acc": 0.8}, {"m": "kd", "acc": 0.6}, {"m": "ce", "acc": 0.5}]
    agg = exp.aggregate(rows, "m", ["acc"])
    assert list(agg) == ["kd", "ce"]
    assert agg["kd"]["acc"][0] == pytest.approx(0.7)
    assert agg["kd"]["acc"][2] == 2
    assert agg["ce"]["acc"] == (0.5, 0.0, 1)


def test_takd_method_registry_and_gaps(takd):
    assert list(takd.METHODS) == ["scratch", "kd", "takd-1ta", "takd-path", "dist"]
    assert takd.MEMBERS["teacher"].depth == 10 and takd.MEMBERS["student"].depth == 2
    for gap in takd.GAPS.values():
        assert gap.lineage("scratch") == ()
        assert gap.lineage("kd") == gap.lineage("dist") == gap.teacher
        for method in ("takd-1ta", "takd-path"):
            lineage = gap.lineage(method)
            assert all(m in takd.MEMBERS for m in lineage)
            depths = [takd.MEMBERS[m].depth for m in lineage]
            assert depths == sorted(depths, reverse=True) and len(set(depths)) == len(depths)  # largest first
            assert depths[-1] > takd.MEMBERS["student"].depth
    gap = takd.GAPS["58x"]
    assert gap.lineage("takd-path") == ("teacher", "ta8", "ta6", "ta4")
    assert gap.describe("takd-1ta") == "teacher → TA6 → student"
    assert takd.GAPS["22x"].describe("dist") == "TA8 → student (DIST)"
    assert takd.GAPS["22x"].describe("takd-path") == "TA8 → TA6 → TA4 → student"
    assert takd.parse_methods("all") == list(takd.METHODS)
    assert takd.parse_methods("kd, dist") == ["kd", "dist"]
    with pytest.raises(ConfigError):
        takd.parse_methods("kd,nope")
    assert takd.kd_loss("dist", 1.0, 0.5).temperature == takd.DIST_LOSS["temperature"]  # DIST keeps its setting
    assert (takd.kd_loss("takd-path", 2.0, 0.5).temperature, takd.kd_loss("kd", 2.0, 0.5).alpha) == (2.0, 0.5)


def _row(method: str, seed: int, acc: float, **kw: float) -> dict:
    return {"method": method, "seed": seed, "accuracy": acc, "best_epoch": 10, **kw}


def test_takd_gap_summary_auto_and_ordering(takd):
    rows = [_row("kd", s, a) for s, a in enumerate((0.70, 0.72, 0.71))]
    rows += [_row("takd-1ta", s, a) for s, a in enumerate((0.72, 0.73, 0.74))]
    rows += [_row("takd-path", s, a) for s, a in enumerate((0.75, 0.76, 0.74))]
    rows += [_row("auto", s, a) for s, a in enumerate((0.75, 0.73, 0.74))]
    summ = takd.gap_summary(rows, {0: "takd-path", 1: "takd-1ta", 2: "takd-path"})
    assert summ["best"] == "takd-path" and summ["best_mean"] == pytest.approx(0.75)
    assert summ["auto_within_one_std"] is True  # 0.74 >= 0.75 - 0.01
    assert summ["takd_order_path_gt_1ta_gt_kd"] is True
    rows = [r if r["method"] != "auto" else {**r, "accuracy": 0.70} for r in rows]
    assert takd.gap_summary(rows, {})["auto_within_one_std"] is False
    rows = [r if r["method"] != "kd" else {**r, "accuracy": 0.80} for r in rows]
    assert takd.gap_summary(rows, {})["takd_order_path_gt_1ta_gt_kd"] is False


def test_summary_and_per_seed_tables(exp):
    rows = [_row("kd", 0, 0.8, nll=0.5), _row("kd", 1, 0.7, nll=0.7), _row("dist", 1, 0.9, nll=0.4)]
    body = exp.summary_rows(rows, "method", ["scratch", "kd", "dist"], [("accuracy", 100.0, 2), ("nll", 1.0, 3)])
    assert body == [["kd", 2, "75.00 ± 7.07", "0.600 ± 0.141"], ["dist", 1, "90.00", "0.400"]]
    lines = exp.per_seed_table(rows, "method", ["kd", "dist"]).splitlines()
    assert lines[0] == "| method | seed 0 test acc % | seed 1 test acc % | best epochs |"
    assert lines[2] == "| kd | 80.00 | 70.00 | 10, 10 |" and lines[3] == "| dist | — | 90.00 | 10 |"


def test_kd_diagnosis_settings(diag):
    grid = diag.grid()
    names = [s.name for s in grid]
    assert len(names) == len(set(names)) == 1 + 6 + 2
    assert names[0] == "scratch" and "kd T=4 α=0.9 no-T²" in names
    rows = [{"setting": s.name, "val_accuracy": 0.5 + 0.01 * i} for i, s in enumerate(grid)]
    best = diag.best_kd(rows, grid)
    assert best.name == "kd T=4 α=0.9"  # highest val among the with-T² KD settings (the no-T² ones are not candidates)
    follow = [s.name for s in diag.follow_up(best)]
    assert len(follow) == len(set(follow)) == 9
    assert "kd T=4 α=0.9 lr 0.03" in follow and "kd T=4 α=0.9 lr auto" in follow
    assert {"kd T=1 α=0.9 LS teacher", "kd T=4 α=0.9 LS teacher", "scratch 2x epochs"} <= set(follow)


def test_no_t2_variant_is_the_same_sgd_step(diag):
    """The library loss with α' and the rescaled lr / weight decay / clip takes exactly the step of the no-T² loss."""
    import torch
    import torch.nn.functional as F

    from benchmarks.takd import train_config
    from edgecompress.distill import KDLoss

    t, alpha = 4.0, 0.9
    a2, cfg, c = diag.no_t2_variant(t, alpha, train_config(5))
    torch.manual_seed(0)
    x, y, zt = torch.randn(16, 6), torch.randint(0, 3, (16,)), torch.randn(16, 3) * 3

    def step(lib: bool) -> torch.Tensor:
        torch.manual_seed(1)
        net = torch.nn.Linear(6, 3)
        lr, wd, clip = (cfg.lr, cfg.weight_decay, cfg.grad_clip) if lib else (0.1, 5e-4, 5.0)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        for _ in range(3):
            zs = net(x)
            if lib:
                loss = KDLoss(t, a2)(zs, zt, y)["loss"]
            else:
                kl = F.kl_div(
                    F.log_softmax(zs / t, 1), F.log_softmax(zt / t, 1), log_target=True, reduction="batchmean"
                )
                loss = (1 - alpha) * F.cross_entropy(zs, y) + alpha * kl
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
        return net.weight.detach().clone()

    assert 0 < a2 < alpha and c > 0
    assert torch.allclose(step(True), step(False), atol=1e-6)
    assert cfg.lr == pytest.approx(0.1 / c) and cfg.grad_clip == pytest.approx(5.0 * c)


def _calib_row(method: str, ece_raw: float, ece_ts: float, ece_int8: float, refit: float, acc: float) -> dict:
    def stage(ece: float) -> dict:
        return {"accuracy": acc, "ece": ece, "adaptive_ece": ece, "nll": 0.4}

    return {
        "method": method,
        "temperature": 1.2,
        "int8_refit_factor": 1.0,
        "refit_needed": abs(ece_int8 - ece_ts) > 0.005,
        "stages": {
            "fp32": stage(ece_raw),
            "fp32_ts": stage(ece_ts),
            "int8": stage(ece_int8),
            "int8_refit": stage(refit),
        },
    }


def test_calibration_registry_and_goals(calib):
    assert list(calib.METHODS) == ["ce", "ls", "mbls"]
    assert calib.METHODS["ls"].label_smoothing == 0.1
    assert (calib.METHODS["mbls"].mbls_margin, calib.METHODS["mbls"].mbls_weight) == (10.0, 0.1)
    with pytest.raises(ConfigError):
        calib.parse_methods("focal")
    rows = [
        _calib_row("ce", 0.04, 0.008, 0.009, 0.008, 0.90),
        _calib_row("ls", 0.03, 0.009, 0.020, 0.010, 0.901),
        _calib_row("mbls", 0.02, 0.007, 0.008, 0.007, 0.899),
    ]
    verdicts = {g: ok for g, ok, _ in calib.goals(rows, ["ce", "ls", "mbls"])}
    assert verdicts["ECE <= 1 % after TS (every loss, mean over seeds)"] is True
    assert verdicts["MbLS raw ECE below CE and LS, accuracy within 0.5 pt"] is True
    # ls moved 1.1 pt under INT8, so its re-fit counts (1.0 vs 0.9: 0.1 pt): the goal holds
    assert verdicts["INT8 ECE within 0.5 pt of FP32 after TS (after the re-fit where needed; every run)"] is True
    rows[2] = _calib_row("mbls", 0.05, 0.02, 0.03, 0.03, 0.85)
    verdicts = {g: ok for g, ok, _ in calib.goals(rows, ["ce", "ls", "mbls"])}
    assert verdicts["ECE <= 1 % after TS (every loss, mean over seeds)"] is False
    assert verdicts["MbLS raw ECE below CE and LS, accuracy within 0.5 pt"] is False
    assert verdicts["INT8 ECE within 0.5 pt of FP32 after TS (after the re-fit where needed; every run)"] is False
    table = calib.results_table(rows, ["ce", "mbls"])
    assert table.count("\n") == 1 + 2 * len(calib.STAGES)
    assert "needed (ECE moved > 0.5 pt) in 0/1" in table
