"""Reliability diagrams: a real PNG per call, atomic write, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecompress.calibration.metrics import softmax
from edgecompress.calibration.plots import reliability_diagram
from edgecompress.errors import CalibrationError

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")


def _source(n: int = 3000, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, k))
    y = (softmax(z).cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(max=k - 1)
    return z, y


def test_writes_a_png_with_one_column_per_entry(tmp_path: Path) -> None:
    z, y = _source()
    entries = [("student before TS", 3.0 * z, y), ("after TS", z, y), ("onnx:int8 (probs)", softmax(1.2 * z), y)]
    out = reliability_diagram(entries, tmp_path / "plots" / "reliability.png", title="calibration")
    assert out == tmp_path / "plots" / "reliability.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        width, height = img.size
    assert width > height  # three columns side by side
    one = reliability_diagram(entries[:1], tmp_path / "one.png")
    with Image.open(one) as img:
        assert img.size[0] < width / 2
    assert [p.name for p in out.parent.iterdir()] == ["reliability.png"]  # no temp files left behind


def test_svg_output(tmp_path: Path) -> None:
    z, y = _source(n=300)
    out = reliability_diagram([("m", z, y)], tmp_path / "r.svg", n_bins=10)
    assert out.read_text(encoding="utf-8").lstrip().startswith("<?xml")


def test_errors(tmp_path: Path) -> None:
    z, y = _source(n=50)
    with pytest.raises(CalibrationError, match="no entries"):
        reliability_diagram([], tmp_path / "r.png")
    with pytest.raises(CalibrationError, match=r"\.png"):
        reliability_diagram([("m", z, y)], tmp_path / "r.txt")
    with pytest.raises(CalibrationError, match="entry 0"):
        reliability_diagram([("m", z)], tmp_path / "r.png")  # type: ignore[list-item]
    with pytest.raises(CalibrationError, match="classes"):
        reliability_diagram([("m", z, y + 100)], tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()
