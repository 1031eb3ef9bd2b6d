"""Benchmark config and device profiles: built-ins, user directories, validation with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgecompress.devices.config import BenchmarkConfig, DeviceProfile
from edgecompress.devices.profiles import list_profiles, load_profile
from edgecompress.errors import DeviceError

BUILTINS = {"local", "x86", "jetson-orin-nano", "jetson-agx-orin", "android-arm64"}


def test_builtin_profiles_load() -> None:
    assert set(list_profiles()) >= BUILTINS
    for name in BUILTINS:
        assert load_profile(name).name == name
    assert load_profile("jetson-agx-orin").power is True
    assert load_profile("android-arm64").transport == "adb"


def test_unknown_profile_lists_known_names() -> None:
    with pytest.raises(DeviceError, match="unknown device profile 'pi5'; known: android-arm64, jetson-agx-orin"):
        load_profile("pi5")


def test_user_dir_adds_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "lab-box.yaml").write_text("transport: ssh\nhost: 10.0.0.7\nuser: me\nruntimes: [openvino]\n")
    (tmp_path / "local.yaml").write_text("name: local\nrunstimes: [onnxruntime]\n")
    assert load_profile("lab-box", [tmp_path]).host == "10.0.0.7"
    with pytest.raises(DeviceError, match=r"local.yaml: runstimes: Extra inputs are not permitted"):
        load_profile("local", [tmp_path])
    assert load_profile(tmp_path / "lab-box.yaml").name == "lab-box"


@pytest.mark.parametrize(
    ("field", "value"),
    [("host", "-oProxyCommand=touch /tmp/x"), ("host", "a;rm -rf /"), ("user", "-l"), ("user", "me$(id)")],
)
def test_option_injection_in_host_or_user_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=f"{field} "):
        DeviceProfile(**{"name": "x", "transport": "ssh", "host": "h", field: value})


def test_workdir_must_be_plain() -> None:
    with pytest.raises(ValidationError, match="workdir"):
        DeviceProfile(name="x", workdir="/tmp/a b;c")


def test_accepts_formats_and_runtimes() -> None:
    p = DeviceProfile(name="x", runtimes=["openvino"], formats=["openvino:*", "onnx:fp32"])
    assert p.accepts("openvino", "int8", "openvino")
    assert not p.accepts("onnx", "fp32", "onnxruntime")  # runtime missing on the device
    assert not DeviceProfile(name="y", formats=["onnx:fp32"]).accepts("onnx", "int8", "onnxruntime")


def test_benchmark_config_defaults_and_validation() -> None:
    cfg = BenchmarkConfig()
    assert cfg.devices == ["local"] and cfg.batch_sizes == [1, 32] and cfg.repeats == 3 and cfg.retries == 2
    with pytest.raises(ValidationError, match="batch_sizes"):
        BenchmarkConfig(batch_sizes=[0])
    with pytest.raises(ValidationError):
        BenchmarkConfig(unknown_key=1)


def test_devices_package_import_is_light() -> None:
    import subprocess
    import sys

    heavy = "('onnxruntime', 'openvino', 'torch')"
    code = f"import edgecompress.devices, sys; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)  # noqa: S603
    assert out.stdout.strip() == "[]", out.stderr
