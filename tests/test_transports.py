"""The Transport type and its registry: the built-ins register by name, a profile's unknown transport is one line
listing the registered ones, old import paths still work, and a transport of your own is one file (a toy one runs a
real benchmark: real agent, real ONNX Runtime, its files copied through the toy's push/pull)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from conftest import tiny_onnx, write_yaml
from edgecompress._registry import TRANSPORTS, load_plugins
from edgecompress.devices.config import BenchmarkConfig, DeviceProfile
from edgecompress.devices.profiles import load_profile
from edgecompress.errors import ConfigError, DeviceError

TOY = '''
"""A transport in one file: the "device" is a folder on this machine; files are copied in and out of it."""

import shutil
import subprocess
import sys
from pathlib import Path

from edgecompress._registry import TRANSPORTS
from edgecompress.devices.transports import TransientTransportError, Transport


@TRANSPORTS.register("toy-folder", summary="a folder on this machine, reached by copying")
class FolderTransport(Transport):
    def __init__(self, profile):
        super().__init__(profile)
        self.python = sys.executable  # the "device" has this machine's Python

    def push(self, files, rdir, *, timeout_s):
        for f in files:
            shutil.copy2(f, Path(rdir) / Path(f).name)

    def execute(self, words, *, cwd, timeout_s):
        return subprocess.run(list(words), capture_output=True, text=True, timeout=timeout_s, cwd=cwd)

    def pull(self, name, rdir, local_dir, *, timeout_s):
        if not (Path(rdir) / name).is_file():
            raise TransientTransportError(f"{name} is not on the device")
        shutil.copy2(Path(rdir) / name, Path(local_dir) / name)
'''


def test_the_builtin_transports_register_themselves_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TRANSPORTS.names()[:3] == ["local", "ssh", "adb"]
    # whichever transport module a caller imported first, the built-ins are listed in their pinned order
    monkeypatch.setattr(TRANSPORTS, "_entries", dict(reversed(list(TRANSPORTS._entries.items()))))
    assert TRANSPORTS.names()[:3] == ["local", "ssh", "adb"]
    assert list(TRANSPORTS.builtin_names) == ["local", "ssh", "adb"]  # the light list the profile check reads
    from edgecompress.devices.transports import ADBTransport, LocalTransport, SSHTransport, Transport

    for name, cls in (("local", LocalTransport), ("ssh", SSHTransport), ("adb", ADBTransport)):
        assert TRANSPORTS.get(name).obj is cls and issubclass(cls, Transport)


def test_old_import_paths_still_work() -> None:
    from edgecompress.devices import ADBTransport, LocalTransport, SSHTransport, Transport, make_transport
    from edgecompress.devices.transports import AgentJob, Outcome, parse_benchmark_output, with_retries

    assert make_transport(DeviceProfile(name="here")).__class__ is LocalTransport
    assert {ADBTransport.__module__, SSHTransport.__module__} == {
        "edgecompress.devices.transports.adb",
        "edgecompress.devices.transports.ssh",
    }
    assert callable(parse_benchmark_output) and callable(with_retries) and AgentJob and Outcome and Transport


def test_an_unknown_transport_is_one_line_listing_the_registered_ones(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"unknown transport 'pigeon'; use one of: local, ssh, adb"):
        DeviceProfile(name="x", transport="pigeon")
    write_yaml(tmp_path / "bird.yaml", {"transport": "pigeon"})
    with pytest.raises(DeviceError) as err:
        load_profile(tmp_path / "bird.yaml")
    assert "\n" not in str(err.value) and "use one of: local, ssh, adb" in str(err.value)
    deferred = DeviceProfile.model_validate({"name": "x", "transport": "pigeon"}, context={"plugins": True})
    from edgecompress.devices.transports import make_transport

    with pytest.raises(ConfigError, match=r"unknown transport 'pigeon'.*use one of: local, ssh, adb"):
        make_transport(deferred)  # a config with plugins is checked when the run has imported them


def test_a_registered_class_that_is_no_transport_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecompress.devices.transports import make_transport

    monkeypatch.setattr(TRANSPORTS, "_entries", dict(TRANSPORTS._entries))  # this test's registrations are its own

    @TRANSPORTS.register("not-one")
    class NotATransport:
        def __init__(self, profile: DeviceProfile) -> None:
            self.profile = profile

    with pytest.raises(ConfigError, match="is not a Transport"):
        make_transport(DeviceProfile(name="x", transport="not-one"))


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The toy transport written as one module on sys.path; the registry and sys.modules are restored after."""
    TRANSPORTS.names()  # the built-ins first, so the restored registry keeps them
    monkeypatch.setattr(TRANSPORTS, "_entries", dict(TRANSPORTS._entries))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_folder_transport.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.delitem(sys.modules, "toy_folder_transport", raising=False)
    yield "toy_folder_transport"
    sys.modules.pop("toy_folder_transport", None)


def test_a_toy_transport_in_one_file_runs_a_benchmark(
    toy_plugin: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from edgecompress.devices import agent
    from edgecompress.devices.bench import benchmark_artifacts
    from edgecompress.devices.transports import make_transport

    with pytest.raises(ValidationError, match="unknown transport 'toy-folder'"):  # not registered before its import
        DeviceProfile(name="folder", transport="toy-folder")
    load_plugins([toy_plugin])  # what a config's `plugins: [toy_folder_transport]` does at the run's start
    assert "toy-folder" in TRANSPORTS.names()
    device = tmp_path / "device"
    device.mkdir()
    profile_file = write_yaml(
        tmp_path / "profiles" / "folder.yaml", {"transport": "toy-folder", "workdir": str(device)}
    )
    profile = load_profile("folder", [profile_file.parent])
    assert type(make_transport(profile)).__name__ == "FolderTransport"

    onnx_path, x, _ = tiny_onnx(tmp_path_factory)
    rng = np.random.default_rng(0)
    ex, ey = rng.normal(size=(16, *x.shape[1:])).astype(np.float32), rng.integers(0, 5, 16)
    art = {"name": "tiny-onnx", "format": "onnx", "precision": "fp32", "runtime": "onnxruntime",
           "model_file": onnx_path, "files": [onnx_path]}  # fmt: skip
    cfg = BenchmarkConfig(batch_sizes=[1, 2], warmup_iters=1, min_time_s=0, min_iters=3, repeats=1, threads=1,
                          eval_samples=16, profiles_dir=profile_file.parent)  # fmt: skip
    rows = benchmark_artifacts([art], ["folder"], eval_x=ex, eval_y=ey, cfg=cfg, workdir=tmp_path / "bench")
    assert len(rows) == 1 and rows[0].ok, rows[0].error
    row = rows[0]
    assert row.device == "folder" and set(row.latency_ms) == {1, 2} and row.latency_ms[1].p50 > 0
    assert row.env["transport"] == "toy-folder"  # the transport's env() joins what the agent reports
    rt = agent.get_runtime("onnxruntime")
    rt.load(onnx_path)
    expected = agent.evaluate(rt, ex, ey)[0]
    assert row.eval_samples == 16 and row.accuracy == pytest.approx(expected["accuracy"])
    assert row.nll == pytest.approx(expected["nll"], rel=1e-4)
    assert row.metrics_full is not None  # the logits came back through the toy's pull
    assert list(device.iterdir()) == []  # the per-run folder was removed through the toy's execute


@pytest.mark.slow
def test_a_toy_transport_from_the_configs_plugins_runs_through_the_pipeline(toy_plugin: str, tmp_path: Path) -> None:
    """A config lists the toy's module in ``plugins`` and a profile names it: the run checks the profile before any
    work, measures through it, and measures again when the profile (not its name) changes."""
    import json

    from conftest import tiny_config
    from edgecompress.config import PipelineConfig
    from edgecompress.pipeline.run import run_pipeline

    device = tmp_path / "device"
    device.mkdir()
    profile = {"transport": "toy-folder", "workdir": str(device), "threads": 1}
    profiles = write_yaml(tmp_path / "profiles" / "folder.yaml", profile).parent
    data = tiny_config()
    data["plugins"] = [toy_plugin]
    data["benchmark"].update({"devices": ["folder"], "profiles_dir": str(profiles), "eval_samples": 32})
    cfg = PipelineConfig.model_validate(data)
    out = tmp_path / "run"
    run_pipeline(cfg, out, until="benchmark", progress=False)
    [first] = list((out / "stages").glob("benchmark-*"))
    rows = json.loads((first / "_done.json").read_text())["rows"]
    assert [(r["device"], r["ok"], r["eval_samples"]) for r in rows] == [("folder", True, 32)], rows
    assert rows[0]["env"]["transport"] == "toy-folder" and rows[0]["latency_ms"]["1"]["p50"] > 0
    write_yaml(profiles / "folder.yaml", {**profile, "threads": 2})  # same name, another setting
    run_pipeline(cfg, out, until="benchmark", progress=False)
    assert len(list((out / "stages").glob("benchmark-*"))) == 2  # measured anew, not the stale rows
