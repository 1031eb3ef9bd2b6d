"""Data-free distillation resumes mid-run: interrupted (in-process, or a real process SIGKILLed) then rerun, the
student comes out bit-identical to an uninterrupted run's; checkpoints of other runs or unreadable ones are ignored.

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
        "synthesis_batches": 6,
        "batch_size": 8,
        "k_inner_steps": 2,
        "deepinversion_steps": 3,
        "generator_width": 4,
        "z_dim": 8,
        "adv_warmup_batches": 1,
        "bank_size": 24,  # smaller than 6 batches of 8: the bank drops samples (fifo) or draws (reservoir)
        "student_steps_per_batch": 2,
        "student_batch_size": 8,
        "student_epochs": 2,
        "checkpoint_every": 2,
    }
    if method == "fastdfkd":
        base["reset_l0_at_batch"] = 5  # after the resume point: the re-init draws from the restored global RNG
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


def _finished(workdir: Path) -> None:
    assert (workdir / "datafree.json").is_file() and (workdir / "student.pt").is_file()
    assert not (workdir / CHECKPOINT).exists()  # deleted once the result is saved


def _resumed(caplog: pytest.LogCaptureFixture, where: str) -> bool:
    return any("resuming data-free" in r.getMessage() and where in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def reference() -> dict[str, DataFreeResult]:
    """Uninterrupted runs without a workdir (no checkpoints at all)."""
    return {
        "fastdfkd": _distill(_config()),
        "deepinversion": _distill(_config("deepinversion", bank_policy="reservoir")),
    }


@pytest.mark.parametrize(
    ("method", "stop_at", "where"),
    [
        ("fastdfkd", "batch 5/6", "at batch 4/6, student epoch 0/2"),
        ("fastdfkd", "student epoch 2/2", "at batch 6/6, student epoch 1/2"),
        ("deepinversion", "batch 4/6", "at batch 2/6, student epoch 0/2"),
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
    extra = {"bank_policy": "reservoir"} if method == "deepinversion" else {}
    cfg = _config(method, **extra)
    _interrupt(cfg, tmp_path, stop_at)
    caplog.set_level(logging.INFO, logger=LOGGER)
    rng_before = torch.get_rng_state()
    res = _distill(cfg, workdir=tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is still left alone
    assert _resumed(caplog, where), [r.getMessage() for r in caplog.records]
    assert res.resumed_from_batch == int(where.split("batch ")[1].split("/")[0])
    _assert_same(res, reference[method])
    _finished(tmp_path)


def test_checkpoint_every_changes_nothing_and_a_resume_may_use_another(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupt(_config(checkpoint_every=1), tmp_path, "batch 4/6")  # checkpointed after every batch: at 3
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(checkpoint_every=5), workdir=tmp_path)
    assert _resumed(caplog, "at batch 3/6")
    _assert_same(res, reference["fastdfkd"])


def test_checkpoint_of_another_run_is_ignored_with_a_warning(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupt(_config(), tmp_path, "batch 5/6", seed=0)
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(), seed=1, workdir=tmp_path)
    assert any("different run" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert not _resumed(caplog, "")
    assert res.resumed_from_batch == 0 and len(res.history) == 6
    _assert_same(res, _distill(_config(), seed=1))
    _finished(tmp_path)


def test_truncated_checkpoint_is_ignored_with_a_warning(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupt(_config(), tmp_path, "batch 5/6")
    path = tmp_path / CHECKPOINT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(), workdir=tmp_path)
    assert any("cannot be read" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert res.resumed_from_batch == 0
    _assert_same(res, reference["fastdfkd"])
    _finished(tmp_path)


def test_checkpoint_with_contents_that_do_not_fit_is_ignored(
    reference: dict[str, DataFreeResult], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same fingerprint, broken contents (a partial load must not leak into the fresh start)."""
    _interrupt(_config(), tmp_path, "batch 5/6")
    path = tmp_path / CHECKPOINT
    ck = torch.load(path, weights_only=True)
    ck["synthesizer"] = {}  # the student and optimizer load, then the generator's state is missing
    torch.save(ck, path)
    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(), workdir=tmp_path)
    assert any("do not fit" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert res.resumed_from_batch == 0
    _assert_same(res, reference["fastdfkd"])


_CHILD = """
import logging, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
import test_datafree_resume as t


class Pace(logging.Handler):  # a slow run: the parent has time to see the checkpoint and kill mid-run
    def emit(self, record):
        time.sleep(0.1)


lg = logging.getLogger(t.LOGGER)
lg.setLevel(logging.DEBUG)
lg.addHandler(Pace())
t._distill(t._config(**t.KILLED_RUN), workdir=sys.argv[1])
"""
KILLED_RUN: dict[str, Any] = {"synthesis_batches": 30, "checkpoint_every": 3, "student_epochs": 1}


def test_sigkilled_process_resumes_bit_identical(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    workdir = tmp_path / "synthesis"
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
        while not (workdir / CHECKPOINT).is_file():
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before its first checkpoint:\n{err[-3000:]!r}")
            assert time.monotonic() < end, "timed out waiting for the first checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (workdir / "datafree.json").exists(), "the run finished before the kill"

    caplog.set_level(logging.INFO, logger=LOGGER)
    res = _distill(_config(**KILLED_RUN), workdir=workdir)
    assert _resumed(caplog, "at batch "), [r.getMessage() for r in caplog.records]
    assert 3 <= res.resumed_from_batch < 30
    _assert_same(res, _distill(_config(**KILLED_RUN)))
    _finished(workdir)
