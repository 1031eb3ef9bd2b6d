"""Validators of the distillation config sections."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from edgecompress.distill.config import DistillConfig, LossConfig, MemberSpec, TrainConfig


def test_defaults_and_frozen() -> None:
    cfg = DistillConfig()
    assert cfg.train.epochs == 10 and cfg.loss.kind == "kd" and cfg.assistants == "none"
    with pytest.raises(ValidationError):
        cfg.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"model": {"family": "cnn"}, "prune_ratio": 0.5}, "exactly one"),
        ({"prune_ratio": 1.5}, "less than or equal to 1"),
        ({"model": {"params": {}}}, "needs 'family'"),
        ({"model": {"family": "cnn", "widht": 3}}, "unknown key"),
    ],
)
def test_member_spec_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MemberSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_assistants": 2}, "only used with assistants: planned or auto"),
        ({"ensemble": True}, "ensemble needs a fixed set of assistants"),
        ({"ensemble": True, "assistants": "auto"}, "ensemble needs a fixed set of assistants"),
        ({"ensemble": True, "assistants": [{"prune_ratio": 0.5}]}, "at least 2 assistants"),
        ({"ensemble": True, "assistants": "planned", "n_assistants": 1}, "n_assistants >= 2"),
        ({"assistants": "planned", "loss": {"kind": "ce"}}, "ignores the teachers"),
        ({"assistants": "search", "loss": {"kind": "auto"}}, "assistants: search does not run"),
        ({"assistants": "auto", "datafree": {}}, "datafree distillation has no trials"),
        ({"trials": {"kd_alphas": [0.0]}}, "kd_alphas"),
        ({"trials": {"kd_temperatures": [-1]}}, "kd_temperatures"),
        ({"trials": {"budget": 0}}, "greater than 0"),
        ({"assistants": [{"prune_ratio": 0.05}]}, "assistants sit between"),
        ({"search_candidates": [0.5, 1.0]}, "outside"),
        ({"assistants": "auto", "loss": {"kind": "ce"}}, "ignores the teachers"),
        ({"loss": {"kind": "kl"}}, "unknown loss 'kl'; use one of: ce, kd, dist, bdkd"),
        ({"trials": {"scratch_baseline": True}}, "moved: use distill.scratch_baseline"),
        ({"train": {"epochs": 2, "warmup_epochs": 3}}, "warmup_epochs=3"),
        ({"trian": {}}, "Extra inputs"),
    ],
)
def test_distill_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistillConfig(student={"prune_ratio": 0.1}, **kwargs)


def test_valid_configs() -> None:
    cfg = DistillConfig(
        student={"model": {"family": "cnn", "params": {"widths": [8]}}, "name": "tiny"},
        assistants=[{"prune_ratio": 0.5}, {"prune_ratio": 0.25}],
        ensemble=True,
        train=TrainConfig(optimizer="adamw", lr=1e-3, schedule="constant", max_steps_per_epoch=5),
        loss=LossConfig(kind="bdkd", mbls_margin=10.0),
    )
    assert cfg.student.name == "tiny" and len(cfg.assistants) == 2
    assert DistillConfig(assistants="planned", n_assistants=2, ensemble=True).n_assistants == 2


def test_auto_means_decided_by_trials() -> None:
    """`assistants: auto` and `loss.kind: auto` run the decide stage; the old fixed geometric plan is 'planned'.
    A fixed chain with loss.kind auto is allowed: the loss is decided on the direct hop and the chain kept."""
    assert DistillConfig(assistants="auto").decides and DistillConfig(loss={"kind": "auto"}).decides
    assert not DistillConfig(assistants="planned").decides and not DistillConfig().decides
    explicit = DistillConfig(assistants=[{"prune_ratio": 0.5}], loss={"kind": "auto"})
    assert explicit.decides and explicit.trials.scratch
    cfg = DistillConfig(assistants="auto", n_assistants=2)  # n_assistants shapes the planned candidate
    assert cfg.trials.kd_temperatures is None and cfg.trials.kd_alphas is None  # None: the losses' own grids
    assert 0 < cfg.trials.budget <= 0.35 and cfg.trials.eta == 3 and cfg.scratch_baseline


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, edgecompress.distill, edgecompress.distill.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # noqa: S603
    assert out.stdout.strip() == "False"


def test_round_to_only_with_prune_ratio():
    import pytest
    from pydantic import ValidationError

    from edgecompress.distill.config import MemberSpec

    assert MemberSpec(prune_ratio=0.1, round_to=16).round_to == 16
    with pytest.raises(ValidationError, match="round_to applies to pruned members only"):
        MemberSpec(model={"family": "cnn"}, round_to=16)


def test_round_to_reaches_the_pruned_student():
    from edgecompress.models import ModelSpec, build_model, prune_to_ratio

    teacher = build_model(
        ModelSpec(family="cnn", params={"channels": [32, 64, 128]}), in_channels=1, num_classes=10, input_size=(8, 8)
    )
    student = prune_to_ratio(teacher, (1, 8, 8), 0.3, round_to=8)
    import torch.nn as nn

    widths = [m.out_channels for m in student.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths


def test_train_lr_is_auto_by_default_or_a_positive_number() -> None:
    import pytest
    from pydantic import ValidationError

    cfg = TrainConfig()
    assert cfg.lr == "auto" and cfg.grad_clip == 5.0 and cfg.max_recoveries == 3
    assert TrainConfig(lr="1e-3").lr == 0.001  # YAML reads 1e-3 (no dot) as a string
    assert TrainConfig(grad_clip=None).grad_clip is None
    for bad in (-0.1, 0, "fast", True, float("nan")):
        with pytest.raises(ValidationError, match="lr must be a positive number or 'auto'") as err:
            TrainConfig(lr=bad)
        assert err.value.error_count() == 1


def test_kd_defaults_to_the_measured_temperature_and_dist_keeps_its_papers() -> None:
    """A config leaves T / alpha out (None): the loss class's default applies, one place per loss."""
    from edgecompress.distill.config import LossConfig
    from edgecompress.distill.losses import resolve_loss

    assert LossConfig().temperature is None and resolve_loss(LossConfig()).temperature == 2.0
    assert resolve_loss(LossConfig(kind="dist")).temperature == 1.0  # the paper's T on ImageNet, CE at weight 1
    assert resolve_loss(LossConfig(kind="dist", temperature=4.0)).temperature == 4.0
