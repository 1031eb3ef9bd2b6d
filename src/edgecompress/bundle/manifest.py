"""The bundle manifest: what an app needs to run the model and trust its numbers.

``manifest.json`` sits at the top of every bundle; ``manifest.schema.json`` beside it is
``Manifest.model_json_schema()`` so apps in other languages can validate it. ``files`` lists every other file of the
bundle with its sha256; the manifest does not list itself, so ``SHA256SUMS`` beside it covers every file of the bundle,
the manifest included (``sha256sum -c SHA256SUMS``).

``preprocessing`` is also the input contract for apps: ``input_dtype``, ``value_range`` and ``color_mode`` say what raw
values an app feeds (e.g. 8-bit RGB in [0, 255]); ``scale``, ``mean`` and ``std`` how the model normalizes them.
"""

from __future__ import annotations

import json
import math
import os
import stat
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from edgecompress._schema import StrictModel
from edgecompress.errors import BundleError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA_NAME = "manifest.schema.json"
SUMS_NAME = "SHA256SUMS"
MAX_MANIFEST_BYTES = 4 << 20  # a manifest is a few KiB; 1000 labels are ~20 KiB
MAX_MANIFEST_DEPTH = 32
MAX_SIDE = 8192  # pixels per side of preprocessing.size
MAX_INPUT_ELEMENTS = 64 << 20  # per sample, from preprocessing.size x channels or a fixed input shape


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def check_relative(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path inside the bundle, else raise ``ValueError``."""
    if not path or "\\" in path or path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"'{path}' is not a relative POSIX path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"'{path}' has an empty, '.' or '..' component")
    if any(c in path for c in "\n\r\x00"):
        raise ValueError(f"{path!r} has a control character")
    return str(PurePosixPath(path))


class InputContract(StrictModel):
    """The model input: names, shape with a symbolic ``"batch"`` dim, dtype and layout."""

    names: list[str] = Field(min_length=1, description="Input tensor names, in order (one for image classifiers).")
    shape: list[int | str] = Field(
        min_length=1, max_length=8, description='Shape, e.g. ["batch", 3, 224, 224]; strings are symbolic dims.'
    )
    dtype: Literal["float32", "float16", "uint8", "int8"] = Field("float32", description="Input element type.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Axis order of the input tensor.")

    @field_validator("shape")
    @classmethod
    def _dims_bounded(cls, value: list[int | str]) -> list[int | str]:
        n = 1
        for d in value:
            if isinstance(d, int):
                if d < 1:
                    raise ValueError(f"dimension {d} is not positive")
                n *= d
        if n > MAX_INPUT_ELEMENTS * 1024:
            raise ValueError(f"the shape holds {n} elements, more than a bundle's model takes")
        return value


class OutputSpec(StrictModel):
    """The model output: one tensor of logits or probabilities ``[N, K]``."""

    name: str = Field(description="Output tensor name.")
    kind: Literal["logits", "probabilities"] = Field("logits", description="What the output holds.")
    calibrated: bool = Field(False, description="True when temperature scaling is already applied (folded).")


class ModelInfo(StrictModel):
    """The model file of the bundle and how to run it."""

    format: str = Field(description="Artifact format: onnx, ort, openvino, tensorrt, executorch.")
    precision: str = Field(description="fp32, fp16 or int8.")
    runtime: str = Field(description="Runtime name for edgecompress.devices.get_runtime, e.g. onnxruntime.")
    file: str = Field(description="Relative path of the file to load (e.g. model/model.onnx, model/model.xml).")
    input: InputContract
    output: OutputSpec

    @field_validator("file")
    @classmethod
    def _file_relative(cls, value: str) -> str:
        return check_relative(value)


class Preprocessing(StrictModel):
    """The input contract: what raw values an app feeds, and how they become the model input.

    An app feeds ``input_dtype`` values in ``value_range`` (``color_mode`` channels, resized to ``size``); the model
    input is ``(raw * scale - mean[c]) / std[c]`` in ``layout``. An 8-bit image fed to a contract of, say, [0, 16]
    (scikit-learn's digits) is first mapped ``v / 255 * 16``.
    """

    mean: list[float] = Field(description="Per-channel mean, after scaling.")
    std: list[float] = Field(description="Per-channel std, after scaling.")
    size: tuple[int, int] = Field(description="Input (height, width) in pixels.")
    channels: int = Field(ge=1, le=4, description="1 (grayscale) or 3 (RGB).")
    scale: float = Field(1.0 / 255.0, gt=0, description="Raw value multiplier applied before (x - mean) / std.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Axis order the model expects.")
    input_dtype: Literal["uint8", "uint16", "float32"] = Field(
        "uint8", description="Element type of the raw values an app feeds (before scale/mean/std)."
    )
    value_range: tuple[float, float] = Field(
        (0.0, 255.0), description="Range of the raw values an app feeds, e.g. [0, 255] for 8-bit images."
    )
    color_mode: Literal["L", "RGB"] | None = Field(
        None, description="Colour mode of the raw image: L (grayscale) or RGB; default from channels."
    )

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: list[float]) -> list[float]:
        if any(s <= 0 for s in value):
            raise ValueError("std values must be > 0")
        return value

    @field_validator("size")
    @classmethod
    def _size_bounded(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not all(1 <= side <= MAX_SIDE for side in value):
            raise ValueError(f"size {list(value)} is outside 1..{MAX_SIDE} pixels per side")
        return value

    @field_validator("value_range")
    @classmethod
    def _range_ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"value_range {list(value)} needs finite low < high")
        return value

    @model_validator(mode="after")
    def _one_per_channel(self) -> Preprocessing:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values (one per channel)")
        if self.size[0] * self.size[1] * self.channels > MAX_INPUT_ELEMENTS:
            raise ValueError(f"size {list(self.size)} x {self.channels} channels is too large an input")
        if self.color_mode is None:
            object.__setattr__(self, "color_mode", "L" if self.channels == 1 else "RGB")
        return self


class Temperature(StrictModel):
    """The fitted temperature; ``folded`` means the graph already divides logits by it."""

    value: float | None = Field(1.0, gt=0, description="Temperature T fitted on the validation split (None: unknown).")
    folded: bool = Field(True, description="True when T is folded into the model's last layer.")


class Metrics(StrictModel):
    """Numbers measured for this artifact (fractions, not percent); None when not measured."""

    accuracy: float | None = None
    ece: float | None = None
    nll: float | None = None
    brier: float | None = None
    latency_p50_ms: dict[str, float] = Field(default_factory=dict, description="p50 latency in ms per batch size.")
    device: str | None = Field(None, description="Device the latency was measured on.")


class Source(StrictModel):
    """Where the model came from."""

    teacher: str | None = None
    student: str | None = None


class Manifest(StrictModel):
    """The ``manifest.json`` of a bundle (schema version 1)."""

    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION, description="Manifest schema version.")
    name: str = Field(description="Bundle name (also its folder name).")
    created: str = Field(default_factory=now_iso, description="ISO 8601 creation time.")
    model: ModelInfo
    preprocessing: Preprocessing
    labels: list[str] = Field(description="Class names, index i is output column i.")
    temperature: Temperature = Field(default_factory=Temperature)
    metrics: Metrics = Field(default_factory=Metrics)
    files: dict[str, str] = Field(description="Every bundle file except manifest.json: relative path -> sha256.")
    tool_versions: dict[str, str] = Field(default_factory=dict)
    config_hash: str | None = Field(None, description="Hash of the resolved pipeline config.")
    source: Source = Field(default_factory=Source)

    @field_validator("created")
    @classmethod
    def _iso_time(cls, value: str) -> str:
        datetime.fromisoformat(value)
        return value

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("labels is empty; a classifier has at least one class name")
        seen: set[str] = set()
        for label in value:
            if not label.strip():
                raise ValueError("labels holds an empty name")
            if label in seen:
                raise ValueError(f"labels names {label!r} twice; output columns need distinct names")
            seen.add(label)
        return value

    @field_validator("files")
    @classmethod
    def _files_ok(cls, value: dict[str, str]) -> dict[str, str]:
        for rel, digest in value.items():
            check_relative(rel)
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"files['{rel}'] is not a lowercase hex sha256")
        return value


def parse_manifest(data: Any, *, source: str = MANIFEST_NAME) -> Manifest:
    """Validate a decoded manifest, checking ``schema_version`` before anything else.

    Raises:
        BundleError: not an object, a newer schema version, or a field that fails validation (one line).
    """
    if not isinstance(data, dict):
        raise BundleError(f"{source} is not a JSON object", "rebuild the bundle with edgecompress")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema version {version} is newer than this edgecompress supports ({SCHEMA_VERSION})",
            "upgrade edgecompress",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise BundleError(
            f"{source} is malformed: {loc}: {first['msg']}{more}", "rebuild the bundle with edgecompress"
        ) from None


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def loads_manifest(text: str, *, source: str = MANIFEST_NAME) -> Any:
    """Decode manifest JSON within the size and depth limits (one-line :class:`BundleError` otherwise)."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{source} is {len(text)} bytes, more than a manifest holds (limit {MAX_MANIFEST_BYTES})",
            "rebuild the bundle with edgecompress",
        )
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{source} is not valid JSON ({exc})", "rebuild the bundle with edgecompress") from None
    if data is None or _depth(data) > MAX_MANIFEST_DEPTH:
        raise BundleError(
            f"{source} is nested deeper than a manifest is (limit {MAX_MANIFEST_DEPTH})",
            "rebuild the bundle with edgecompress",
        )
    return data


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and validate ``bundle_dir/manifest.json`` (a regular file within the size and depth limits)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise BundleError(
            f"no {MANIFEST_NAME} in {bundle_dir}", "point at a bundle folder or .zip written by edgecompress"
        )
    if st.st_size > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{path} is {st.st_size} bytes, more than a manifest holds (limit {MAX_MANIFEST_BYTES})",
            "rebuild the bundle with edgecompress",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc})", "rebuild the bundle with edgecompress") from None
    return parse_manifest(loads_manifest(text, source=str(path)), source=str(path))
