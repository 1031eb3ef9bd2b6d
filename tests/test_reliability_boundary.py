"""Bad inputs at the library boundary (data loaders, checkpoints, exporters, transports), numerical faults (NaN loss
through the CLI, the INT8 accuracy gate) — each a one-line error naming problem and fix."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, one_error_line, one_line_message, record, tiny_config, write_yaml
from edgecompress.errors import (
    CheckpointError,
    DataError,
    EdgeCompressError,
    TransportError,
)

PWNED = Path(f"/tmp/edgecompress-pwned-{uuid.uuid4().hex[:8]}")


def _expect(exc_type: type[EdgeCompressError], fn, *parts: str, case: str, group: str, given: str, how: str) -> str:
    with pytest.raises(exc_type) as err:
        fn()
    msg = one_line_message(err.value)
    for part in parts:
        assert part.lower() in msg.lower(), f"{part!r} not in: {msg}"
    record(group, case, given, how, type(err.value).__name__, msg)
    return msg


def _expect_failed(arts: list, *parts: str, case: str, group: str, given: str, how: str) -> str:
    """A per-format export failure: recorded on its artifact (the other formats go on), one line with the numbers."""
    (art,) = arts
    assert not art.ok and art.files == [] and art.model_file is None
    msg = art.failure
    assert "\n" not in msg
    for part in parts:
        assert part.lower() in msg.lower(), f"{part!r} not in: {msg}"
    record(group, case, given, how, "Artifact.failure", msg)
    return msg


# ---------------------------------------------------------------------------------------------------------------- data
def _splits(tmp: Path, **arrays):
    from edgecompress.data import load_splits
    from edgecompress.data.config import DataConfig

    path = tmp / "d.npz"
    np.savez(path, **arrays)
    cfg = DataConfig(dataset="npz", path=path, val_fraction=0.2, calib_size=2, test_fraction=0.2)
    return lambda: load_splits(cfg, seed=0)


def _xy(n: int = 30, k: int = 3):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n) % k


DATA_CASES = {
    "npz-one-class": (
        lambda: {"x_train": _xy()[0], "y_train": np.zeros(30, np.int64)},
        ("only one class",),
        "all labels 0",
    ),
    "npz-labels-out-of-range": (
        lambda: {"x_train": _xy()[0], "y_train": _xy()[1] + 2, "labels": np.array(["a", "b", "c"])},
        ("out of range",),
        "labels 2..4 with 3 label names",
    ),
    "npz-rank-2": (
        lambda: {"x_train": np.zeros((30, 64), np.uint8), "y_train": _xy()[1]},
        ("rank 2",),
        "x_train of shape [30, 64]",
    ),
    "npz-5-channels": (
        lambda: {"x_train": np.zeros((30, 5, 8, 5), np.uint8), "y_train": _xy()[1]},
        ("channel axis",),
        "x_train of shape [30, 5, 8, 5]",
    ),
    "npz-float-labels": (
        lambda: {"x_train": _xy()[0], "y_train": _xy()[1].astype(np.float32)},
        ("dtype float32",),
        "float labels",
    ),
    "npz-length-mismatch": (
        lambda: {"x_train": _xy()[0], "y_train": _xy()[1][:20]},
        ("30 images but 20 labels",),
        "30 images, 20 labels",
    ),
    "npz-empty": (
        lambda: {"x_train": np.zeros((0, 8, 8), np.uint8), "y_train": np.zeros(0, np.int64)},
        ("empty",),
        "zero images",
    ),
    "npz-singleton-class": (
        lambda: {"x_train": _xy()[0], "y_train": np.r_[np.zeros(29, np.int64), [1]]},
        ("1 sample",),
        "a class with one image",
    ),
    "npz-object-array": (
        lambda: {"x_train": _xy()[0], "y_train": np.array([object()] * 30, dtype=object)},
        ("not", "pickle"),
        "labels stored as a pickled object array",
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_npz_data(case: str, tmp_path: Path) -> None:
    make, parts, given = DATA_CASES[case]
    arrays = make()
    if case == "npz-object-array":  # np.savez pickles object arrays; np.load(allow_pickle=False) must refuse them
        parts = ("allow_pickle",)
    _expect(DataError, _splits(tmp_path, **arrays), *parts, case=case, group="data", given=given, how="load_splits")


def test_empty_folder_and_not_an_npz(tmp_path: Path) -> None:
    from edgecompress.data import load_splits
    from edgecompress.data.config import DataConfig

    (tmp_path / "imgs").mkdir()
    cfg = DataConfig(dataset="folder", path=tmp_path / "imgs")
    _expect(
        DataError,
        lambda: load_splits(cfg, seed=0),
        "no class sub-folders",
        case="folder-empty",
        group="data",
        given="an image folder without class sub-folders",
        how="load_splits",
    )
    (tmp_path / "fake.npz").write_text("not a zip")
    cfg = DataConfig(dataset="npz", path=tmp_path / "fake.npz")
    _expect(
        DataError,
        lambda: load_splits(cfg, seed=0),
        "not a readable .npz",
        case="npz-garbage",
        group="data",
        given="a text file named .npz",
        how="load_splits",
    )


# --------------------------------------------------------------------------------------------------------- checkpoints
class _Pwn:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def test_bad_checkpoints(tmp_path: Path) -> None:
    import torch

    from edgecompress.models import load_state

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"1.weight": _Pwn()}, tmp_path / "evil.pt")
    cases = [
        ("ckpt-truncated", cut, ("truncated",), "the first half of a checkpoint"),
        ("ckpt-directory", tmp_path, ("is a directory",), "a directory as checkpoint"),
        ("ckpt-not-state-dict", tmp_path / "tensor.pt", ("not a state dict",), "a checkpoint holding one tensor"),
        ("ckpt-pickled-call", tmp_path / "evil.pt", ("weights_only", "posix.system"), "a pickled os.system call"),
    ]
    for case, path, parts, given in cases:
        _expect(
            CheckpointError,
            lambda p=path: load_state(model, p),
            *parts,
            case=case,
            group="checkpoint",
            given=given,
            how="models.load_state",
        )
    assert not PWNED.exists()


# -------------------------------------------------------------------------------------------------------------- export
def _contract(shape=(1, 4, 4), k=3):
    from edgecompress.export import ExportContract

    return ExportContract(input_shape=shape, num_classes=k)


def test_unsupported_op_names_format_and_step(tmp_path: Path) -> None:
    import torch

    from edgecompress.export import export_all

    class Unsupported(torch.nn.Module):  # torch.linalg.eig has no ONNX translation in either exporter
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            m = x.flatten(1)[:, :4].reshape(-1, 2, 2)
            return self.fc(x.flatten(1)) + torch.linalg.eigvals(m).real.sum(-1, keepdim=True)

    x = np.random.default_rng(0).normal(size=(8, 1, 4, 4)).astype(np.float32)
    _expect_failed(
        export_all(
            Unsupported().eval(), contract=_contract(), formats=["onnx:fp32"], calib_x=x, out_dir=tmp_path / "a"
        ),
        "onnx:fp32",
        "step 'export'",
        case="export-unsupported-op",
        group="export",
        given="a factory model using torch.linalg.eigvals",
        how="export.export_all",
    )
    assert not [p for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")]  # nothing half-exported


def test_parity_failure_names_format_and_step(tmp_path: Path) -> None:
    import torch

    from edgecompress.export import export_all

    class Noisy(torch.nn.Module):  # random in forward: the runtime's draws never match PyTorch's
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(x.flatten(1)) + 10 * torch.rand_like(self.fc(x.flatten(1)))

    x = np.random.default_rng(0).normal(size=(32, 1, 4, 4)).astype(np.float32)
    _expect_failed(
        export_all(Noisy().eval(), contract=_contract(), formats=["onnx:fp32"], calib_x=x, out_dir=tmp_path / "p"),
        "onnx-fp32",
        "parity",
        case="export-parity",
        group="export",
        given="a model whose forward draws random numbers",
        how="export.export_all",
    )


def test_int8_accuracy_gate_fails_loudly(tmp_path: Path) -> None:
    """A model whose decisions hinge on 1e-4 input differences: no 8-bit grid with range >= 1 can keep them.

    Parity is judged on 'easy' samples (margins of 4), so the export gets as far as the accuracy gate, which sees the
    'hard' val samples flip to ties and fail; the exact accuracies do not matter, only that the drop is > 0.05.
    """
    import torch

    from edgecompress.export import export_all
    from edgecompress.export.config import ExportConfig

    conv = torch.nn.Conv2d(1, 2, (1, 2), bias=False)
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0]]], [[[0.0, 1.0]]]]))
        head.weight.copy_(torch.eye(2))
    model = torch.nn.Sequential(conv, torch.nn.Flatten(), head).eval()

    def batch(a, b, n):
        return np.tile(np.array([[[[a, b]]]], np.float32), (n, 1, 1, 1))

    easy = np.concatenate([batch(5.0, 1.0, 16), batch(1.0, 5.0, 16)])
    easy_y = np.r_[np.zeros(16), np.ones(16)].astype(np.int64)
    hard = batch(1.0, 1.0001, 32)  # label 1 by 1e-4; an INT8 tie reads as class 0
    val_x, val_y = np.concatenate([easy, hard]), np.r_[easy_y, np.ones(32, np.int64)]
    cfg = ExportConfig(formats=["onnx:int8"], max_accuracy_drop=0.05, keep_stem_float=False)  # the conv is the stem
    msg = _expect_failed(
        export_all(
            model,
            contract=_contract((1, 1, 2), 2),
            calib_x=easy,
            out_dir=tmp_path / "q",
            cfg=cfg,
            val_x=val_x,
            val_y=val_y,
            parity_x=easy,
        ),
        "onnx-int8: val accuracy 50.0 % vs FP32 100.0 % (drop 50.0 > 5.0 points)",
        "keep_head_float",
        case="int8-accuracy-gate",
        group="numerics",
        given="INT8 export losing more than export.max_accuracy_drop on val",
        how="export.export_all",
    )
    assert "FP32 100.0 %" in msg


# ------------------------------------------------------------------------------------------------------------- devices
def _job(tmp: Path, runtime: str = "onnxruntime"):
    from edgecompress.devices.transports import AgentJob

    model = tmp / "m.onnx"
    model.write_bytes(b"not really a model")
    return AgentJob(model_file=model, files=(model,), runtime=runtime, eval_file=None)


def test_ssh_closed_port_and_bad_key(tmp_path: Path) -> None:
    import socket

    from edgecompress.devices.config import DeviceProfile
    from edgecompress.devices.transports import SSHTransport

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "key"
    key.write_text("garbage, not a key\n")
    key.chmod(0o600)
    profile = DeviceProfile(name="lab", transport="ssh", host="127.0.0.1", port=port, identity_file=key)
    msg = _expect(
        TransportError,
        lambda: SSHTransport(profile).run(_job(tmp_path), local_dir=tmp_path / "o", timeout_s=30),
        "127.0.0.1",
        f"port {port}",
        "refused",
        case="ssh-closed-port",
        group="device",
        given="ssh device on a closed loopback port (garbage key file)",
        how="SSHTransport.run",
    )
    assert "garbage" not in msg
    folder = profile.model_copy(update={"identity_file": tmp_path})
    _expect(
        TransportError,
        lambda: SSHTransport(folder),
        "identity_file",
        case="ssh-key-is-folder",
        group="device",
        given="ssh profile whose identity_file is a folder",
        how="SSHTransport()",
    )


def test_missing_runtime_on_device(tmp_path: Path) -> None:
    from edgecompress.devices.config import DeviceProfile
    from edgecompress.devices.transports import LocalTransport

    cases = [("tensorrt", None, "runtime 'tensorrt' is not installed", "device without the TensorRT runtime")]
    if Path("/usr/bin/python3").is_file():
        cases.append(("onnxruntime", "/usr/bin/python3", "is not installed on this device", "device Python bare"))
    for runtime, python, part, given in cases:
        fields = {"python": python} if python else {}
        profile = DeviceProfile(name="dev", transport="local", **fields)
        res = LocalTransport(profile).run(_job(tmp_path, runtime), local_dir=tmp_path / runtime, timeout_s=120)
        assert res["ok"] is False and res["error_type"] == "missing_runtime", res
        msg = res["error"]
        assert "\n" not in msg and part in msg and "fix: pip install" in msg, msg
        record("device", f"missing-runtime-{runtime}", given, "agent on the device (row error)", "ok: false", msg)


# ------------------------------------------------------------------------------------------------------------ numerics
NAN_FACTORY = '''
import torch


class Boom(torch.nn.Module):
    """Fine for the first epoch, then its outputs turn NaN (training mode only)."""

    def __init__(self, num_classes, in_channels, after=3):
        super().__init__()
        self.fc = torch.nn.Linear(in_channels * 64, num_classes)
        self.after, self.calls = after, 0

    def forward(self, x):
        y = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return y * float("nan")
        return y


def build(num_classes, in_channels, after=3):
    return Boom(num_classes, in_channels, after)
'''


def test_nan_loss_stops_the_hop_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "nanmod.py").write_text(NAN_FACTORY)
    cfg = tiny_config()
    cfg["trust_factories"] = ["nanmod"]
    cfg["teacher"] = {
        "model": {"factory": "nanmod:build", "params": {"after": 3}},
        # no automatic recovery: this case is the hop that stops (recovery has its own tests in test_distill_selftune)
        "train": {"epochs": 2, "max_steps_per_epoch": 3, "batch_size": 32, "warmup_epochs": 0, "max_recoveries": 0},
    }
    path = write_yaml(tmp_path / "cfg.yaml", cfg)
    out = tmp_path / "run"
    res = cli(
        "run", str(path), "--out", str(out), "--until", "teacher", "--no-progress", env={"PYTHONPATH": str(tmp_path)}
    )
    line = one_error_line(res, 3)
    assert "epoch 2 step 1" in line and "checkpoint.pt" in line, line
    record("numerics", "nan-loss", "a model whose outputs turn NaN in epoch 2", "edgecompress run", "3", line)
    ckpt = next(out.glob("stages/teacher-*/train/checkpoint.pt"))
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state  # the epoch-1 checkpoint is intact and loads safely
    assert not any(out.glob("stages/teacher-*/_done.json"))


# ------------------------------------------------------------------------------------------------------- run directory
def test_run_directory_is_locked_and_swept(tmp_path: Path) -> None:
    from edgecompress.errors import ResourceError
    from edgecompress.pipeline.rundir import RunDir

    root = tmp_path / "run"
    made = RunDir(root)  # a run directory this tool made (marked), then killed with temp files in a stage folder
    made.prepare()
    made.close()
    stage = root / "stages" / "export-abc"
    (stage / "artifacts" / ".onnx-int8-qm0wxy0r").mkdir(parents=True)
    (stage / ".eval.npz.44d7d3ac.tmp").write_bytes(b"half")
    (stage / "artifacts" / "onnx-fp32").mkdir()
    (stage / "_done.json").write_text("{}")
    first = RunDir(root)
    first.prepare()
    assert not (stage / ".eval.npz.44d7d3ac.tmp").exists()
    assert not (stage / "artifacts" / ".onnx-int8-qm0wxy0r").exists()
    assert (stage / "artifacts" / "onnx-fp32").is_dir() and (stage / "_done.json").is_file()
    _expect(
        ResourceError,
        RunDir(root).prepare,
        "another edgecompress process",
        case="run-dir-busy",
        group="resource",
        given="a second run into a run directory in use",
        how="RunDir.prepare",
    )
