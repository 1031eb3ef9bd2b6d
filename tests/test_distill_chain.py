"""The teacher → assistant → student chain: records, fidelity, resume, ensemble, search, assistant planning."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from conftest import bn_net
from edgecompress.distill.chain import distill_chain, plan_assistant_ratios, search_assistant
from edgecompress.distill.config import DistillConfig, LossConfig, MemberSpec, TrainConfig
from edgecompress.distill.trainer import train_model
from edgecompress.errors import ConfigError

torch.set_num_threads(1)


def _split(n: int, seed: int) -> NS:
    g = np.random.default_rng(seed)
    protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    y = g.integers(0, 4, n).astype(np.int64)
    return NS(x=(protos[y] + 0.6 * g.normal(size=(n, 1, 8, 8))).astype(np.float32), y=y)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    splits = NS(train=_split(192, 1), val=_split(64, 2), test=_split(64, 3))
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.1, augment=False)
    teacher = train_model(bn_net(16), splits, cfg, workdir=tmp_path_factory.mktemp("teacher"), seed=0, progress=False)
    return splits, teacher.model


def _cfg(**kw) -> DistillConfig:
    train = TrainConfig(epochs=2, batch_size=16, lr=0.1, augment=False)
    return DistillConfig(student=MemberSpec(prune_ratio=0.1), train=train, loss=LossConfig(temperature=2.0), **kw)


def test_chain_of_three_records_fidelity_and_resumes(setup, tmp_path: Path) -> None:
    splits, teacher = setup
    torch.manual_seed(1)
    members = [("ta", bn_net(8)), ("student", bn_net(4))]
    res = distill_chain(teacher, members, splits, _cfg(), workdir=tmp_path, seed=0, progress=False)
    assert [m.role for m in res.members] == ["teacher", "assistant", "student"]
    assert [m.teacher for m in res.members] == [None, "teacher", "ta"]
    for m in res.members:
        assert m.temperature > 0 and 0 <= m.accuracy <= 1 and m.nll > 0 and m.brier >= 0
        assert m.ece_before is not None and m.ece_after is not None and m.val_ece_after is not None
        assert m.params == sum(p.numel() for p in m.model.parameters())
    assert res.members[1].params > res.members[2].params
    for m in res.members[1:]:
        assert 0 <= m.fidelity_agreement <= 1 and m.fidelity_kl >= 0
        assert 0 <= m.teacher_agreement <= 1 and m.teacher_kl >= 0
        assert m.accuracy > 0.4  # chance is 0.25
    # the first hop's own teacher is the original teacher: both fidelities agree there
    assert res.members[1].fidelity_kl == pytest.approx(res.members[1].teacher_kl)
    # temperature scaling fitted on val does not raise val NLL, so val ECE usually drops; at least it is measured
    data = json.loads((tmp_path / "chain.json").read_text())
    assert [m["name"] for m in data["members"]] == ["teacher", "ta", "student"] and "model" not in data["members"][0]
    assert (tmp_path / "01-ta" / "checkpoint.pt").exists() and (tmp_path / "02-student" / "record.json").exists()

    # rerun: finished hops are loaded, not retrained, and give the same records
    torch.manual_seed(99)
    again = distill_chain(
        teacher,
        [("ta", bn_net(8)), ("student", bn_net(4))],
        splits,
        _cfg(),
        workdir=tmp_path,
        seed=0,
        progress=False,
    )
    assert again.to_dict() == {
        **res.to_dict(),
        "members": [
            {**m, "seconds": a["seconds"]}
            for m, a in zip(res.to_dict()["members"], again.to_dict()["members"], strict=True)
        ],
    }


def test_ensemble_of_assistants_and_label_smoothing_teacher(setup, tmp_path: Path, caplog) -> None:
    splits, teacher = setup
    torch.manual_seed(2)
    members = [("ta1", bn_net(8)), ("ta2", bn_net(6)), ("student", bn_net(4))]
    cfg = _cfg(
        assistants=[MemberSpec(prune_ratio=0.5), MemberSpec(prune_ratio=0.3)],
        ensemble=True,
        teacher_label_smoothing=True,
        max_accuracy_drop=1.0,  # tiny 2-epoch assistants: this test is about the ensemble, not the gate
    )
    with caplog.at_level(logging.WARNING, logger="edgecompress.distill.chain"):
        res = distill_chain(teacher, members, splits, cfg, workdir=tmp_path, seed=0, progress=False)
    assert any("label smoothing" in r.message and "T=1" in r.message for r in caplog.records)
    w = res.ensemble_weights
    assert len(w) == 2 and all(x >= 0 for x in w) and sum(w) == pytest.approx(1.0, abs=1e-5)
    assert res.student.teacher == "ensemble(ta1,ta2)"
    assert 0 <= res.student.teacher_agreement <= 1


def test_search_assistant_picks_best_by_val(setup, tmp_path: Path) -> None:
    splits, teacher = setup
    widths = {0.5: 8, 0.25: 5}
    res = search_assistant(
        teacher,
        lambda r: bn_net(widths[r]),
        lambda: bn_net(4),
        [0.25, 0.5],
        splits,
        _cfg(search_epochs=1),
        workdir=tmp_path,
        seed=0,
        progress=False,
    )
    assert [c["ratio"] for c in res.candidates] == [0.5, 0.25]
    best = max(c["student_val_accuracy"] for c in res.candidates)
    assert res.best_ratio == next(c["ratio"] for c in res.candidates if c["student_val_accuracy"] == best)
    assert json.loads((tmp_path / "search.json").read_text())["best_ratio"] == res.best_ratio


def test_plan_assistant_ratios() -> None:
    assert plan_assistant_ratios(0.25) == []
    assert plan_assistant_ratios(0.04) == pytest.approx([0.2])
    r = plan_assistant_ratios(0.01)
    assert r == pytest.approx([0.01 ** (1 / 3), 0.01 ** (2 / 3)])
    assert plan_assistant_ratios(0.01, n=1) == pytest.approx([0.1])
    assert all(math.isclose(b / a, r[0]) for a, b in zip([1.0, *r], [*r, 0.01], strict=True))
    with pytest.raises(ConfigError, match="outside"):
        plan_assistant_ratios(1.5)


def test_chain_refuses_an_undecided_loss(setup, tmp_path: Path) -> None:
    """loss.kind auto is decided by trials first; given to the chain directly it is a one-line error."""
    from conftest import one_line_message

    splits, teacher = setup
    cfg = _cfg().model_copy(update={"loss": LossConfig(kind="auto")})
    with pytest.raises(ConfigError, match="decided by trials") as exc:
        distill_chain(teacher, [("student", bn_net(4))], splits, cfg, workdir=tmp_path, seed=0, progress=False)
    one_line_message(exc.value)
