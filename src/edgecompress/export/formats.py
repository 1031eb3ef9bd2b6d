"""The export format table: what each target format is, which precisions it has, and what it needs.

Capabilities are data (ultralytics ``export_formats`` without positional lookups): validation, the wrapper and the
report all read :data:`FORMATS` by name.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterable
from dataclasses import dataclass

from edgecompress.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class FormatSpec:
    """One export target.

    Attributes:
        name: key in :data:`FORMATS` and the first half of ``"format:precision"``.
        suffix: file suffix of the model file (OpenVINO also writes a ``.bin`` next to the ``.xml``).
        precisions: precisions this exporter can produce.
        runtime: the ``devices`` runtime that loads the artifact.
        extra: the ``edgecompress[extra]`` that installs its toolchain (``"core"`` when always present).
        needs_gpu_to_build: the final artifact can only be built on an NVIDIA GPU.
        builds_on_target: the deployable file is built on the target device from what export writes.
        description: one line for humans.
        modules: Python modules the exporter imports.
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    runtime: str
    extra: str
    needs_gpu_to_build: bool
    builds_on_target: bool
    description: str
    modules: tuple[str, ...] = ()


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name="onnx",
            suffix=".onnx",
            precisions=("fp32", "fp16", "int8"),
            runtime="onnxruntime",
            extra="core",
            needs_gpu_to_build=False,
            builds_on_target=False,
            description="ONNX (opset 18); INT8 as static QDQ from ONNX Runtime quantization",
            modules=("onnx", "onnxruntime"),
        ),
        FormatSpec(
            name="openvino",
            suffix=".xml",
            precisions=("fp32", "fp16", "int8"),
            runtime="openvino",
            extra="core",
            needs_gpu_to_build=False,
            builds_on_target=False,
            description="OpenVINO IR (.xml + .bin); FP16 compressed weights; INT8 with NNCF",
            modules=("openvino", "nncf"),
        ),
        FormatSpec(
            name="tensorrt",
            suffix=".onnx",
            precisions=("fp32", "fp16", "int8"),
            runtime="tensorrt",
            extra="tensorrt",
            needs_gpu_to_build=True,
            builds_on_target=True,
            description="TensorRT: ONNX + calibration cache + build recipe; the engine is built on the target GPU",
            modules=("onnx", "onnxruntime"),
        ),
        FormatSpec(
            name="executorch",
            suffix=".pte",
            precisions=("fp32", "int8"),
            runtime="executorch",
            extra="mobile",
            needs_gpu_to_build=False,
            builds_on_target=False,
            description="ExecuTorch program with the XNNPACK delegate; INT8 by PT2E quantization",
            modules=("executorch",),
        ),
        FormatSpec(
            name="ort",
            suffix=".ort",
            precisions=("fp32", "int8"),
            runtime="onnxruntime",
            extra="core",
            needs_gpu_to_build=False,
            builds_on_target=False,
            description="ORT format for ONNX Runtime Mobile (converted from the ONNX artifact)",
            modules=("onnxruntime",),
        ),
    )
}


def allowed_items() -> list[str]:
    """Every valid ``"format:precision"`` string, in table order."""
    return [f"{name}:{p}" for name, spec in FORMATS.items() for p in spec.precisions]


def parse_format(item: str) -> tuple[str, str]:
    """Parse one ``"format:precision"`` string (``"onnx"`` alone means ``"onnx:fp32"``).

    Raises:
        ConfigError: unknown format or a precision the format does not have; the message lists allowed items.
    """
    if not isinstance(item, str):
        raise ConfigError(f"export format item {item!r} is not a string", f"use one of {', '.join(allowed_items())}")
    text = item.strip().lower()
    name, _, precision = text.partition(":")
    precision = precision or "fp32"
    spec = FORMATS.get(name)
    if spec is None or precision not in spec.precisions:
        raise ConfigError(
            f"unknown export format '{item}'",
            f"use 'format:precision', one of {', '.join(allowed_items())} (or 'all')",
        )
    return name, precision


def parse_formats(items: Iterable[str] | str) -> list[tuple[str, str]]:
    """Parse a list of ``"format:precision"`` strings, or ``"all"``, into unique ``(format, precision)`` pairs.

    Order is kept; duplicates are dropped. ``"all"`` expands to every pair in the table.
    """
    if isinstance(items, str):
        items = allowed_items() if items.strip().lower() == "all" else [items]
    pairs: list[tuple[str, str]] = []
    for item in items:
        pair = parse_format(item)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def _module_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def gpu_present() -> bool:
    """True when an NVIDIA GPU is visible (``nvidia-smi`` on PATH or a Jetson device tree)."""
    return shutil.which("nvidia-smi") is not None or _is_jetson()


def _is_jetson() -> bool:
    from pathlib import Path

    try:
        return "jetson" in Path("/proc/device-tree/model").read_text(errors="ignore").lower()
    except OSError:
        return False


def available_here(fmt: str, precision: str) -> tuple[bool, str]:
    """Whether ``fmt:precision`` can be produced *completely* on this machine, and why not.

    For TensorRT "completely" means building the engine; without a GPU the exporter still writes the ONNX, the
    calibration cache and the build recipe, and the engine is built on the target.
    """
    spec = FORMATS.get(fmt)
    if spec is None:
        return False, f"unknown format '{fmt}'"
    if precision not in spec.precisions:
        return False, f"{fmt} has no {precision} (has {', '.join(spec.precisions)})"
    missing = [m for m in spec.modules if not _module_present(m)]
    if missing:
        return False, f"missing {', '.join(missing)}: pip install 'edgecompress[{spec.extra}]'"
    if spec.needs_gpu_to_build:
        if not _module_present("tensorrt"):
            return False, "tensorrt is not installed (engine is built on the target from the recipe)"
        if not gpu_present():
            return False, "no NVIDIA GPU here (engine is built on the target from the recipe)"
    return True, "ok"
