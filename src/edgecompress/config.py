"""The pipeline's typed schema: one YAML file in, validated, a resolved copy saved in the run directory.

Each stage owns its config section (``<subpackage>/config.py``, pydantic + stdlib only); this module composes them.
Errors name the field path, the bad value and what is allowed, in one line (:class:`~edgecompress.errors.ConfigError`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from edgecompress._schema import StrictModel
from edgecompress.bundle.config import BundleConfig
from edgecompress.calibration.config import CalibrationConfig
from edgecompress.data.config import DataConfig
from edgecompress.devices.config import BenchmarkConfig
from edgecompress.distill.config import DistillConfig, TrainConfig
from edgecompress.errors import ConfigError
from edgecompress.export.config import ExportConfig
from edgecompress.models.config import ModelSpec

CONFIG_VERSION = 1


class TeacherConfig(StrictModel):
    """Where the teacher comes from: a checkpoint (state dict for a model spec, or a TorchScript / torch.export
    program), or a model spec trained here from the data."""

    model: ModelSpec | None = Field(
        None,
        description="Architecture: a built-in family with params, or a 'pkg.mod:fn' factory (its module must be in "
        "trust_factories). Not needed for a TorchScript or torch.export checkpoint.",
    )
    checkpoint: Path | None = Field(
        None,
        description="State dict (plain, or under state_dict / model_state_dict / model; module. or model. key "
        "prefixes are removed), loaded with weights_only=True; or a TorchScript file (.pt/.ts) or a torch.export "
        "program (.pt2), which cannot be pruned: the student then needs distill.student.model.",
    )
    output: int | str | None = Field(
        None,
        description="For a teacher returning a tuple/list/dict: the index or key of the logits (e.g. 0 or 'logits').",
    )
    accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The teacher's accuracy as the user measured it (a fraction, e.g. 0.991); the run warns when its "
        "accuracy on val is far below.",
    )
    train: TrainConfig | None = Field(None, description="Train the teacher here when no checkpoint is given.")
    label_smoothing: bool = Field(
        False, description="The teacher was trained with label smoothing (then it is distilled at T = 1)."
    )

    @model_validator(mode="after")
    def _source(self) -> TeacherConfig:
        if self.checkpoint is None and self.train is None:
            raise ValueError("give teacher.checkpoint (a state-dict file) or teacher.train (to train it here)")
        if self.model is None and self.checkpoint is None:
            raise ValueError("teacher.train needs teacher.model (the architecture to train)")
        if self.model is not None and None not in (self.output, self.model.output) and self.output != self.model.output:
            raise ValueError(
                f"teacher.output ({self.output!r}) and teacher.model.output ({self.model.output!r}) differ: give one"
            )
        return self


class PipelineConfig(StrictModel):
    """The whole pipeline: data → teacher → distill → calibrate → export → benchmark → report and bundles."""

    version: int = Field(CONFIG_VERSION, description="Config schema version.")
    name: str = Field("run", min_length=1, pattern=r"^[A-Za-z0-9._-]+$", description="Run name (letters, digits, ._-).")
    seed: int = Field(0, ge=0, description="Seed of splits, initialization, shuffling and augmentation.")
    data: DataConfig
    teacher: TeacherConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    bundle: BundleConfig = Field(default_factory=BundleConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.version > CONFIG_VERSION:
            raise ValueError(f"config version {self.version} is newer than supported ({CONFIG_VERSION})")
        datafree = self.data.dataset == "none"
        if datafree and self.teacher.checkpoint is None:
            raise ValueError("data.dataset 'none' (data-free) needs teacher.checkpoint: there is no data to train on")
        if datafree and self.distill.datafree is None:
            raise ValueError("data.dataset 'none' needs a distill.datafree section (use {} for the defaults)")
        return self


def _format_error(exc: ValidationError, source: str) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after")) or "(top level)"
    bad = first.get("input")
    bad_text = json.dumps(bad, default=str) if not isinstance(bad, dict) else "{...}"
    if len(bad_text) > 60:
        bad_text = bad_text[:57] + "..."
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (not in the schema)"
        fix = "remove or rename it; `edgecompress schema` lists the allowed keys"
    elif first["type"] == "missing":
        msg = "required key is missing"
        fix = "add it; `edgecompress schema` shows its type"
    else:
        fix = "see `edgecompress schema` for the allowed values"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{source}: {loc}: {msg}; got {bad_text}{more}", fix)


def parse_config(data: Any, *, source: str = "config", base_dir: Path | None = None) -> PipelineConfig:
    """Validate a mapping into :class:`PipelineConfig`; relative paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections, got {type(data).__name__}",
            "start from examples/digits.yaml",
        )
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_error(exc, source) from None
    return _resolve_paths(cfg, base_dir) if base_dir else cfg


def _resolve_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    updates: dict[str, Any] = {}
    if cfg.data.path is not None:
        updates["data"] = cfg.data.model_copy(update={"path": fix(cfg.data.path)})
    if cfg.teacher.checkpoint is not None:
        updates["teacher"] = cfg.teacher.model_copy(update={"checkpoint": fix(cfg.teacher.checkpoint)})
    return cfg.model_copy(update=updates) if updates else cfg


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML config file (never executes anything: ``yaml.safe_load``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", "pass the path of a YAML file, e.g. examples/digits.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}", "fix the syntax (indentation, colons, quotes)") from None
    return parse_config(data, source=path.name, base_dir=path.parent.resolve())


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (every default made explicit)."""
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file."""
    return PipelineConfig.model_json_schema()
