"""Orchestration: walk the ordered list of stages, each cached by content, then write the report and bundles.

``--until NAME`` stops after the stage of that name and writes nothing past it; ``--from NAME`` recomputes that
stage and every later one even where a finished folder exists. Both are positions in :data:`STAGES`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Sequence
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from edgecompress._io import atomic_write_json, atomic_write_text, sha256_json
from edgecompress.config import PipelineConfig, dump_config, load_config
from edgecompress.errors import ConfigError, DeviceError
from edgecompress.pipeline import budget_stage as budget
from edgecompress.pipeline import decide_stage
from edgecompress.pipeline import deploy_stages as deploy
from edgecompress.pipeline import distill_stages as chain
from edgecompress.pipeline import train_stages as train
from edgecompress.pipeline.context import Context, Stage, check_contained
from edgecompress.pipeline.finishing import BUNDLES, FinishResult, eval_set, vet_artifacts
from edgecompress.pipeline.received import check_stage_folder, contain_paths
from edgecompress.pipeline.results import (
    BenchmarkResult,
    BudgetResult,
    CalibrateResult,
    DataResult,
    DecideResult,
    DistillResult,
    ExportResult,
    RunState,
    SearchResult,
    TeacherResult,
)
from edgecompress.pipeline.rundir import RunDir, reroot

log = logging.getLogger(__name__)

PRESETS = ("digits", "fashion_mnist")
STATE = "run.json"
MAX_STATE_BYTES = 64 << 20  # a run state is a few hundred KiB

STAGES: tuple[Stage, ...] = (
    train.DATA,
    train.TEACHER,
    budget.BUDGET,
    chain.SEARCH,
    decide_stage.DECIDE,
    chain.DISTILL,
    train.CALIBRATE,
    deploy.EXPORT,
    deploy.BENCHMARK,
    budget.REPORT,  # the plain report, plus the budget section when the run has a target
    BUNDLES,
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def preset_path(name: str) -> Path:
    """Path of a shipped example config (the files under ``examples/`` in the repository)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", f"use one of {', '.join(PRESETS)}")
    return Path(str(resources.files("edgecompress.pipeline").joinpath("presets", f"{name}.yaml")))


def stage_index(name: str | None, option: str) -> int | None:
    """Position of stage ``name`` in :data:`STAGES`; a name that is not a stage is a one-line error."""
    if name is None:
        return None
    if name not in STAGE_NAMES:
        raise ConfigError(f"{option} {name!r} is not a stage", f"use one of: {', '.join(STAGE_NAMES)}")
    return STAGE_NAMES.index(name)


def check_components(cfg: PipelineConfig) -> None:
    """Import the config's plugin modules, then check every component it names against its registry (before any
    work: an unknown loss is one line listing the registered ones)."""
    from edgecompress._registry import LOSSES, load_plugins

    load_plugins(cfg.plugins)
    if cfg.distill.loss.kind != "auto":
        LOSSES.get(cfg.distill.loss.kind)


def run_pipeline(
    cfg: PipelineConfig,
    out: str | Path,
    *,
    until: str | None = None,
    from_: str | None = None,
    progress: bool = True,
    trust_factories: Sequence[str] = (),
) -> dict[str, Path]:
    """Run the stages of ``cfg`` into the run directory ``out``; returns the paths of the report and bundle files.

    Finished stages are reused (their folders are addressed by a hash of their config and inputs); a stage that was
    interrupted resumes from its own checkpoints.

    Args:
        cfg: the validated config.
        out: the run directory.
        until: stop after this stage (a name in :data:`STAGE_NAMES`); nothing past it is written.
        from_: recompute this stage and every later one, even where a finished folder exists.
        progress: show progress bars and per-epoch lines.
        trust_factories: modules whose model factories may be imported, besides the config's ``trust_factories``.
    """
    last = stage_index(until, "--until")
    first = stage_index(from_, "--from")
    check_components(cfg)
    target = [cfg.target.device] if cfg.target is not None else []
    check_devices([*cfg.benchmark.devices, *target], cfg.benchmark.profiles_dir)  # fail before any work
    run = RunDir(out)
    run.prepare()
    import torch

    torch.manual_seed(cfg.seed)
    atomic_write_text(run.root / "config.resolved.yaml", dump_config(cfg))
    ctx = Context(
        cfg=cfg,
        run=run,
        progress=progress,
        trusted_modules=(*getattr(cfg, "trust_factories", ()), *trust_factories),
        recompute=STAGE_NAMES[first:] if first is not None else (),
    )
    paths: dict[str, Path] = {}
    i = 0
    while i < len(STAGES) and (last is None or i <= last):
        stage = STAGES[i]
        i += 1
        if not stage.applies(ctx):
            continue
        if stage.cached:
            ctx.cached(stage)
        else:
            res = ctx.uncached(stage)
            if isinstance(res, FinishResult):
                paths.update({k: Path(v) for k, v in res.paths.items()})
        if stage.name == "benchmark":
            if budget.verify(ctx):  # the final artifact missed the budget: redo distill → benchmark one size down
                i = STAGE_NAMES.index("distill")
                continue
            atomic_write_json(run.root / STATE, run_state(ctx).model_dump(mode="json"))
    return paths


def run_state(ctx: Context) -> RunState:
    """Everything the report is built from, typed (``run.json``)."""
    return RunState(
        config_hash=sha256_json(ctx.cfg.model_dump(mode="json")),
        stages=ctx.stages,
        warnings=ctx.warnings,
        data=ctx.result("data", DataResult),
        teacher=ctx.result("teacher", TeacherResult),
        search=ctx.results.get("search") if isinstance(ctx.results.get("search"), SearchResult) else None,
        distill=ctx.result("distill", DistillResult),
        calibrate=ctx.result("calibrate", CalibrateResult),
        export=ctx.result("export", ExportResult),
        benchmark=ctx.result("benchmark", BenchmarkResult),
        decide=ctx.results.get("decide") if isinstance(ctx.results.get("decide"), DecideResult) else None,
        budget=ctx.results.get("budget") if isinstance(ctx.results.get("budget"), BudgetResult) else None,
    )


def check_devices(devices: list[str], profiles_dir: Path | None) -> None:
    """Load every device profile and build its transport (no connection): a bad profile fails in one line now."""
    from edgecompress.devices.profiles import load_profile
    from edgecompress.devices.transports import make_transport

    for name in devices:
        make_transport(load_profile(name, [profiles_dir]))


def check_own_profiles(devices: list[str], profiles_dir: Path | None, root: Path) -> None:
    """Refuse device profiles (names an executable: ``python``) taken from inside the received run ``root``."""
    from edgecompress._contain import is_inside

    for given in [*(d for d in devices if d.endswith((".yaml", ".yml")) or Path(d).is_file()), profiles_dir]:
        if given is not None and is_inside(Path(given).expanduser().resolve(), root):
            raise ConfigError(
                f"the device profile {given} is inside the run directory {root}: a received run is data and never "
                "names the programs a benchmark runs",
                "give device profiles of your own (--device NAME or FILE outside the run, --profiles-dir DIR)",
            )


def read_state(root: Path) -> RunState:
    """``run.json`` of the run directory ``root``, validated; a run that was moved or copied is re-rooted.

    A run directory received from elsewhere is data: a file that does not parse, or that records a path outside
    the run directory, is refused in one line.
    """
    state_file = root / STATE
    if not state_file.is_file():
        raise ConfigError(
            f"{root} is not a finished run directory (no {STATE})", "run `edgecompress run CONFIG --out DIR` first"
        )
    if state_file.stat().st_size > MAX_STATE_BYTES:
        raise ConfigError(
            f"{state_file} is {state_file.stat().st_size} bytes, more than a run state holds (limit {MAX_STATE_BYTES})",
            "rerun `edgecompress run CONFIG --out DIR` to rewrite it",
        )
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
        stages = data.get("stages") if isinstance(data, dict) else None
        old = Path(stages[0]["output_dir"]).parent.parent if stages and stages[0].get("output_dir") else root
        if old != root:
            log.info("run directory moved from %s to %s: re-rooting its recorded paths", old, root)
        state = RunState.model_validate(reroot(data, old, root))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ValidationError, RecursionError) as exc:
        what = exc.errors()[0] if isinstance(exc, ValidationError) else "nested too deeply" if isinstance(
            exc, RecursionError) else exc  # fmt: skip
        raise ConfigError(
            f"{state_file} is not a valid run state ({str(what)[:160]})",
            "rerun `edgecompress run CONFIG --out DIR` to rewrite it",
        ) from None
    check_contained(state.model_dump(mode="json"), root, str(state_file))
    state = contain_paths(state, root, str(state_file))
    for record in state.stages:
        check_stage_folder(record, root, str(state_file))
    return state


def bench_run(
    run_dir: str | Path,
    *,
    devices: list[str],
    trust_factories: Collection[str] = (),
    profiles_dir: Path | None = None,
) -> dict[str, Path]:
    """Benchmark a finished run's artifacts on ``devices`` again and rewrite its report and bundles.

    The run directory is data: only its recorded results are read (no stage is recomputed), a model factory it names
    is imported only from a module given in ``trust_factories`` (the CLI's ``--trust-factory``), and device profiles
    (which name the interpreter a device runs) come only from ``devices`` and ``profiles_dir`` — the caller's own —,
    never from the run's config or folder.
    """
    run = RunDir(run_dir)
    state = read_state(run.root)
    check_own_profiles(devices, profiles_dir, run.root)
    run.prepare()  # lock the folder: a second process must not write the same report
    cfg = load_config(run.root / "config.resolved.yaml")
    check_devices(devices, profiles_dir)
    ctx = Context(
        cfg=cfg.model_copy(
            update={"benchmark": cfg.benchmark.model_copy(update={"devices": devices, "profiles_dir": profiles_dir})}
        ),
        run=run,
        progress=False,
        trusted_modules=tuple(trust_factories),
        recompute=("benchmark",),
    )
    ctx.stages = list(state.stages)
    ctx.warnings = list(state.warnings)
    for name in ("data", "teacher", "budget", "search", "decide", "distill", "calibrate", "export"):
        res = getattr(state, name)
        if res is not None:
            ctx.results[name] = res
            key = Path(state.stage_dir(name) or "").name.rpartition("-")[2]
            ctx.keys[name] = key
    vet_artifacts(ctx)
    ctx.eval_data = eval_set(ctx)  # the data config may name files elsewhere: only what the run holds is read
    bench = ctx.cached(deploy.BENCHMARK)
    atomic_write_json(run.root / STATE, run_state(ctx).model_dump(mode="json"))
    paths: dict[str, Path] = {}
    for stage in (budget.REPORT, BUNDLES):
        res = ctx.uncached(stage)
        paths.update({k: Path(v) for k, v in res.paths.items()})
    if bench.rows and not any(row.ok for row in bench.rows):  # the report keeps the failed rows and their reasons
        first = next(row for row in bench.rows if not row.ok)
        raise DeviceError(
            f"no benchmark succeeded on {', '.join(devices)}; first failure: {first.artifact} on "
            f"{first.device}: {first.error}",
            f"see the device table in {paths.get('md', run.root / 'report.md')}; check the device profile",
        )
    return paths
