"""The stage type and what stages share: the config, the run directory, the data, the models, timings, warnings.

A :class:`Stage` is a name, a key (what its output depends on), a compute step and a load step, with a typed result.
:meth:`Context.cached` is the one place that turns a stage into a folder: key → ``stages/<name>-<hash>/`` → reuse
(``_done.json`` present) or compute → timing → ``_done.json``. The pipeline walks an ordered list of stages
(:mod:`edgecompress.pipeline.stages`); ``--until`` and ``--from`` are positions in that list.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from pydantic import ValidationError

from edgecompress.config import PipelineConfig
from edgecompress.errors import ConfigError
from edgecompress.pipeline.results import StageRecord, StageResult
from edgecompress.pipeline.rundir import RunDir, StageDir

if TYPE_CHECKING:
    import torch.nn as nn

    from edgecompress.data import Splits

log = logging.getLogger(__name__)

R = TypeVar("R", bound=StageResult)


@dataclass(frozen=True)
class Stage(Generic[R]):
    """One step of the pipeline.

    Attributes:
        name: the stage's name (its folder prefix, its ``--until`` / ``--from`` name).
        result: the pydantic type of its result (``_done.json``).
        key: what the output depends on — the stage's config section and the keys of the stages it reads; hashed into
            the folder name, so a changed config never meets a stale folder.
        compute: does the work in the stage's folder and returns the result (models go into ``ctx.models``).
        load: restores the in-memory objects of a finished stage (e.g. rebuilds a model from its state file).
        applies: whether the stage has work in this run (e.g. the TA search only with ``assistants: search``).
        cached: False for the last steps (report, bundles) that are rewritten each time they are reached.
    """

    name: str
    result: type[R]
    key: Callable[[Context], dict[str, Any]]
    compute: Callable[[Context, StageDir], R]
    load: Callable[[Context, StageDir, R], None] | None = None
    applies: Callable[[Context], bool] = lambda ctx: True
    cached: bool = True


@dataclass
class Context:
    """State passed from stage to stage within one run."""

    cfg: PipelineConfig
    run: RunDir
    progress: bool = True
    trusted_modules: Collection[str] = ()
    recompute: Collection[str] = ()  # stage names whose finished folders are ignored (``--from``)
    splits: Splits | None = None
    models: dict[str, nn.Module] = field(default_factory=dict)
    results: dict[str, StageResult] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    stages: list[StageRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    eval_data: tuple[np.ndarray, np.ndarray] | None = None  # images + labels devices evaluate, when splits are absent
    report: Any = None  # the Report, once the report stage has built it (the bundles stage reads its entries)
    teacher_logits: Any = None  # distill.evaluate.SplitLogits: the teacher's raw logits per split, computed once

    def cached(self, stage: Stage[R]) -> R:
        """Run ``stage`` in its content-addressed folder, or reuse the finished folder; record time and result."""
        sd = self.run.stage(stage.name, stage.key(self))
        result = self._reuse(stage, sd) if sd.done and stage.name not in self.recompute else None
        reused = result is not None
        start = time.perf_counter()
        log.info("stage %s: %s", stage.name, "cached" if reused else "running")
        if result is None:
            if sd.done or stage.name in self.recompute:  # a stale or forced folder starts empty
                shutil.rmtree(sd.path)
                sd.path.mkdir(parents=True)
            result = stage.compute(self, sd)  # a folder without _done.json keeps its checkpoints: the stage resumes
            sd.finish(result.model_dump(mode="json"))
            log.info("stage %s: done in %.1f s", stage.name, time.perf_counter() - start)
        elif stage.load is not None:
            stage.load(self, sd, result)
        self._record(stage.name, start, result, cached=reused, sd=sd)
        return result

    def _reuse(self, stage: Stage[R], sd: StageDir) -> R | None:
        """The finished folder's result, or None when it does not parse as this stage's type (then it is redone)."""
        try:
            from edgecompress.pipeline.received import contain_paths

            data = sd.result()
            check_contained(data, self.run.root, str(sd.path / "_done.json"))
            return contain_paths(stage.result.model_validate(data), self.run.root, str(sd.path / "_done.json"))
        except ConfigError as exc:  # a record pointing outside the run: never followed
            self.warn(f"stage {stage.name}: {exc.problem}; recomputing it")
            return None
        except (ValidationError, ValueError) as exc:
            self.warn(f"stage {stage.name}: its recorded result in {sd.path} is unreadable ({exc.__class__.__name__}); "
                      "recomputing it")  # fmt: skip
            return None

    def uncached(self, stage: Stage[R]) -> R:
        """Run a stage that writes its outputs each time it is reached (report, bundles); no folder, no marker."""
        start = time.perf_counter()
        result = stage.compute(self, None)  # type: ignore[arg-type]
        self._record(stage.name, start, result, cached=False, sd=None)
        return result

    def _record(self, name: str, start: float, result: StageResult, *, cached: bool, sd: StageDir | None) -> None:
        seconds = time.perf_counter() - start
        self.results[name] = result
        if sd is not None:
            self.keys[name] = sd.key
        self.stages.append(
            StageRecord(
                name=name,
                seconds=round(seconds, 3),
                cached=cached,
                output_dir=str(sd.path) if sd is not None else None,
                key=sd.key if sd is not None else None,
            )
        )

    def result(self, name: str, kind: type[R]) -> R:
        """The typed result of an earlier stage of this run."""
        res = self.results.get(name)
        if not isinstance(res, kind):
            raise ConfigError(f"stage {name!r} has not run in this run", "run the stages before it first")
        return res

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)


def check_contained(value: object, root: Path, what: str) -> None:
    """Refuse any absolute path in ``value`` (JSON-like) that resolves outside ``root``, links included
    (:func:`edgecompress._contain.contained`); the typed path fields are resolved by
    :func:`edgecompress.pipeline.received.contain_paths`."""
    from edgecompress._contain import contained
    from edgecompress.pipeline.received import FIX

    def walk(v: object) -> None:
        if isinstance(v, str) and v.startswith("/") and "\n" not in v:
            contained(root, v, what=what, fix=FIX)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk(value)


def predict_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` on ``x`` (float32 NCHW) as a numpy array (``distill.evaluate.predict_logits``)."""
    from edgecompress.distill.evaluate import predict_logits as logits_tensor

    return logits_tensor(model, x, batch_size=batch_size).numpy()


def metrics_of(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """All calibration metrics of logits against labels (fractions)."""
    from edgecompress.calibration import compute_metrics

    return {k: float(v) for k, v in compute_metrics(logits, y).items()}
