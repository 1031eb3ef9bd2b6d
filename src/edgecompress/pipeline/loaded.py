"""A finished run directory, read back through the pipeline's own loader (``run.json`` + re-rooting).

For tools that work on a run after the fact (``benchmarks/``, notebooks): the recorded stage folders, the typed
results, the teacher and the calibrated student rebuilt from their state files, and the artifacts.

Example:
    >>> run = load_run("runs/demo")
    >>> student = run.student()              # calibrated student, T not folded
    >>> [a.name for a in run.artifacts if a.ok]
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecompress.config import PipelineConfig, load_config
from edgecompress.errors import ConfigError
from edgecompress.pipeline.results import RunState

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecompress.data import Splits
    from edgecompress.export import Artifact


@dataclass
class LoadedRun:
    """A finished run: its root, resolved config and typed state; models and splits are loaded on demand."""

    root: Path
    config: PipelineConfig
    state: RunState
    trusted_modules: Collection[str] = ()

    @cached_property
    def splits(self) -> Splits:
        from edgecompress.data import load_splits

        return load_splits(self.config.data, seed=self.config.seed)

    def stage_dir(self, name: str) -> Path:
        """The folder recorded for stage ``name`` ("teacher", "distill", "calibrate", "export", "benchmark", ...)."""
        folder = self.state.stage_dir(name)
        if folder is None:
            raise ConfigError(f"{self.root} has no finished '{name}' stage", "run the pipeline to completion first")
        return Path(folder)

    def build(self, spec: dict[str, Any], state_file: Path) -> nn.Module:
        """Rebuild a model from a ModelSpec dict and load its (possibly pruned) state dict; eval mode."""
        from edgecompress.models import ModelSpec, build_model, load_state

        c, h, w = self.state.data.input_shape
        model = build_model(
            ModelSpec(**spec),
            in_channels=c,
            num_classes=self.state.data.num_classes,
            input_size=(h, w),
            trusted_modules=self.trusted_modules,
        )
        return load_state(model, state_file).eval()

    def teacher(self) -> nn.Module:
        if self.state.teacher.spec is None:
            raise ConfigError("the teacher of this run is a TorchScript / .pt2 program", "load it from its own file")
        return self.build(self.state.teacher.spec, self._file("teacher", "teacher.pt"))

    def student(self) -> nn.Module:
        """The calibrated student before T is folded (T only rescales the logits; timing is the same)."""
        return self.build(self.state.distill.student_spec, self._file("calibrate", "student.pt"))

    def _file(self, stage: str, name: str) -> Path:
        """A file of a stage's folder, resolved inside the run (a link to elsewhere is refused)."""
        from edgecompress._contain import contained

        return contained(self.root, self.stage_dir(stage) / name, what=f"the {stage} stage's {name}")

    @property
    def temperature(self) -> float:
        return float(self.state.calibrate.temperature)

    @property
    def artifacts(self) -> list[Artifact]:
        """Every exported artifact, failed ones included (``ok`` False)."""
        return list(self.state.export.artifacts)


def load_run(run_dir: str | Path, *, trusted_modules: Collection[str] = ()) -> LoadedRun:
    """Read ``run.json`` and ``config.resolved.yaml`` of a finished run (one-line errors when it is not one)."""
    from edgecompress.pipeline.run import read_state

    root = Path(run_dir).resolve()
    cfg_file = root / "config.resolved.yaml"
    if not cfg_file.is_file():
        raise ConfigError(
            f"{root} is not a finished run directory (no config.resolved.yaml)",
            "run `edgecompress run CONFIG --out DIR` (or `edgecompress demo`) first",
        )
    return LoadedRun(root=root, config=load_config(cfg_file), state=read_state(root), trusted_modules=trusted_modules)
