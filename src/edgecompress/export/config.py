"""Export configuration (pydantic + stdlib only, so ``edgecompress.config`` stays light)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edgecompress._schema import StrictModel
from edgecompress.errors import ConfigError
from edgecompress.export.formats import parse_formats

CalibrationMethod = Literal["minmax", "entropy", "percentile", "auto"]


class Int8RecoveryConfig(StrictModel):
    """``export.int8_recovery``: accuracy-aware INT8 for an INT8 artifact that misses ``max_accuracy_drop``.

    Layers are ranked by their local INT8 error on calibration data; the most sensitive stay float (ONNX Runtime:
    excluded nodes; OpenVINO: NNCF's ignored scope) until the gate holds. When that needs more than
    ``max_float_fraction`` of the layers, or the mixed-precision model is less than ``min_speedup`` x as fast as FP32
    in the same runtime, QAT with distillation from the FP32 model runs (``qat_steps`` on the calibration images).
    """

    enabled: bool = Field(default=True, description="recover INT8 artifacts that miss the accuracy gate")
    min_speedup: float = Field(
        default=1.3,
        ge=0.0,
        description="mixed precision ships when at least this many times as fast as FP32 in its runtime (batch 1, "
        "one thread, paired rounds); below it QAT is tried, and the faster of what holds the gate ships (0: never "
        "QAT for speed)",
    )
    max_float_fraction: float = Field(
        default=0.5, gt=0.0, le=1.0, description="most compute layers mixed precision may keep float"
    )
    sensitivity_samples: int = Field(default=64, ge=1, le=4096, description="calibration images ranking the layers")
    qat: bool = Field(default=True, description="run QAT with distillation when mixed precision is not enough")
    qat_steps: int = Field(default=300, ge=1, le=100_000, description="QAT optimizer steps")
    qat_batch_size: int = Field(default=32, ge=1, le=4096, description="QAT images per step (calibration split)")
    qat_lr: float = Field(default=1e-4, gt=0.0, le=1.0, description="QAT Adam learning rate (ranges learn 10x faster)")


class ExportConfig(StrictModel):
    """The ``export:`` section: which artifacts to write and how to quantize them."""

    formats: list[str] | Literal["all"] = Field(
        default=["onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:int8"],
        description="'format:precision' items (see edgecompress.export.formats.FORMATS) or 'all'",
    )
    int8_calibration: CalibrationMethod = Field(
        default="auto",
        description="activation range method for INT8; 'auto' quantizes with each and keeps the best on val "
        "(accuracy first, ECE second)",
    )
    calib_samples: int = Field(default=512, ge=1, le=100_000, description="calibration samples for INT8")
    keep_head_float: Literal["auto"] | bool = Field(
        default="auto",
        description="keep the final Gemm/MatMul (classifier head) in float; 'auto' does so only when it protects "
        "accuracy",
    )
    keep_stem_float: bool = Field(
        default=True,
        description="ONNX Runtime INT8: keep a stem Conv fed by an image of <= 4 channels in float (its 9-27-long "
        "reduction is too short for INT8 kernels and runs faster in float; models without such a stem are not "
        "affected). OpenVINO runs such stems fast in INT8 and ignores this",
    )
    max_accuracy_drop: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="largest allowed top-1 drop of an artifact on val, through its runtime, below the PyTorch model "
        "(fraction, 0.01 = 1 pt); an artifact beyond it is recorded as failed and the other formats go on (an INT8 "
        "one of onnx or openvino first goes through int8_recovery)",
    )
    int8_recovery: Int8RecoveryConfig = Field(
        default_factory=Int8RecoveryConfig,
        description="accuracy-aware INT8: mixed precision, then QAT, for an INT8 artifact missing max_accuracy_drop",
    )
    opset: int = Field(default=18, ge=13, le=23, description="ONNX opset")
    simplify: bool = Field(default=True, description="simplify ONNX with onnxslim when outputs stay equal")
    dynamic_batch: bool = Field(default=True, description="export with a dynamic batch axis named 'batch'")
    max_batch: int = Field(default=64, ge=1, le=4096, description="largest batch (TensorRT profiles, ExecuTorch)")
    output_probabilities: bool = Field(
        default=False, description="append softmax so the graph outputs 'probabilities' instead of 'logits'"
    )

    @field_validator("formats", mode="before")
    @classmethod
    def _check_formats(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() != "all":
            value = [value]
        if isinstance(value, str):
            return "all"
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError("formats must be 'all' or a non-empty list of 'format:precision' strings")
        try:
            pairs = parse_formats(list(value))
        except ConfigError as exc:  # pydantic wraps ValueError with the field path
            raise ValueError(f"{exc.problem}: {exc.fix}") from None
        return [f"{name}:{precision}" for name, precision in pairs]

    def format_pairs(self) -> list[tuple[str, str]]:
        """The validated ``(format, precision)`` pairs, ``"all"`` expanded."""
        return parse_formats(self.formats)


def load_export_config(data: dict | None) -> ExportConfig:
    """Validate a plain dict into :class:`ExportConfig`, turning pydantic errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return ExportConfig.model_validate(data or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "export." + ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {msg}", "fix this value in the export section of the config") from None
