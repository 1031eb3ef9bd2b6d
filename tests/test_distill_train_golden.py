"""train_model against golden values recorded from the trainer before it became a loop with hooks (issue 27).

Tiny seeded runs cover every path of the loop: KD with augmentation (the teacher online through its frozen graph, in
bf16, eagerly; clean targets computed once), KD from the caller's teacher logits, ``lr: auto`` (the range test), a
non-finite loss recovered from, a run killed after that recovery and resumed, an exploded val NLL recovered from and
then kept when no recovery is left, a recovery budget spent (the error text), and a model that refuses channels-last.
Two kinds of values are kept in ``golden/trainer.json``:

* **portable** — each run's checkpoint fingerprint (existing run folders must still resume, so it must be the same
  bytes for the same inputs) and the checkpoint's fields with their types and tensor shapes: asserted everywhere;
* **numbers** — digests of the final weights and of the checkpoint, the history, events, result and log lines:
  bit-identical only on the same torch build and CPU kernels, so asserted where the recorded environment matches and
  skipped with the reason elsewhere.

Re-record (only when a change of the numbers is intended, and say so in the commit):
``PYTHONPATH=src python tests/test_distill_train_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import sys
from pathlib import Path
from types import SimpleNamespace as NS
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

GOLDEN = Path(__file__).parent / "golden" / "trainer.json"


def environment() -> dict[str, str]:
    """What the numbers depend on: the torch build and the CPU kernels it picks."""
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }


# ------------------------------------------------------------------------------------------------- data and models


def _split(n: int, seed: int, noise: float = 0.8) -> NS:
    g = np.random.default_rng(seed)
    protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    y = g.integers(0, 4, n).astype(np.int64)
    return NS(x=(protos[y] + noise * g.normal(size=(n, 1, 8, 8))).astype(np.float32), y=y)


def _splits(noisy_val: bool = False) -> NS:
    s = NS(train=_split(256, 1), val=_split(64, 2))
    if noisy_val:  # labels unrelated to the inputs: val accuracy stays at chance, the restore point stays at epoch 0
        s.val = NS(x=s.val.x, y=np.random.default_rng(5).integers(0, 4, 64).astype(np.int64))
    return s


def _net(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Dropout(0.1),  # draws from the global stream, re-seeded each epoch
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * width, 4),
    )


class ViewNet(nn.Module):
    """Flattens with ``x.view`` after its convolutions: refuses channels-last."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv(x)), 2)
        return self.fc(x.view(x.size(0), -1))


class Interrupt(Exception):
    """A stand-in for a killed process."""


class Faulty(nn.Module):
    """Training forward number ``nan_at`` returns NaN logits (or every one from it on, with ``nan_after``); number
    ``crash_at`` raises :class:`Interrupt`."""

    def __init__(self, inner: nn.Module, nan_at: int | None = None, crash_at: int | None = None,
                 nan_after: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.inner, self.nan_at, self.crash_at, self.nan_after, self.calls = inner, nan_at, crash_at, nan_after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.inner(x)
        if self.training:
            self.calls += 1
            if self.crash_at is not None and self.calls >= self.crash_at:
                raise Interrupt
            if self.nan_at is not None and (self.calls == self.nan_at or self.nan_after and self.calls > self.nan_at):
                return z * float("nan")
        return z


AUG = NS(crop_pad=1, hflip=True)


def _train(workdir: Path, model: nn.Module, splits: NS, **kw: Any) -> Any:
    from edgecompress.distill.config import TrainConfig
    from edgecompress.distill.trainer import train_model

    train = {"epochs": 3, "batch_size": 32, "lr": 0.05, "warmup_epochs": 1, **kw.pop("train", {})}
    return train_model(model, splits, TrainConfig(**train), workdir=workdir, seed=kw.pop("seed", 3), progress=False,
                       device="cpu", **kw)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ the runs


def _scenarios() -> dict[str, Any]:
    """name -> function(workdir) running it (a result, or the error's text for a run that must fail)."""
    from edgecompress.distill.config import LossConfig

    teacher = _net(16, 0).eval()
    s = _splits()
    given = teacher(torch.from_numpy(s.train.x)).detach()  # the caller's teacher logits on the train split

    def kd(**kw: Any) -> Any:
        return lambda d: _train(d, _net(8, 1), s, teacher=teacher, **kw)

    def killed_then_resumed(d: Path) -> Any:
        noisy = _splits(noisy_val=True)
        # NaN at epoch 2 step 3 (call 11), recovered to epoch 0 (val at chance: never a restore point); killed after
        # the retried epoch 1 (calls 12-19), so that the checkpoint holds a restore point behind it
        with pytest.raises(Interrupt):
            _train(d, Faulty(_net(8, 1), nan_at=11, crash_at=22), noisy, augment_cfg=AUG)
        return _train(d, Faulty(_net(8, 1)), noisy, augment_cfg=AUG)

    def spent(d: Path) -> str:
        from edgecompress.errors import TrainingError

        with pytest.raises(TrainingError) as err:
            _train(d, Faulty(_net(8, 1), nan_at=4, nan_after=True), s, train={"max_recoveries": 2})
        return str(err.value)

    return {
        "kd_online": kd(augment_cfg=AUG),
        "kd_online_bf16": kd(augment_cfg=AUG, teacher_precision="bf16"),
        "kd_online_eager": kd(augment_cfg=AUG, fast=False),
        "kd_clean": kd(augment_cfg=AUG, teacher_targets="clean"),
        "kd_given_logits": kd(
            train={"augment": False}, teacher_logits=given, loss=LossConfig(kind="kd", temperature=4.0)
        ),
        "lr_auto": lambda d: _train(d, _net(8, 1), s, train={"lr": "auto", "lr_range_steps": 12, "epochs": 2}),
        "recovered": lambda d: _train(d, Faulty(_net(8, 1), nan_at=11), _splits(noisy_val=True), augment_cfg=AUG),
        "killed_then_resumed": killed_then_resumed,
        "exploded_then_kept": lambda d: _train(  # val NLL explodes: one recovery, then two epochs kept with a warning
            d, _net(8, 1), s, train={"lr": 20.0, "grad_clip": None, "max_recoveries": 1}
        ),
        "recoveries_spent": spent,
        "channels_last_refused": lambda d: _train(d, ViewNet(), s, augment_cfg=AUG, train={"epochs": 1}),
    }


# ------------------------------------------------------------------------------------------------- the summaries


def _digest(obj: Any) -> str:
    """SHA-256 of a canonical walk of ``obj`` (dict order, types, tensor dtype/shape/bytes, float bits)."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        h.update(type(o).__name__.encode())
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        elif isinstance(o, dict):
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, list | tuple):
            for v in o:
                walk(v)
        elif isinstance(o, float):
            h.update(float(o).hex().encode())
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


def _fields(obj: Any) -> Any:
    """The checkpoint's layout: keys in order, with each leaf's type (tensors: dtype and shape)."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor[{obj.dtype}, {tuple(obj.shape)}]"
    if isinstance(obj, dict):
        return [[str(k), _fields(v)] for k, v in obj.items()]
    if isinstance(obj, list | tuple):
        return [type(obj).__name__, [_fields(v) for v in obj]]
    return type(obj).__name__


TIMED = ("seconds", "speedup")  # wall-clock and CPU-time measurements: differ from run to run
SPEED = re.compile(r"[0-9.]+x fp32's speed")


def _untimed(obj: Any) -> Any:
    """``obj`` without its timings (the keys of ``TIMED``, the speed in a teacher-precision note)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMED}
    if isinstance(obj, list | tuple):
        return type(obj)(_untimed(v) for v in obj)
    return SPEED.sub("<x> fp32's speed", obj) if isinstance(obj, str) else obj


def _jsonable(obj: Any, tmp: Path) -> Any:
    """JSON-safe, without timings and the run's temporary folder."""
    if isinstance(obj, dict):
        return {k: _jsonable(v, tmp) for k, v in _untimed(obj).items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v, tmp) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, str):
        return _untimed(obj).replace(str(tmp), "<tmp>")
    return obj


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


def summarize(name: str, fn: Any, tmp: Path) -> dict[str, Any]:
    """Run one scenario in ``tmp/name``; its portable values and its numbers."""
    from edgecompress.distill.trainer import CHECKPOINT, RESULT

    workdir = tmp / name
    lines, logger = _Lines(), logging.getLogger("edgecompress")
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        out = fn(workdir)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    ck = torch.load(workdir / CHECKPOINT, weights_only=True)
    numbers: dict[str, Any] = {"checkpoint": _digest(_untimed(ck)), "log": _jsonable(lines.lines, tmp)}
    if isinstance(out, str):
        numbers["error"] = _jsonable(out, tmp)
    else:
        numbers["weights"] = _digest(out.model.state_dict())
        numbers["result"] = _jsonable(out.to_dict(), tmp)
        numbers["result_file"] = _jsonable(json.loads((workdir / RESULT).read_text()), tmp)
        numbers["layout_contiguous"] = all(p.is_contiguous() for p in out.model.parameters())
    portable = {"fingerprint": ck["fingerprint"], "fields": _fields(ck)}
    return {"portable": portable, "numbers": numbers}


def run_all(tmp: Path) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: summarize(name, fn, tmp) for name, fn in _scenarios().items()}
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def now(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_all(tmp_path_factory.mktemp("golden"))


def test_fingerprints_and_checkpoint_fields_are_unchanged(golden: dict[str, Any], now: dict[str, Any]) -> None:
    """Run folders written before still resume: same fingerprint, same checkpoint layout."""
    assert list(now) == list(golden["runs"])
    for name, got in now.items():
        want = golden["runs"][name]["portable"]
        assert got["portable"]["fingerprint"] == want["fingerprint"], name
        assert got["portable"]["fields"] == want["fields"], name


def test_weights_history_and_events_are_bit_identical(golden: dict[str, Any], now: dict[str, Any]) -> None:
    if golden["environment"] != environment():
        pytest.skip(f"golden numbers recorded on {golden['environment']}; this is {environment()}")
    for name, got in now.items():
        want = golden["runs"][name]["numbers"]
        for key in sorted(set(want) | set(got["numbers"])):
            assert got["numbers"].get(key) == want.get(key), f"{name}: {key}"


def test_a_killed_run_resumes_to_the_uninterrupted_runs_weights(now: dict[str, Any]) -> None:
    a, b = now["killed_then_resumed"]["numbers"], now["recovered"]["numbers"]
    assert a["weights"] == b["weights"] and a["result"]["events"] == b["result"]["events"]
    assert a["result"]["resumed_from_epoch"] == 1 and a["result"]["recoveries"] == 1
    assert "restored the state after epoch 0" in a["result"]["events"][0]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        runs = run_all(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    lines = [f" {json.dumps(name)}: {json.dumps(run)}" for name, run in runs.items()]  # one line per run
    GOLDEN.write_text(f'{{"environment": {json.dumps(environment())}, "runs": {{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
