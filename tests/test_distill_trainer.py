"""train_model: determinism, resume after SIGKILL, NaN guard, selection on val, KD beats chance."""

from __future__ import annotations

import copy
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

from edgecompress.distill.config import LossConfig, TrainConfig
from edgecompress.distill.evaluate import predict_logits
from edgecompress.distill.trainer import CHECKPOINT, epoch_batches, lr_at, train_model
from edgecompress.errors import CheckpointError, TrainingError

torch.set_num_threads(1)

# Tiny "digits-like" data: 4 class prototypes (1x8x8) plus noise. Also imported by the SIGKILL child process.
HELPERS = textwrap.dedent(
    """
    import time
    from types import SimpleNamespace as NS
    import numpy as np
    import torch

    SLOW = 0.0

    def split(n, seed, noise=0.8):
        g = np.random.default_rng(seed)
        protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
        y = g.integers(0, 4, n).astype(np.int64)
        x = (protos[y] + noise * g.normal(size=(n, 1, 8, 8))).astype(np.float32)
        return NS(x=x, y=y)

    def splits():
        return NS(train=split(256, 1), val=split(64, 2), test=split(64, 3))

    class Net(torch.nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.BatchNorm2d(width), torch.nn.ReLU(),
                torch.nn.Dropout(0.1), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4 * width, 4))

        def forward(self, x):
            if self.training and SLOW:
                time.sleep(SLOW)
            return self.body(x)

    def run(workdir, epochs=6):
        from edgecompress.distill.config import TrainConfig
        from edgecompress.distill.trainer import train_model
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.1, warmup_epochs=1)
        aug = NS(crop_pad=1, hflip=True)
        return train_model(Net(), splits(), cfg, workdir=workdir, seed=7, augment_cfg=aug, progress=False)

    if __name__ == "__main__":
        import sys
        torch.set_num_threads(1)
        SLOW = 0.03
        run(sys.argv[1])
    """
)


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("helpers") / "kill_child.py"
    path.write_text(HELPERS)
    spec = importlib.util.spec_from_file_location("kill_child", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.PATH = path
    return mod


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights(helpers, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = helpers.Net(16)
    s = helpers.splits()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    torch.manual_seed(1)
    init = helpers.Net()
    runs = [
        train_model(
            copy.deepcopy(init),
            s,
            cfg,
            workdir=tmp_path / f"r{i}",
            seed=3,
            teacher=teacher,
            augment_cfg=NS(crop_pad=1, hflip=True),
            progress=False,
        )
        for i in range(2)
    ]
    assert _same_weights(runs[0].model, runs[1].model)
    assert [h["train_loss"] for h in runs[0].history] == [h["train_loss"] for h in runs[1].history]
    other = train_model(
        copy.deepcopy(init),
        s,
        cfg,
        workdir=tmp_path / "other",
        seed=4,
        teacher=teacher,
        augment_cfg=NS(crop_pad=1, hflip=True),
        progress=False,
    )
    assert not _same_weights(runs[0].model, other.model)


def test_resume_after_sigkill_is_bit_identical(helpers, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(helpers.PATH), str(killed)], env=env)  # noqa: S603
    ckpt, deadline = killed / CHECKPOINT, time.monotonic() + 45
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["epoch"] >= 2:
                break
            time.sleep(0.02)
        time.sleep(0.1)  # into epoch 3
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 2 <= done < 6

    resumed = helpers.run(killed)
    assert resumed.resumed_from_epoch == done
    reference = helpers.run(tmp_path / "reference")
    assert reference.resumed_from_epoch == 0
    assert _same_weights(resumed.model, reference.model)
    assert resumed.history == [
        {**h, "seconds": r["seconds"]} for h, r in zip(reference.history, resumed.history, strict=True)
    ]
    assert resumed.best_epoch == reference.best_epoch
    # A finished run returns at once with the same model.
    again = helpers.run(killed)
    assert again.resumed_from_epoch == 6 and _same_weights(again.model, reference.model)


def test_checkpoint_of_other_run_is_refused(helpers, tmp_path: Path) -> None:
    helpers.run(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match="different run"):
        helpers.run(tmp_path, epochs=2)


class NaNAfter(torch.nn.Module):
    """Returns NaN logits from the n-th training forward on."""

    def __init__(self, inner: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.n:
                return z * float("nan")
        return z


def test_nan_loss_raises_with_epoch_and_step(helpers, tmp_path: Path) -> None:
    # without automatic recovery (tests/test_distill_selftune.py has it): 8 steps per epoch; call 11 = epoch 2, step 3
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, max_recoveries=0)
    with pytest.raises(TrainingError, match=r"epoch 2 step 3") as err:
        train_model(NaNAfter(helpers.Net(), 11), helpers.splits(), cfg, workdir=tmp_path, seed=0, progress=False)
    assert "lower the learning rate" in str(err.value)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"] == 1  # last good checkpoint kept


class NoTest:
    """Splits whose test split must never be read by training."""

    def __init__(self, s: NS) -> None:
        self.train, self.val = s.train, s.val

    @property
    def test(self):
        raise AssertionError("train_model read the test split")


def test_selection_uses_val_and_never_test(helpers, tmp_path: Path) -> None:
    s = helpers.splits()
    rng = np.random.default_rng(5)
    s.val = NS(x=s.val.x, y=rng.integers(0, 4, len(s.val.y)).astype(np.int64))  # noisy val: accuracy wanders
    torch.manual_seed(0)
    res = train_model(
        helpers.Net(), NoTest(s), TrainConfig(epochs=4, batch_size=32, lr=0.1), workdir=tmp_path, seed=0, progress=False
    )
    accs = [h["val_accuracy"] for h in res.history]
    assert res.best_val_accuracy == max(accs)
    assert res.best_epoch == res.history[accs.index(max(accs))]["epoch"]
    val_acc = (predict_logits(res.model, s.val.x).argmax(1).numpy() == s.val.y).mean()
    assert val_acc == pytest.approx(res.best_val_accuracy)


def test_kd_student_beats_chance(helpers, tmp_path: Path) -> None:
    s = helpers.splits()
    torch.manual_seed(0)
    teacher = train_model(
        helpers.Net(16),
        s,
        TrainConfig(epochs=3, batch_size=32, lr=0.1, augment=False),
        workdir=tmp_path / "t",
        seed=0,
        progress=False,
    ).model
    torch.manual_seed(1)
    res = train_model(
        helpers.Net(4),
        s,
        TrainConfig(epochs=3, batch_size=32, lr=0.1, augment=False),
        workdir=tmp_path / "s",
        seed=0,
        teacher=teacher,
        loss=LossConfig(kind="kd", temperature=4.0),
        progress=False,
    )
    assert "train_kd" in res.history[0]
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    test_acc = (predict_logits(res.model, s.test.x).argmax(1).numpy() == s.test.y).mean()
    assert test_acc > 0.5  # chance is 0.25


def test_schedule_and_batches() -> None:
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1.0, warmup_epochs=1)
    assert [round(lr_at(s, cfg, 4), 4) for s in range(8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.8536, 0.5, 0.1464]
    b = epoch_batches(10, TrainConfig(batch_size=4), seed=0, epoch=0)
    assert [len(x) for x in b] == [4, 4, 2] and sorted(torch.cat(b).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(b), torch.cat(epoch_batches(10, TrainConfig(batch_size=4), seed=0, epoch=1)))
    shards = [epoch_batches(10, TrainConfig(batch_size=4), seed=0, epoch=0, rank=r, world=2) for r in range(2)]
    seen = torch.cat([torch.cat(s) for s in shards]).tolist()
    assert sorted(seen) == sorted(torch.cat(b[:2]).tolist())  # same global batches; the tail of 2 < 2·world dropped


def test_precomputed_teacher_logits_match_running_the_teacher(helpers, tmp_path: Path) -> None:
    """Logits computed once by the caller train the same student as the trainer's own cache; wrong rows are refused."""
    from edgecompress.errors import DataError

    s = helpers.splits()
    torch.manual_seed(0)
    teacher = helpers.Net(16).eval()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, augment=False)
    torch.manual_seed(1)
    init = helpers.Net(4)
    own = train_model(copy.deepcopy(init), s, cfg, workdir=tmp_path / "own", seed=0, teacher=teacher, progress=False)
    given = train_model(
        copy.deepcopy(init),
        s,
        cfg,
        workdir=tmp_path / "given",
        seed=0,
        teacher=teacher,
        teacher_logits=predict_logits(teacher, s.train.x),
        progress=False,
    )
    assert _same_weights(own.model, given.model)
    with pytest.raises(DataError, match="teacher_logits has 10 rows"):
        train_model(
            copy.deepcopy(init),
            s,
            cfg,
            workdir=tmp_path / "bad",
            seed=0,
            teacher=teacher,
            teacher_logits=torch.zeros(10, 4),
            progress=False,
        )
