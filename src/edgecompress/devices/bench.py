"""Benchmark artifacts on devices: fan out over devices concurrently, one run at a time per device, one row per
(device, artifact) with latency, throughput, accuracy and calibration measured on that device."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress._io import atomic_path
from edgecompress.devices.agent import runtime_options
from edgecompress.devices.config import BenchmarkConfig, DeviceProfile
from edgecompress.devices.profiles import load_profile
from edgecompress.devices.transports import AgentJob, make_transport, with_retries
from edgecompress.errors import DeviceError, EdgeCompressError
from edgecompress.measurements import UNSTABLE_CV, AgentMetrics, AgentResult, BenchRow

log = logging.getLogger(__name__)


def _get(artifact: Any, key: str, default: Any = None) -> Any:
    if isinstance(artifact, dict):
        return artifact.get(key, default)
    return getattr(artifact, key, default)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "x"


def _resolve_devices(devices: Iterable[str | Path | DeviceProfile], cfg: BenchmarkConfig) -> list[DeviceProfile]:
    profiles = [d if isinstance(d, DeviceProfile) else load_profile(d, [cfg.profiles_dir]) for d in devices]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise DeviceError(f"device names repeat: {names}", "give each device profile a distinct name")
    return profiles


def write_eval_file(eval_x: np.ndarray, eval_y: np.ndarray, path: Path, *, limit: int) -> Path:
    """Write the evaluation subset shipped to devices (first ``limit`` samples) as ``.npz`` with ``x`` and ``y``."""
    x = np.ascontiguousarray(eval_x[:limit], dtype=np.float32)
    y = np.ascontiguousarray(eval_y[:limit], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x=x, y=y)
    return path


def _agent_args(artifact: Any, profile: DeviceProfile, cfg: BenchmarkConfig) -> tuple[tuple[str, ...], int | None]:
    threads = profile.threads or cfg.threads
    args = ["--batch-sizes", ",".join(str(b) for b in cfg.batch_sizes), "--warmup", str(cfg.warmup_iters)]
    args += ["--min-time", f"{cfg.min_time_s:g}", "--min-iters", str(cfg.min_iters)]
    args += ["--max-iters", str(cfg.max_iters), "--repeats", str(cfg.repeats)]
    if threads:
        args += ["--threads", str(threads)]
    if cfg.power if cfg.power is not None else profile.power:
        args.append("--power")
    options = runtime_options(_get(artifact, "runtime"), _get(artifact, "precision"))
    if "precision" in options:
        args += ["--precision", options["precision"]]
    return tuple(args), threads


def _host_metrics(artifact: Any, eval_x: np.ndarray, eval_y: np.ndarray) -> dict[str, Any] | None:
    """Accuracy/calibration through the host's runtime, for devices that cannot run the agent (phones)."""
    from edgecompress.devices.agent import evaluate
    from edgecompress.devices.host_runtimes import get_runtime

    try:
        rt = get_runtime(_get(artifact, "runtime"))
        rt.load(Path(_get(artifact, "model_file")))
        return evaluate(rt, eval_x, eval_y)[0]
    except EdgeCompressError as exc:
        log.warning("host evaluation of %s failed: %s", _get(artifact, "name"), exc)
        return None


def _full_metrics(logits_file: str, eval_y: np.ndarray, num_classes: int | None) -> dict[str, float]:
    """All calibration metrics recomputed on the host from the device's logits.

    The file came from a device: it is checked (a readable float array ``[N, K]`` with ``N`` at most the number of
    labels shipped and ``K`` the model's classes) before use; a bad one raises ``DeviceError`` with the reason.
    """
    from edgecompress.calibration.metrics import compute_metrics

    try:
        logits = np.load(logits_file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DeviceError(f"the device's logits file is unreadable ({exc})", "rerun the benchmark") from None
    if logits.ndim != 2 or not 0 < len(logits) <= len(eval_y) or (num_classes and logits.shape[1] != num_classes):
        raise DeviceError(
            f"the device's logits have shape {tuple(logits.shape)}, expected [<= {len(eval_y)}, {num_classes or 'K'}]",
            "check the artifact and the agent version on the device",
        )
    if not np.issubdtype(logits.dtype, np.floating) or not np.isfinite(logits).all():
        raise DeviceError("the device's logits are not finite floats", "check the artifact on the device")
    return {k: float(v) for k, v in compute_metrics(logits, eval_y[: len(logits)]).items()}


def _latency_cv(bench: dict[int, dict[str, Any]]) -> dict[int, float]:
    """Run-to-run spread of p50 per batch size: std / mean of the repeats' p50 (needs at least two repeats)."""
    out = {}
    for batch, m in bench.items():
        p50s = [float(v) for v in (m.get("repeats_p50") or []) if isinstance(v, int | float)]
        if len(p50s) >= 2 and np.mean(p50s) > 0:
            out[batch] = float(np.std(p50s) / np.mean(p50s))
    return out


def _row(
    artifact: Any, profile: DeviceProfile, outcome: Any, eval_y: np.ndarray | None, num_classes: int | None = None
) -> BenchRow:
    """The benchmark row of one run; a result that fails validation makes a failed row that says why."""
    res, problem = AgentResult.parse(outcome.result)
    if res is None:
        return _error_row(artifact, profile, str(problem), attempts=outcome.attempts, failures=outcome.failures)
    metrics = res.metrics or AgentMetrics()
    full = None
    if eval_y is not None and res.logits_file and Path(res.logits_file).is_file():
        try:
            full = _full_metrics(res.logits_file, eval_y, num_classes)
        except DeviceError as exc:
            return _error_row(artifact, profile, str(exc), attempts=outcome.attempts, failures=outcome.failures)
    cv = _latency_cv(res.bench)
    return BenchRow(
        **_identity(artifact, profile),
        inference_precision=res.info.get("precision"),
        latency_ms=res.latency_ms,
        throughput={b: v for b, v in res.throughput.items() if v is not None},
        energy_mj=res.energy_mj_per_inference or {},
        latency_cv=cv,
        unstable=any(v > UNSTABLE_CV for v in cv.values()),
        accuracy=metrics.accuracy,
        ece=metrics.ece,
        nll=metrics.nll,
        brier=metrics.brier,
        eval_samples=metrics.n,
        calibration_measured_on=res.calibration_measured_on or ("device" if res.metrics else None),
        metrics_full=full,
        peak_rss_mb=res.peak_rss_mb,
        env=res.env,
        info=res.info,
        ok=res.ok,
        error=res.error,
        errors=res.errors,
        stderr_tail=res.stderr_tail,
        attempts=outcome.attempts,
        failures=[str(f) for f in outcome.failures],
    )


def _run_device(
    profile: DeviceProfile,
    artifacts: Sequence[Any],
    *,
    eval_file: Path | None,
    eval_x: np.ndarray | None,
    eval_y: np.ndarray | None,
    cfg: BenchmarkConfig,
    workdir: Path,
    num_classes: int | None = None,
) -> list[BenchRow]:
    """All accepted artifacts on one device, sequentially (one run at a time per device)."""
    rows = []
    try:
        transport = make_transport(profile)
    except EdgeCompressError as exc:
        return [_error_row(a, profile, str(exc)) for a in artifacts]
    for artifact in artifacts:
        args, threads = _agent_args(artifact, profile, cfg)
        model_file = Path(_get(artifact, "model_file"))
        files = tuple(Path(f) for f in (_get(artifact, "files") or [model_file]))
        job = AgentJob(
            model_file=model_file,
            files=files if model_file in files else (model_file, *files),
            runtime=_get(artifact, "runtime"),
            eval_file=eval_file,
            agent_args=args,
            save_logits=cfg.save_logits and eval_file is not None,
            batch_sizes=tuple(cfg.batch_sizes),
            threads=threads,
            iterations=max(cfg.min_iters * cfg.repeats, 20),  # where a benchmark binary times it (no Python there)
        )
        local_dir = workdir / _safe(profile.name) / _safe(str(_get(artifact, "name")))
        what = f"{_get(artifact, 'name')} on {profile.name}"
        log.info("benchmarking %s", what)
        outcome = with_retries(
            functools.partial(transport.run, job, local_dir=local_dir, timeout_s=cfg.timeout_s),
            retries=cfg.retries,
            backoff_s=cfg.backoff_s,
            what=what,
        )
        result = outcome.result
        on_host = isinstance(result, dict) and result.get("calibration_measured_on") == "host runtime"
        if on_host and eval_x is not None and eval_y is not None:
            result["metrics"] = _host_metrics(artifact, eval_x, eval_y)
        rows.append(_row(artifact, profile, outcome, eval_y, num_classes))
    return rows


def _identity(artifact: Any, profile: DeviceProfile) -> dict[str, Any]:
    """Which device and which artifact a row is about."""
    return {
        "device": profile.name,
        "transport": profile.transport,
        "artifact": str(_get(artifact, "name")),
        "format": _get(artifact, "format"),
        "precision": _get(artifact, "precision"),
        "runtime": _get(artifact, "runtime"),
    }


def _error_row(
    artifact: Any, profile: DeviceProfile, error: str, *, attempts: int = 0, failures: Sequence[Any] = ()
) -> BenchRow:
    return BenchRow(
        **_identity(artifact, profile),
        ok=False,
        error=error,
        attempts=attempts,
        failures=[str(f) for f in failures],
    )


def benchmark_artifacts(
    artifacts: Sequence[Any],
    devices: Iterable[str | Path | DeviceProfile],
    *,
    eval_x: np.ndarray | None,
    eval_y: np.ndarray | None,
    cfg: BenchmarkConfig,
    workdir: Path,
    num_classes: int | None = None,
) -> list[BenchRow]:
    """Benchmark each artifact on each device that accepts it (see :meth:`DeviceProfile.accepts`).

    Devices run concurrently (a thread each); on a device, artifacts run one after another so runs never compete
    for the same CPU/GPU. A failed run is a row with ``ok: false``, ``error`` and the per-attempt ``failures``; it
    never stops the other rows.

    Args:
        artifacts: objects or dicts with ``name``, ``format``, ``precision``, ``model_file``, ``files``, ``runtime``.
        devices: profile names, profile YAML paths or :class:`DeviceProfile` objects.
        eval_x: evaluation images (float32 NCHW, normalized); the first ``cfg.eval_samples`` are shipped.
        eval_y: their labels (int64).
        cfg: the benchmark section.
        workdir: where results, logits and the shipped evaluation file are kept.
        num_classes: the model's classes, to check the logits devices send back (None: not checked).

    Returns:
        One :class:`BenchRow` per (device, accepted artifact), in device order then artifact order.
    """
    workdir = Path(workdir)
    profiles = _resolve_devices(devices, cfg)
    eval_file = None
    if eval_x is not None and eval_y is not None:
        eval_file = write_eval_file(eval_x, eval_y, workdir / "eval.npz", limit=cfg.eval_samples)
        eval_x, eval_y = eval_x[: cfg.eval_samples], eval_y[: cfg.eval_samples]
    plan: dict[str, list[Any]] = {}
    for profile in profiles:
        plan[profile.name] = [
            a
            for a in artifacts
            if profile.accepts(str(_get(a, "format")), str(_get(a, "precision")), _get(a, "runtime"))
        ]
        skipped = len(artifacts) - len(plan[profile.name])
        if skipped:
            log.info("device %s does not accept %d artifact(s); skipped", profile.name, skipped)
    if not profiles:
        return []
    with ThreadPoolExecutor(max_workers=len(profiles), thread_name_prefix="device") as pool:
        futures = [
            pool.submit(
                _run_device,
                p,
                plan[p.name],
                eval_file=eval_file,
                eval_x=eval_x,
                eval_y=eval_y,
                cfg=cfg,
                workdir=workdir,
                num_classes=num_classes,
            )
            for p in profiles
        ]
        return [row for f in futures for row in f.result()]
