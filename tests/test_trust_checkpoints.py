"""Checkpoints load without pickle, every form (issue 26, item 3): a crafted ``.pt2`` or TorchScript archive whose
pickles are not weights-only is refused in one line and its payload never runs.

The ``.pt2`` attack is real: ``torch.export.load`` alone runs the pickled ``os.system`` hidden in the archive's sample
inputs (its loader falls back to ``weights_only=False``); the test shows that first, in a child process, then that
edgecompress refuses the same file and the marker is never made.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import one_line_message, record
from edgecompress.errors import CheckpointError

torch = pytest.importorskip("torch")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a malicious pickle does
        return (os.system, (f"touch {self.marker}",))


def _model():  # noqa: ANN202
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4)).eval()


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip archive, replacing entries by their name below the archive's top folder."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
            zout.writestr(info, replace.get(inner, zin.read(info)))
    return dst


def _load(path: Path):  # noqa: ANN202
    from edgecompress.config import TeacherConfig
    from edgecompress.models.teacher import load_teacher

    return load_teacher(TeacherConfig(checkpoint=path), in_channels=1, num_classes=4, input_size=(8, 8))


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("programs")
    model = _model()
    x = torch.zeros(2, 1, 8, 8)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("b")},)), root / "ok.pt2")
    torch.jit.save(torch.jit.script(model), root / "ok.ts")
    return {"pt2": root / "ok.pt2", "ts": root / "ok.ts"}


def test_clean_programs_still_load(programs) -> None:
    for path in programs.values():
        out = _load(path)(torch.zeros(3, 1, 8, 8))
        assert out.shape == (3, 4)


def test_pt2_with_pickled_code_in_its_sample_inputs_is_refused(programs, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(((_Evil(marker),), {}), buf)
    evil = _rewrite(programs["pt2"], tmp_path / "teacher.pt2", {"data/sample_inputs/model.pt": buf.getvalue()})
    code = f"import torch; torch.export.load({str(evil)!r})"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)  # noqa: S603
    assert marker.exists(), "the crafted archive should run its pickle through a plain torch.export.load"
    marker.unlink()
    with pytest.raises(CheckpointError) as err:
        _load(evil)
    msg = one_line_message(err.value)
    assert "data/sample_inputs/model.pt" in msg and "it references posix.system" in msg and "never unpickled" in msg
    assert not marker.exists()
    record("checkpoint", "pt2-pickled-sample-inputs", "a `.pt2` teacher whose sample inputs hold a pickled "
           "`os.system` call", "models.load_teacher", "CheckpointError", msg)  # fmt: skip


@pytest.mark.parametrize("entry", ["data/weights/model_weights_config.json", "data/constants/custom_obj_0"])
def test_pt2_with_pickled_objects_or_payload_names_is_refused(programs, tmp_path: Path, entry: str) -> None:
    if entry.endswith(".json"):
        config = b'{"config": {"w": {"path_name": "../../x", "is_param": true, "use_pickle": true}}}'
        evil = _rewrite(programs["pt2"], tmp_path / "t.pt2", {entry: config})
    else:
        src = zipfile.ZipFile(programs["pt2"])
        top = src.namelist()[0].split("/", 1)[0]
        src.close()
        evil = tmp_path / "t.pt2"
        evil.write_bytes(programs["pt2"].read_bytes())
        with zipfile.ZipFile(evil, "a") as zf:
            zf.writestr(f"{top}/{entry}", pickle.dumps(_Evil(tmp_path / "m")))
    with pytest.raises(CheckpointError) as err:
        _load(evil)
    assert "never unpickled" in one_line_message(err.value)
    assert not (tmp_path / "m").exists()


def test_torchscript_with_pickled_code_is_refused(programs, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _rewrite(programs["ts"], tmp_path / "teacher.ts", {"data.pkl": pickle.dumps(_Evil(marker), protocol=2)})
    with pytest.raises(CheckpointError) as err:
        _load(evil)
    msg = one_line_message(err.value)
    assert "'ok/data.pkl' is a pickle that imports posix.system" in msg
    assert not marker.exists()
    record("checkpoint", "torchscript-pickled-code", "a TorchScript teacher whose `data.pkl` pickles `os.system`",
           "models.load_teacher", "CheckpointError", msg)  # fmt: skip


def test_a_damaged_pt2_is_one_line_without_torch_logging_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "g.pt2"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("g/archive_format", "pt2")
        zf.writestr("g/models/model.json", "{")
    with pytest.raises(CheckpointError) as err:
        _load(bad)
    assert "cannot be loaded (RuntimeError" in one_line_message(err.value)
