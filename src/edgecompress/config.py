"""The pipeline's typed schema: one YAML file in, validated, a resolved copy saved in the run directory.

Each stage owns its config section (``<subpackage>/config.py``, pydantic + stdlib only); this module composes them.
Errors name the field path, the bad value and what is allowed, in one line (:class:`~edgecompress.errors.ConfigError`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from edgecompress._schema import StrictModel
from edgecompress.budget.config import TargetConfig
from edgecompress.bundle.config import BundleConfig
from edgecompress.calibration.config import CalibrationConfig
from edgecompress.data.config import DataConfig
from edgecompress.devices.config import BenchmarkConfig
from edgecompress.distill.config import DistillConfig, TrainConfig
from edgecompress.errors import ConfigError
from edgecompress.export.config import ExportConfig
from edgecompress.models.config import ModelSpec

CONFIG_VERSION = 1
MAX_YAML_BYTES = 1 << 20  # a config is a few KiB
MAX_YAML_ALIASES = 1000
MAX_YAML_NODES = 200_000  # after expanding aliases: an alias bomb stops here, before anything is built
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Packages besides the standard library whose functions load, unpickle or run other code (torch.hub loads
# hubconf.py): never a factory, whatever a config or flag says.
UNTRUSTABLE_MODULES = frozenset(
    {"__main__", "cloudpickle", "dill", "edgecompress", "IPython", "joblib", "numpy", "pandas", "requests", "torch",
     "yaml"}
)  # fmt: skip


def untrusted_reason(module: str) -> str | None:
    """Why ``module`` may never provide a model factory, or None.

    A listed module is code the user chose to run: importing it runs its top-level code, and its factory runs when
    the model is built. What can never be chosen: Python's standard library (``sys.stdlib_module_names``: ``os``,
    ``subprocess``, ``timeit``, ``cProfile``, ``runpy``, ... run strings or commands) and the packages in
    :data:`UNTRUSTABLE_MODULES`, which load or run other code. The rule is by top-level package name, so a submodule
    cannot get around it.
    """
    import sys

    root = module.split(".", 1)[0]
    if root in sys.stdlib_module_names or root in sys.builtin_module_names:
        return "a standard-library module: modules such as os, subprocess, timeit or cProfile run strings or commands"
    if root in UNTRUSTABLE_MODULES:
        return f"the {root} package loads, unpickles or runs other code (torch.hub, numpy.load, yaml.unsafe_load, ...)"
    return None


def check_trustable(module: str) -> str:
    """``module`` if it may be named as a trusted factory module, else ``ValueError`` saying why not."""
    if not _MODULE_RE.match(module):
        raise ValueError(f"{module!r} is not a module name (dotted identifiers, e.g. mypkg.models)")
    reason = untrusted_reason(module)
    if reason is not None:
        raise ValueError(f"{module!r} can run any code ({reason}); it cannot be trusted")
    return module


def config_factories(cfg: PipelineConfig) -> list[str]:
    """Every ``pkg.mod:fn`` model factory the config names (teacher, student, assistants)."""
    found = [cfg.teacher.model.factory] if cfg.teacher.model is not None and cfg.teacher.model.factory else []
    members = [cfg.distill.student, *(cfg.distill.assistants if isinstance(cfg.distill.assistants, list) else [])]
    found += [str(m.model["factory"]) for m in members if m.model and m.model.get("factory")]
    return list(dict.fromkeys(found))


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
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of splits, initialization, shuffling and augmentation.")
    data: DataConfig
    teacher: TeacherConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    trust_factories: list[str] = Field(
        default_factory=list,
        description="Modules whose factories this config may import ('pkg.mod' allows 'pkg.mod:fn' and its "
        "submodules). A config is trusted like code only where the user says so: here or with --trust-factory.",
    )
    plugins: list[str] = Field(
        default_factory=list,
        description="Modules imported before the run starts, so that the components they register (a loss, a "
        "calibration method, a transport: edgecompress._registry) can be named in this config. Code the user chose "
        "to run, trusted like trust_factories; never imported from a received run.",
    )
    target: TargetConfig | None = Field(
        None,
        description="Compress to a budget: a device and a latency / size / speed-up target; the pipeline measures "
        "candidate students there before training and distills the largest that meets it (sets the student).",
    )
    deploy_only: bool = Field(
        False,
        description="Deploy the teacher as it is: no pruning, no distillation; calibrate, export/quantize, benchmark, "
        "report and bundle the user's model. Written in a config as distill: {student: none}.",
    )

    @field_validator("trust_factories", "plugins")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for module in value:
            check_trustable(module)
        return value

    @model_validator(mode="before")
    @classmethod
    def _student_none(cls, data: Any) -> Any:
        """``distill: {student: none}`` is the deploy-only switch (see :mod:`edgecompress.pipeline.deploy_only`)."""
        distill = data.get("distill") if isinstance(data, dict) else None
        if not isinstance(distill, dict) or "student" not in distill:
            return data
        if distill["student"] is not None and str(distill["student"]).strip().lower() != "none":
            return data
        others = sorted(k for k in distill if k != "student")
        if others:
            raise ValueError(
                f"distill.student: none deploys the teacher as it is (nothing is distilled); remove distill.{others[0]}"
            )
        if data.get("deploy_only") is False:
            raise ValueError("distill.student: none means deploy_only: true; remove one of them")
        return {**{k: v for k, v in data.items() if k != "distill"}, "deploy_only": True}

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        if self.version > CONFIG_VERSION:
            raise ValueError(f"config version {self.version} is newer than supported ({CONFIG_VERSION})")
        datafree = self.data.dataset == "none"
        if datafree and self.teacher.checkpoint is None:
            raise ValueError("data.dataset 'none' (data-free) needs teacher.checkpoint: there is no data to train on")
        if datafree and self.distill.datafree is None:
            raise ValueError("data.dataset 'none' needs a distill.datafree section (use {} for the defaults)")
        if self.deploy_only and (datafree or self.target is not None):
            what = "data.dataset 'none' (data-free)" if datafree else "target (compress to a budget)"
            raise ValueError(f"distill.student: none (deploy-only) ships the teacher as it is; {what} needs a student")
        if self.target is not None:
            if datafree:
                raise ValueError("target (compress to a budget) needs a dataset: remove target or give data.dataset")
            if self.distill.student.prune_ratio is None:
                raise ValueError("target chooses the student by pruning: use distill.student.prune_ratio, not model")
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
    try:  # with plugins listed, a component name they register is checked when the run imports them
        cfg = PipelineConfig.model_validate(data, context={"plugins": bool(data.get("plugins"))})
    except ValidationError as exc:
        raise _format_error(exc, source) from None
    return _resolve_paths(cfg, base_dir) if base_dir else cfg


def _resolve_paths(cfg: PipelineConfig, base: Path) -> PipelineConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p).resolve()

    named = {"data.path": cfg.data.path, "teacher.checkpoint": cfg.teacher.checkpoint,
             "benchmark.profiles_dir": cfg.benchmark.profiles_dir,
             "target.cache_dir": cfg.target.cache_dir if cfg.target is not None else None}  # fmt: skip
    for field, value in named.items():
        if value is not None and "\x00" in str(value):
            raise ConfigError(f"{field}: the path {str(value)!r} holds a NUL byte", f"give {field} as a plain path")

    updates: dict[str, Any] = {}
    if cfg.data.path is not None:
        updates["data"] = cfg.data.model_copy(update={"path": fix(cfg.data.path)})
    if cfg.teacher.checkpoint is not None:
        updates["teacher"] = cfg.teacher.model_copy(update={"checkpoint": fix(cfg.teacher.checkpoint)})
    if cfg.target is not None and not cfg.target.cache_dir.expanduser().is_absolute():
        updates["target"] = cfg.target.model_copy(update={"cache_dir": fix(cfg.target.cache_dir)})
    return cfg.model_copy(update=updates) if updates else cfg


class YamlLimitError(ValueError):
    """A YAML document over the size, alias or expansion limits."""


class DuplicateKeyError(ValueError):
    """A YAML mapping that gives one key twice (a plain YAML loader would silently keep the last value)."""


def safe_load_yaml(text: str, *, source: str = "YAML") -> Any:
    """``yaml.safe_load`` with limits on what a file from outside can make it do.

    Refuses more than :data:`MAX_YAML_ALIASES` aliases, documents whose alias expansion exceeds
    :data:`MAX_YAML_NODES` nodes (a "billion laughs" bomb is refused after composing, before anything is built),
    recursive aliases and nesting too deep for the parser — each as :class:`YamlLimitError` naming ``source``.
    """
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise YamlLimitError(f"{source} uses more than {MAX_YAML_ALIASES} YAML aliases")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                        continue  # merge keys may override on purpose; complex keys fail in the constructor
                    key = self.construct_object(key_node)
                    line = key_node.start_mark.line + 1
                    if key in seen:
                        raise DuplicateKeyError(
                            f"{source}: the key {key!r} appears twice in one mapping (lines {seen[key]} and {line})"
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    if len(text) > MAX_YAML_BYTES:
        raise YamlLimitError(f"{source} is {len(text)} characters, more than a config holds ({MAX_YAML_BYTES})")
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except RecursionError:
        raise YamlLimitError(f"{source} is nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(node: Any, source: str) -> None:
    """Refuse a composed YAML graph whose tree, aliases expanded, has more than MAX_YAML_NODES nodes."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise YamlLimitError(f"{source} has a recursive YAML alias")
        busy.add(key)
        total = 1
        if isinstance(n.value, list):
            for item in n.value:
                for child in item if isinstance(item, tuple) else (item,):
                    total += size(child)
                    if total > MAX_YAML_NODES:
                        raise YamlLimitError(
                            f"{source} expands to more than {MAX_YAML_NODES} values through YAML aliases (alias bomb?)"
                        )
        busy.discard(key)
        sizes[key] = total
        return total

    size(node)


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a YAML config file (never executes anything: a bounded ``yaml.SafeLoader``)."""
    import yaml

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file not found: {path}", "pass the path of a YAML file, e.g. examples/digits.yaml")
    if st.st_size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {st.st_size} bytes is more than a config holds (limit {MAX_YAML_BYTES})",
            "pass the pipeline config YAML, e.g. examples/digits.yaml",
        )
    try:
        data = safe_load_yaml(path.read_text(encoding="utf-8"), source=str(path))
    except YamlLimitError as exc:
        raise ConfigError(str(exc), "write the config without YAML anchors/aliases (or with a few)") from None
    except DuplicateKeyError as exc:
        raise ConfigError(str(exc), "keep one of the two; YAML keeps only the last, which hides the first") from None
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
