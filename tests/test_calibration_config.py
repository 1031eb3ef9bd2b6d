"""CalibrationConfig / MbLSConfig: defaults, strictness, and clear validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgecompress.calibration.config import CalibrationConfig, MbLSConfig


def test_defaults() -> None:
    cfg = CalibrationConfig()
    assert cfg.temperature_scaling is True
    assert cfg.n_bins == 15
    assert cfg.mbls is None
    assert cfg.refit_after_quantization is True
    assert cfg.refit_threshold == 0.005
    m = MbLSConfig()
    assert (m.margin, m.weight, m.finetune_epochs, m.lr, m.batch_size) == (10.0, 0.1, 3, 1e-4, 128)


def test_mbls_shorthand_and_nested_dict() -> None:
    assert CalibrationConfig(mbls=True).mbls == MbLSConfig()
    assert CalibrationConfig(mbls=False).mbls is None
    cfg = CalibrationConfig.model_validate({"mbls": {"margin": 6, "weight": 0.2}})
    assert cfg.mbls is not None and cfg.mbls.margin == 6.0 and cfg.mbls.weight == 0.2


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"mbls": {"margin": 0}}, "margin m=0"),
        ({"mbls": {"margin": -1.0}}, "must be a finite number > 0"),
        ({"mbls": {"weight": -0.1}}, "weight λ=-0.1"),
        ({"mbls": {"finetune_epochs": 0}}, "mbls: null"),
        ({"mbls": {"lr": 0}}, "lr=0"),
        ({"mbls": {"batch_size": 0}}, "batch_size=0"),
        ({"n_bins": 1}, "between 2 and 1000"),
        ({"refit_threshold": 2.0}, "fraction"),
        ({"refit_threshold": -0.1}, "fraction"),
        ({"bins": 15}, "Extra inputs are not permitted"),
        ({"mbls": {"margin": 10, "gamma": 1}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_values_give_clear_messages(data: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        CalibrationConfig.model_validate(data)


def test_frozen() -> None:
    cfg = CalibrationConfig()
    with pytest.raises(ValidationError):
        cfg.n_bins = 10  # type: ignore[misc]


def test_method_default_follows_the_mbls_section_and_auto_validates() -> None:
    """method: none given -> mbls when an mbls section is, else ts (the old meaning); auto takes a margin grid."""
    assert CalibrationConfig().method == "ts" and CalibrationConfig(mbls=True).method == "mbls"
    cfg = CalibrationConfig(method="auto")
    assert cfg.auto_margins == [5.0, 10.0] and cfg.auto_max_accuracy_drop == 0.005 and cfg.mbls_settings == MbLSConfig()
    assert CalibrationConfig(method="mbls").mbls_settings == MbLSConfig()  # the section's defaults
    with pytest.raises(ValidationError, match="method 'ts' ignores the mbls section"):
        CalibrationConfig(method="ts", mbls={"margin": 5})
    with pytest.raises(ValidationError, match="auto_margins"):
        CalibrationConfig(method="auto", auto_margins=[])
    with pytest.raises(ValidationError, match="Input should be 'ts', 'mbls' or 'auto'"):
        CalibrationConfig(method="platt")
