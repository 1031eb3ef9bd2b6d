"""Did distillation pay: the paired difference with its standard error, the shipping rule, and the escalation plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecompress.distill.escalation import Attempt, attempts_line, next_attempt, still_improving
from edgecompress.distill.verdict import decide_shipping, paired_difference


def test_paired_difference_golden() -> None:
    # 10 images: A right on 7, B right on 5; they disagree on 4 (A alone on 3, B alone on 1)
    a = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0])
    b = np.array([1, 1, 1, 1, 0, 0, 0, 1, 0, 0])
    d = paired_difference(a, b)
    diffs = np.array([0, 0, 0, 0, 1, 1, 1, -1, 0, 0], dtype=float)
    assert d.difference == pytest.approx(0.2) and d.n == 10
    assert d.stderr == pytest.approx(diffs.std(ddof=1) / math.sqrt(10))
    assert d.text() == f"+20.00 ± {100 * d.stderr:.2f} points (n = 10)"


def test_identical_students_have_no_error_and_no_difference() -> None:
    c = np.array([1, 0, 1, 1])
    d = paired_difference(c, c)
    assert d.difference == 0 and d.stderr == 0 and d.z == 0


def test_shipping_rule_scratch_only_when_significantly_better() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(6000) < 0.9
    better = base.copy()
    flip = np.flatnonzero(~base)[:120]  # distilled right on 120 more images: +2 points
    better[flip] = True
    v = decide_shipping(paired_difference(better, base), fidelity=0.97)
    assert v.shipped == "distilled" and v.significant and "distillation pays" in v.reason
    v = decide_shipping(paired_difference(base, better))
    assert v.shipped == "scratch" and v.significant and "scratch ships" in v.reason
    tie = base.copy()
    tie[np.flatnonzero(~base)[:3]] = True  # +0.05 point: noise
    v = decide_shipping(paired_difference(base, tie), fidelity=0.97)
    assert v.shipped == "distilled" and not v.significant
    assert "no significant difference" in v.reason and "97.0 %" in v.reason


def test_still_improving_reads_the_last_epoch() -> None:
    assert still_improving([{"val_accuracy": 0.80}, {"val_accuracy": 0.85}])
    assert not still_improving([{"val_accuracy": 0.85}, {"val_accuracy": 0.851}])
    assert not still_improving([{"val_accuracy": 0.86}, {"val_accuracy": 0.84}, {"val_accuracy": 0.85}])


def _attempt(**kw) -> Attempt:
    base = {"index": 0, "prune_ratio": 0.1, "epochs": 4, "macs": 1000, "val_accuracy": 0.8,
            "teacher_val_accuracy": 0.9, "passed": False, "seconds": 100.0, "why": "configured"}  # fmt: skip
    return Attempt(**(base | kw))


def test_escalation_doubles_epochs_when_still_improving_then_grows_the_student() -> None:
    first = _attempt()
    rising = [{"val_accuracy": 0.7}, {"val_accuracy": 0.8}]
    nxt = next_attempt(first, first, 100.0, history=rising, budget=3.0)
    assert nxt is not None and nxt.epochs == 8 and nxt.prune_ratio == 0.1 and "twice the epochs" in nxt.why
    assert nxt.estimated_seconds == pytest.approx(200.0)
    flat = [{"val_accuracy": 0.8}, {"val_accuracy": 0.8}]
    nxt = next_attempt(first, first, 100.0, history=flat, budget=3.0)
    assert nxt is not None and nxt.prune_ratio == 0.2 and nxt.epochs == 4 and "larger student" in nxt.why
    # the cap: 100 s spent, the doubled run would take 200 s more: allowed at 3x, refused at 2x
    assert next_attempt(first, first, 100.0, history=rising, budget=2.0) is None
    # a given model cannot grow: more epochs even when it levelled off
    fixed = _attempt(prune_ratio=None)
    nxt = next_attempt(fixed, fixed, 100.0, history=flat, budget=3.0)
    assert nxt is not None and nxt.epochs == 8 and "cannot grow" in nxt.why
    line = attempts_line([first, _attempt(index=1, epochs=8, val_accuracy=0.83)])
    assert line == "0.1 of the MACs, 4 epochs: val 80.00 %; 0.1 of the MACs, 8 epochs: val 83.00 %"
