"""The export format table: what each target format is, which precisions it has, what it needs and what does it.

Capabilities are data (ultralytics ``export_formats`` without positional lookups): validation, the export driver and
the report all read :data:`FORMATS` by name. A row carries its behaviour as lazy ``"module:function"`` references
(its exporter, its parity target, its rescale hook), so this module stays light and no parallel dict keyed by the
same names exists elsewhere.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        exporter: ``"module:function"`` of ``exporter(session, precision, folder) -> (files, model_file, info)``.
        modules: Python modules the exporter imports.
        parity_target: ``"module:function"`` of ``hook(precision, model_file) -> (runtime, file, precision)`` naming
            what the parity check and the val evaluation run when the artifact itself cannot run here (TensorRT
            without a GPU: the ONNX the engine is built from); ``None`` runs the artifact in :attr:`runtime`.
        rescale: ``"module:function"`` of ``hook(artifact, factor, folder) -> (files, model_file)`` that multiplies
            the logits inside the graph (re-folding a re-fitted temperature); ``None`` when the format cannot be
            edited and must be exported again.
    """

    name: str
    suffix: str
    precisions: tuple[str, ...]
    runtime: str
    description: str
    exporter: str
    extra: str = "core"
    needs_gpu_to_build: bool = False
    builds_on_target: bool = False
    modules: tuple[str, ...] = ()
    parity_target: str | None = None
    rescale: str | None = None

    def export_fn(self) -> Callable[..., tuple[list[Path], Path, dict[str, Any]]]:
        """The exporter function (imports its module on first use)."""
        return resolve(self.exporter)

    def parity_of(self, precision: str, model_file: Path) -> tuple[str, Path, str]:
        """``(runtime, file, precision judged)`` that the parity check and the val evaluation run."""
        if self.parity_target is None:
            return self.runtime, Path(model_file), precision
        return resolve(self.parity_target)(precision, Path(model_file))

    def rescale_fn(self) -> Callable[..., tuple[list[Path], Path]] | None:
        """The rescale hook, or ``None`` when this format cannot be edited in place."""
        return resolve(self.rescale) if self.rescale else None


def resolve(ref: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


_EXPORTERS = "edgecompress.export.exporters"
_RESCALE = "edgecompress.export.rescale"


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name="onnx",
            suffix=".onnx",
            precisions=("fp32", "fp16", "int8"),
            runtime="onnxruntime",
            description="ONNX (opset 18); INT8 as static QDQ from ONNX Runtime quantization",
            exporter=f"{_EXPORTERS}:export_onnx",
            modules=("onnx", "onnxruntime"),
            rescale=f"{_RESCALE}:rescale_onnx_files",
        ),
        FormatSpec(
            name="openvino",
            suffix=".xml",
            precisions=("fp32", "fp16", "int8"),
            runtime="openvino",
            description="OpenVINO IR (.xml + .bin); FP16 compressed weights; INT8 with NNCF",
            exporter=f"{_EXPORTERS}:export_openvino",
            modules=("openvino", "nncf"),
            rescale=f"{_RESCALE}:rescale_openvino_files",
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
            exporter=f"{_EXPORTERS}:export_tensorrt",
            modules=("onnx", "onnxruntime"),
            parity_target=f"{_EXPORTERS}:tensorrt_parity_target",
            rescale=f"{_RESCALE}:rescale_tensorrt_files",
        ),
        FormatSpec(
            name="executorch",
            suffix=".pte",
            precisions=("fp32", "int8"),
            runtime="executorch",
            extra="mobile",
            description="ExecuTorch program with the XNNPACK delegate; INT8 by PT2E quantization",
            exporter=f"{_EXPORTERS}:export_executorch",
            modules=("executorch",),
        ),
        FormatSpec(
            name="ort",
            suffix=".ort",
            precisions=("fp32", "int8"),
            runtime="onnxruntime",
            description="ORT format for ONNX Runtime Mobile (converted from the ONNX artifact)",
            exporter=f"{_EXPORTERS}:export_ort",
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
