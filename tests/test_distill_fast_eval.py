"""distill.fast_eval: the frozen ONNX Runtime runner matches eager, refuses what it cannot run, and training through
it (teacher on augmented batches, channels-last student) stays seeded and resumable bit for bit."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch
from torch import nn

from conftest import proto_splits, two_conv_net
from edgecompress.distill.config import TrainConfig
from edgecompress.distill.fast_eval import PARITY_RTOL, channels_last_ok, fast_logits, frozen_runner
from edgecompress.distill.trainer import train_model


def _net(width: int = 8, classes: int = 4) -> nn.Module:
    return two_conv_net(width, classes)


def _trained_bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = _net(16)
    net.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them is exercised
        for _ in range(5):
            net(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    return net.eval()


def test_frozen_runner_matches_eager_and_leaves_the_model_alone() -> None:
    net = _trained_bn_net()
    net.train()  # the runner must use eval-mode BatchNorm on a copy, and not change the caller's mode
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(40, 1, 8, 8)
    run = frozen_runner(net, x[:8])
    assert run is not None
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    got = run(x)
    with torch.inference_mode():
        ref = copy.deepcopy(net).eval()(x)
    assert got.shape == ref.shape == (40, 4)
    assert (got - ref).abs().max().item() <= PARITY_RTOL * max(1.0, ref.abs().max().item())
    assert torch.equal(run(x), got)  # a pure function of its input: the same bits on every call
    assert torch.equal(run(x.contiguous(memory_format=torch.channels_last)), got)


def test_frozen_runner_refuses_models_it_cannot_run_exactly() -> None:
    class TwoOutputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.net(x)
            return z, z * 2

    class FirstLogit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)[:, 0]  # 1-D output: not logits

    x = torch.randn(8, 1, 8, 8)
    assert frozen_runner(TwoOutputs(), x) is None
    assert frozen_runner(FirstLogit(), x) is None
    assert frozen_runner(_net(), torch.randn(1, 1, 8, 8)) is None  # no probe batch to check parity on


def test_fast_logits_equals_eager_within_parity() -> None:
    net = _trained_bn_net()
    x = torch.randn(1100, 1, 8, 8)  # above MIN_ROWS: the frozen graph is built
    got = fast_logits(net, x)
    with torch.inference_mode():
        ref = net(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= PARITY_RTOL * max(1.0, ref.abs().max().item())


def test_channels_last_refused_for_a_layout_dependent_forward(tmp_path: Path) -> None:
    class ViewAfterConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            return self.fc(h.view(h.size(0), -1))  # fails on a channels-last tensor

    x = torch.randn(4, 1, 8, 8)
    assert channels_last_ok(_net(), x)
    assert not channels_last_ok(ViewAfterConv(), x)
    res = train_model(
        ViewAfterConv(),
        proto_splits(),
        TrainConfig(epochs=1, batch_size=32, lr=0.05),
        workdir=tmp_path,
        seed=0,
        progress=False,
    )
    assert res.model.conv.weight.is_contiguous()


class Interrupt(Exception):
    pass


def test_kd_with_augmentation_through_the_frozen_teacher_resumes_bit_identically(tmp_path: Path) -> None:
    """Teacher through ORT on every augmented batch, channels-last student: an interrupted run resumed from its
    checkpoint ends with the same bits as an uninterrupted one, and the result is in the usual layout."""
    teacher, s = _trained_bn_net(), proto_splits()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, warmup_epochs=1)
    aug = NS(crop_pad=1, hflip=True)
    torch.manual_seed(1)
    init = _net()

    def run(workdir: Path, model: nn.Module) -> object:
        return train_model(
            model, s, cfg, workdir=workdir, seed=5, teacher=teacher, augment_cfg=aug, progress=False, device="cpu"
        )

    whole = run(tmp_path / "whole", copy.deepcopy(init))
    calls = {"n": 0}
    steps_per_epoch = len(s.train.y) // cfg.batch_size

    def stop_in_epoch_two(module: nn.Module, args: tuple) -> None:
        if module.training:
            calls["n"] += 1
            if calls["n"] == steps_per_epoch + 2:
                raise Interrupt

    broken = copy.deepcopy(init)
    handle = broken.register_forward_pre_hook(stop_in_epoch_two)
    with pytest.raises(Interrupt):
        run(tmp_path / "cut", broken)
    handle.remove()
    resumed = run(tmp_path / "cut", copy.deepcopy(init))
    assert resumed.resumed_from_epoch == 1
    sa, sb = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["train_loss"] for h in whole.history] == [h["train_loss"] for h in resumed.history]
    assert all(p.is_contiguous() for p in whole.model.parameters())
