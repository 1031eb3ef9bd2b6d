"""distill.teacher_precision: the KD teacher runs in bf16 only when it is faithful (and, with auto, on an AMX
CPU for a big enough teacher); an unfaithful one is refused with its numbers; the choice is recorded, reused on
resume, and reported."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from conftest import proto_splits, two_conv_net
from edgecompress.distill import teacher_precision as tp
from edgecompress.distill.config import DistillConfig, TrainConfig
from edgecompress.distill.fast_eval import frozen_runner
from edgecompress.distill.trainer import CHECKPOINT, train_model
from edgecompress.errors import CheckpointError, TrainingError


def _net(width: int = 16, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return two_conv_net(width, classes).eval()


def _cpu(monkeypatch: pytest.MonkeyPatch, *, bf16: bool, amx: bool) -> None:
    """Pretend this CPU does (not) run bf16 natively and does (not) have AMX."""
    monkeypatch.setattr(tp, "bf16_native", lambda: bf16)
    monkeypatch.setattr(tp, "amx_native", lambda: amx)


class NearTies(nn.Module):
    """Logits of ~1000 that differ by ~0.01: fp32 tells the classes apart, bf16 (8 significant bits) cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 + 0.01 * self.body(x)


def test_fp32_is_used_as_given_and_nothing_is_measured() -> None:
    teacher, x = _net(), torch.randn(64, 1, 8, 8)
    fp32 = frozen_runner(teacher, x[:8])
    run, rec = tp.choose_teacher_runner(teacher, x, fp32, "fp32")
    assert run is fp32
    assert (rec.precision, rec.reason, rec.speedup, rec.agreement) == ("fp32", "requested", None, None)
    assert rec.note() is None


def test_requested_bf16_runs_in_bf16_and_is_measured_against_fp32() -> None:
    teacher, x = _net(), torch.randn(300, 1, 8, 8)
    fp32 = frozen_runner(teacher, x[:8])
    run, rec = tp.choose_teacher_runner(teacher, x, fp32, "bf16", batch_size=128)
    assert run is not fp32 and run is not None
    assert rec.precision == "bf16" and rec.rows == 300
    assert rec.agreement is not None and rec.agreement >= tp.MIN_AGREEMENT
    assert rec.kl is not None and 0 <= rec.kl <= tp.MAX_KL
    assert rec.speedup is not None and rec.speedup > 0
    z16, z32 = run(x[:50]), fp32(x[:50]) if fp32 is not None else teacher(x[:50])
    assert z16.dtype == torch.float32 and not torch.is_inference(z16)
    assert not torch.equal(z16, z32)  # really bf16 arithmetic ...
    assert torch.allclose(z16, z32, atol=0.05 * float(z32.abs().max()))  # ... and close to fp32
    assert rec.note() is not None and "bf16" in rec.note() and "agreement" in rec.note()  # type: ignore[operator]
    assert tp.TeacherPrecision.from_dict(rec.to_dict()) == rec


def test_an_unfaithful_bf16_teacher_is_refused_with_its_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    teacher, x = NearTies(), torch.randn(256, 1, 8, 8)
    with pytest.raises(TrainingError, match=r"not faithful.*top-1 agreement \d+\.\d+ %.*teacher_precision: fp32"):
        tp.choose_teacher_runner(teacher, x, None, "bf16")
    _cpu(monkeypatch, bf16=True, amx=True)  # auto takes the same check on any CPU ...
    monkeypatch.setattr(tp, "MIN_MACS", 0)  # ... for a teacher of any size
    run, rec = tp.choose_teacher_runner(teacher, x, None, "auto")
    assert run is None and rec.precision == "fp32"
    assert rec.agreement is not None and rec.agreement < tp.MIN_AGREEMENT
    assert "moved its outputs too far" in rec.reason and "stayed fp32" in (rec.note() or "")


def test_auto_without_native_bf16_stays_fp32_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, bf16=False, amx=False)
    monkeypatch.setattr(tp, "bf16_runner", lambda m: pytest.fail("no bf16 teacher should be built"))
    run, rec = tp.choose_teacher_runner(_net(), torch.randn(64, 1, 8, 8), None, "auto")
    assert run is None and rec.precision == "fp32" and "no native bf16" in rec.reason and rec.speedup is None


def test_auto_without_amx_stays_fp32_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    """AVX512-BF16 alone (e.g. AMD Zen 4) runs bf16 natively but measured 0.8-1.65x fp32: auto keeps fp32 there."""
    _cpu(monkeypatch, bf16=True, amx=False)
    monkeypatch.setattr(tp, "MIN_MACS", 0)
    monkeypatch.setattr(tp, "bf16_runner", lambda m: pytest.fail("no bf16 teacher should be built"))
    run, rec = tp.choose_teacher_runner(_net(), torch.randn(64, 1, 8, 8), None, "auto")
    assert run is None and rec.precision == "fp32" and rec.speedup is None
    assert "without AMX" in rec.reason and "teacher_precision: bf16" in rec.reason


def test_auto_uses_bf16_only_for_a_big_enough_teacher_and_never_by_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    _cpu(monkeypatch, bf16=True, amx=True)
    teacher, x = _net(), torch.randn(128, 1, 8, 8)
    macs = tp._count_macs(teacher, (1, 8, 8))
    assert macs is not None and 0 < macs < tp.MIN_MACS
    monkeypatch.setattr(tp, "bf16_runner", lambda m: pytest.fail("a small teacher is not tried in bf16"))
    run, rec = tp.choose_teacher_runner(teacher, x, None, "auto", batch_size=32)
    assert run is None and rec.precision == "fp32" and rec.macs == macs and rec.speedup is None
    assert "too small" in rec.reason and f"{macs / 1e6:.2f} M MACs" in rec.reason and rec.note() is None
    monkeypatch.undo()
    _cpu(monkeypatch, bf16=True, amx=True)
    monkeypatch.setattr(tp, "MIN_MACS", macs)  # big enough: bf16, however the timing came out
    clock = iter(range(10_000))
    monkeypatch.setattr(tp.time, "process_time", lambda: float(next(clock)) ** 2)  # every later call is slower
    run, rec = tp.choose_teacher_runner(teacher, x, None, "auto", batch_size=32)
    assert rec.precision == "bf16" and run is not None and rec.speedup is not None and rec.speedup < 1
    assert "bf16" in (rec.note() or "")


class Interrupt(Exception):
    pass


def test_a_bf16_teacher_run_resumes_bit_identically_without_choosing_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher, s = _net(), proto_splits()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, warmup_epochs=1)
    aug = NS(crop_pad=1, hflip=True)
    torch.manual_seed(1)
    init = _net(8)

    def run(workdir: Path, model: nn.Module, precision: str = "bf16") -> object:
        return train_model(model, s, cfg, workdir=workdir, seed=5, teacher=teacher, augment_cfg=aug, progress=False,
                           device="cpu", teacher_precision=precision)  # fmt: skip

    whole = run(tmp_path / "whole", copy.deepcopy(init))
    assert whole.teacher_precision is not None and whole.teacher_precision["precision"] == "bf16"
    calls = {"n": 0}

    def stop_in_epoch_two(module: nn.Module, args: tuple) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] == len(s.train.y) // cfg.batch_size + 2:
                raise Interrupt

    broken = copy.deepcopy(init)
    handle = broken.register_forward_pre_hook(stop_in_epoch_two)
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", broken)
    handle.remove()
    ck = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=True)
    assert ck["teacher_precision"]["precision"] == "bf16"
    with pytest.raises(CheckpointError, match="different run"):  # a pinned precision is part of the run
        run(tmp_path / "cut", copy.deepcopy(init), precision="fp32")
    monkeypatch.setattr("edgecompress.distill.trainer.choose_teacher_runner", lambda *a, **k: pytest.fail("re-chose"))
    resumed = run(tmp_path / "cut", copy.deepcopy(init))
    assert resumed.resumed_from_epoch == 1 and resumed.teacher_precision == ck["teacher_precision"]  # not re-timed
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_without_augmentation_the_teacher_precision_is_not_chosen(tmp_path: Path) -> None:
    res = train_model(_net(8), proto_splits(), TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=False),
                      workdir=tmp_path, seed=0, teacher=_net(), progress=False, device="cpu",
                      teacher_precision="bf16")  # fmt: skip
    assert res.teacher_precision is None  # the logits are cached once per sample in fp32


def test_config_names_the_choices() -> None:
    assert DistillConfig().teacher_precision == "auto"
    with pytest.raises(ValidationError, match="'auto', 'fp32' or 'bf16'"):
        DistillConfig(teacher_precision="fp16")


def test_the_report_row_of_a_distilled_member_says_what_its_teacher_ran_in() -> None:
    from edgecompress.pipeline.entries import chain_entries
    from edgecompress.pipeline.results import CalibrateResult, DistillResult, TeacherResult

    rec = tp.TeacherPrecision(
        "bf16", "auto", "AMX, big enough and faithful", speedup=3.1, agreement=1.0, kl=2e-6, rows=512
    )
    members = [
        {"name": "teacher", "role": "teacher"},
        {"name": "student", "role": "student", "teacher": "teacher", "teacher_precision": rec.to_dict()},
    ]
    teacher = TeacherResult(spec=None, params=10, macs=10)
    distill = DistillResult(student_spec={}, chain={"members": members})
    rows = chain_entries(teacher, distill, CalibrateResult(ece_measured=True))
    assert rows[0]["notes"] == []
    assert rows[1]["notes"] == [rec.note()] and "3.1x fp32's speed" in rows[1]["notes"][0]
    shipped = distill.model_copy(update={"scratch_baseline": {"shipped": True, "same_as_student": False}})
    notes = chain_entries(teacher, shipped, CalibrateResult(ece_measured=True))[1]["notes"]
    assert rec.note() not in notes and any("labels alone" in n for n in notes)  # the shipped model had no teacher
