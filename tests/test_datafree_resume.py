"""Data-free distillation resumes mid-run: interrupted (in-process, or a real process SIGKILLed with pool images
appended after its last checkpoint) then rerun, the student comes out bit-identical to an uninterrupted run's;
checkpoints of other runs or unreadable ones are ignored.

The interruptions are real: an exception raised from a logging handler at a given progress line (the run's own log),
and SIGKILL from outside on a subprocess. Nothing of the runner is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import bn_teacher as _bn_teacher
from edgecompress.distill.datafree import DataFreeConfig, DataFreeResult, datafree_distill
from edgecompress.distill.datafree.runner import CHECKPOINT

torch.set_num_threads(1)
pytestmark = pytest.mark.timeout(120)

LOGGER = "edgecompress.distill.datafree.runner"
SHAPE = (1, 8, 8)
CLASSES = 4
_g = torch.Generator().manual_seed(5)
VAL = (torch.randn(32, *SHAPE, generator=_g).numpy(), (torch.arange(32) % CLASSES).numpy())  # for the curve


def _teacher() -> nn.Module:
    """A small BN CNN with non-trivial running statistics (as a trained teacher has), the same in every process."""
    return _bn_teacher(0)


def _student() -> nn.Module:
    """A smaller BN CNN with dropout (its masks draw from the global RNG, which a checkpoint must carry)."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(16, CLASSES),
    )


def _config(method: str = "fastdfkd", **kw: Any) -> DataFreeConfig:
    base: dict[str, Any] = {
        "method": method,
        "rounds": 6,
        "warmup_rounds": 1,
        "batch_size": 8,
        "k_inner_steps": 2,
        "di_steps": 3,
        "generator_width": 4,
        "z_dim": 8,
        "student_steps_per_round": 2,
        "student_batch_size": 8,
        "checkpoint_every": 2,
        "flip": False,
        "eval_every": 1,
    }
    base["reset_l0_round"] = 5 if method == "fastdfkd" else None  # after the resume point: draws the restored RNG
    base.update(kw)
    return DataFreeConfig(**base)


def _distill(cfg: DataFreeConfig, *, seed: int = 0, workdir: Path | str | None = None) -> DataFreeResult:
    return datafree_distill(
        _teacher(),
        _student(),
        cfg,
        input_shape=SHAPE,
        num_classes=CLASSES,
        seed=seed,
        workdir=workdir,
        progress=False,
        mean=[0.5],
        std=[0.25],
        val=VAL,
    )


class _Stop(Exception):
    """Raised by the interrupting log handler."""


class _StopAt(logging.Handler):
    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            raise _Stop(self.text)


@contextlib.contextmanager
def _runner_log(handler: logging.Handler) -> Iterator[None]:
    """Attach ``handler`` to the runner's logger at DEBUG (its per-batch lines with progress=False)."""
    lg = logging.getLogger(LOGGER)
    level = lg.level
    lg.setLevel(logging.DEBUG)
    lg.addHandler(handler)
    try:
        yield
    finally:
        lg.removeHandler(handler)
        lg.setLevel(level)


def _interrupt(cfg: DataFreeConfig, workdir: Path, at: str, *, seed: int = 0) -> None:
    """Run until the progress line containing ``at`` is logged, and stop there with an exception."""
    with _runner_log(_StopAt(at)), pytest.raises(_Stop):
        _distill(cfg, seed=seed, workdir=workdir)
    assert (workdir / CHECKPOINT).is_file()
    assert (workdir / "pool" / "images.u8").stat().st_size > 0  # the stopped round's batch was pooled
    assert not (workdir / "datafree.json").exists()


def _assert_same(a: DataFreeResult, b: DataFreeResult) -> None:
    sa, sb = a.student.state_dict(), b.student.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert torch.equal(a.bank_x, b.bank_x) and torch.equal(a.bank_y, b.bank_y)
    assert len(a.history) == len(b.history)

    def numbers(r: DataFreeResult) -> list[dict[str, float | None]]:
        return [{k: v for k, v in h.items() if k != "synthesis_seconds"} for h in r.history]

    assert numbers(a) == numbers(b)
    assert a.curve == b.curve and a.pool_images == b.pool_images


def _finished(workdir: Path) -> None:
    assert (workdir / "datafree.json").is_file() and (workdir / "student.pt").is_file()
    assert not (workdir / CHECKPOINT).exists()  # deleted once the result is saved


def _resumed(caplog: pytest.LogCaptureFixture, where: str) -> bool:
    return any("resuming data-free" in r.getMessage() and where in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def reference() -> dict[str, DataFreeResult]:
    """Uninterrupted runs without a workdir (no checkpoints at all)."""
    return {"fastdfkd": _distill(_config()), "deepinversion": _distill(_config("deepinversion"))}


@pytest.mark.parametrize(
    ("method", "stop_at", "where"),
    [
        ("fastdfkd", "round 5/6", "at round 4/6"),
        ("fastdfkd", "round 6/6", "at round 4/6"),
        ("deepinversion", "round 4/6", "at round 2/6"),
    ],
)
def test_interrupted_run_resumes_bit_identical(
    reference: dict[str, DataFreeResult],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    method: str,
    stop_at: str,
    where: str,
) -> None:
    cfg = _config(method)
    _interrupt(cfg, tmp_path, stop_at)
    caplog.set_level(logging.INFO, logger=LOGGER)
    rng_before = torch.get_rng_state()
    res = _distill(cfg, workdir=tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is still left alone
    assert _resumed(caplog, where), [r.getMessage() for r in caplog.records]
    assert res.resumed_from_round == int(where.split("round ")[1].split("/")[0])
    _assert_same(res, reference[method])
    _finished(tmp_path)


def test_checkpoint_every_changes_nothing_and_a_resume_may_use_another(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupt(_config(checkpoint_every=1), tmp_path, "round 4/6")  # checkpointed after every round: at 3
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(checkpoint_every=5), workdir=tmp_path)
    assert _resumed(caplog, "at round 3/6")
    _assert_same(res, reference["fastdfkd"])


def test_checkpoint_of_another_run_is_ignored_with_a_warning(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupt(_config(), tmp_path, "round 5/6", seed=0)
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(), seed=1, workdir=tmp_path)
    assert any("different run" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert not _resumed(caplog, "")
    assert res.resumed_from_round == 0 and len(res.history) == 6
    _assert_same(res, _distill(_config(), seed=1))
    _finished(tmp_path)


def test_truncated_checkpoint_is_ignored_with_a_warning(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupt(_config(), tmp_path, "round 5/6")
    path = tmp_path / CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(), workdir=tmp_path)
    assert any("cannot be read" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert res.resumed_from_round == 0
    _assert_same(res, reference["fastdfkd"])
    _finished(tmp_path)


def test_checkpoint_with_contents_that_do_not_fit_is_ignored(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same fingerprint, broken contents (a partial load must not leak into the fresh start)."""
    _interrupt(_config(), tmp_path, "round 5/6")
    path = tmp_path / CHECKPOINT
    ck = torch.load(path, weights_only=True)
    ck["synthesizer"] = {}  # the student and optimizer load, then the generator's state is missing
    torch.save(ck, path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(), workdir=tmp_path)
    assert any("do not fit" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert res.resumed_from_round == 0
    _assert_same(res, reference["fastdfkd"])


_CHILD = """
import logging, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import test_datafree_resume as t


class Pace(logging.Handler):  # a slow run: the parent has time to see the checkpoint and kill mid-run
    def emit(self, record):
        time.sleep(0.2)


lg = logging.getLogger(t.LOGGER)
lg.setLevel(logging.DEBUG)
lg.addHandler(Pace())
t._distill(t._config(**t.KILLED_RUN), workdir=sys.argv[1])
"""
KILLED_RUN: dict[str, Any] = {"rounds": 30, "checkpoint_every": 3}


def test_sigkilled_process_resumes_bit_identical(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kill -9 after the pool took images its last checkpoint does not count: the rerun drops them and resumes."""
    workdir = tmp_path / "synthesis"
    images = workdir / "pool" / "images.u8"
    per_round = 8 * 64  # batch 8 of 1x8x8 bytes
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).resolve().parent)))
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, str(script), str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        end = time.monotonic() + 90
        while True:  # the first checkpoint is written, and a later round's batch is already in the pool
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before its first checkpoint:\n{err[-3000:]!r}")
            assert time.monotonic() < end, "timed out waiting for the first checkpoint"
            if (workdir / CHECKPOINT).is_file() and images.stat().st_size % (3 * per_round) != 0:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "datafree.json").exists(), "the run finished before the kill"
    counted = int(torch.load(workdir / CHECKPOINT, weights_only=True)["pool_count"])
    assert images.stat().st_size > counted * 64  # images appended after the checkpoint: they must be dropped

    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(**KILLED_RUN), workdir=workdir)
    assert _resumed(caplog, "at round "), [r.getMessage() for r in caplog.records]
    assert 3 <= res.resumed_from_round < 30 and res.resumed_from_round * 8 == counted
    assert images.stat().st_size == 30 * per_round
    _assert_same(res, _distill(_config(**KILLED_RUN)))
    _finished(workdir)
