"""The export driver: every requested ``(format, precision)`` exported, checked and judged on its own.

Per artifact (ultralytics ``try_export`` without the god class): export into a temporary folder, check the files are
non-empty, run the parity diagnostic through the artifact's own runtime, evaluate it on val through that runtime,
judge it (:mod:`edgecompress.export.gate`), then rename the folder into place. A failure of one format — an exporter
that raises, a missing runtime, a broken graph, an accuracy drop — is recorded on its :class:`Artifact` with a
one-line reason and the measured numbers; the other formats go on. Nothing half-made or rejected is left behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress._io import make_temp_dir, sha256_json
from edgecompress.errors import EdgeCompressError, ExportError
from edgecompress.export import int8_recovery
from edgecompress.export import onnx_export as ox
from edgecompress.export.artifact import Artifact, run_artifact, swap_into_place
from edgecompress.export.config import ExportConfig
from edgecompress.export.contract import ExportContract, effective_precision, stringify_metadata, tool_versions
from edgecompress.export.formats import FORMATS, parse_formats
from edgecompress.export.gate import judge, parity_diagnostic
from edgecompress.export.int8_choice import metrics_of
from edgecompress.export.session import ExportSession

log = logging.getLogger(__name__)


def export_all(
    model: Any,
    *,
    contract: ExportContract,
    formats: list[str] | list[tuple[str, str]] | str | None = None,
    calib_x: np.ndarray | None,
    out_dir: Path,
    metadata: dict[str, Any] | None = None,
    cfg: ExportConfig | None = None,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    parity_x: np.ndarray | None = None,
) -> list[Artifact]:
    """Export ``model`` to every requested ``(format, precision)``; check and judge each through its own runtime.

    Args:
        model: PyTorch classifier returning logits (temperature already folded in, if any).
        contract: names, shapes, parity diagnostics; ``contract.metadata`` is embedded in every artifact.
        formats: ``"format:precision"`` strings, pairs, or ``"all"``; default ``cfg.formats``.
        calib_x: calibration images (float32 NCHW); the first ``cfg.calib_samples`` are used.
        out_dir: one subfolder per artifact that ships (``onnx-int8/`` ...), each written atomically.
        metadata: extra metadata for every artifact (labels, temperature, preprocessing, config hash ...).
        cfg: export options; default ``ExportConfig()``.
        val_x, val_y: validation split: chooses INT8 calibration, and every artifact's accuracy on it is gated at
            ``cfg.max_accuracy_drop`` below the PyTorch model's (see :mod:`edgecompress.export.gate`).
        parity_x: fixed parity batch; default the first 32 calibration images (or a seeded random batch).

    Returns:
        One :class:`Artifact` per requested pair, in order, failed ones included (``ok`` false, ``failure`` set).

    Raises:
        ConfigError: a format string is unknown.
        ExportError: the PyTorch model itself cannot run on the parity or val inputs (nothing can be judged).
        CalibrationError: ``val_y`` does not fit the model's outputs (labels out of range, wrong length).
    """
    cfg = cfg or ExportConfig()
    pairs = _pairs(formats, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calib = None if calib_x is None else np.ascontiguousarray(calib_x[: cfg.calib_samples], dtype=np.float32)
    if parity_x is None:
        parity_x = calib[:32] if calib is not None and len(calib) else contract.example_input(16, seed=7)
    parity_x = np.ascontiguousarray(parity_x, dtype=np.float32)
    val: tuple[np.ndarray, np.ndarray] | None = None
    if val_x is not None and val_y is not None:
        val = (np.ascontiguousarray(val_x, dtype=np.float32), np.asarray(val_y))
        val_x, val_y = val
    meta = {**contract.metadata, **(metadata or {})}
    meta.setdefault("edgecompress.export_config_hash", sha256_json(cfg.model_dump(mode="json")))
    meta.setdefault("edgecompress.tool_versions", tool_versions())
    artifacts: list[Artifact] = []
    with tempfile.TemporaryDirectory(prefix=".export-work-", dir=out_dir) as work:
        s = ExportSession(model, contract, cfg, calib, val_x, val_y, stringify_metadata(meta), Path(work))
        try:
            ref = s.torch_logits(parity_x)
            fp32_val = s.torch_logits(val[0]) if val is not None else None
        except Exception as exc:
            problem = f"the PyTorch model failed on the export inputs: {_first_line(exc)}"
            raise ExportError(problem, "check the model's forward on these inputs") from exc
        fp32_acc = None
        if val is not None and fp32_val is not None:
            fp32_acc = metrics_of(fp32_val, val[1], probabilities=contract.output_probabilities)["accuracy"]
        for fmt, precision in pairs:
            art = _export_one(s, fmt, precision, out_dir, parity_x, ref, fp32_acc)
            if int8_recovery.applies(s, art):  # accuracy-aware INT8: mixed precision, then QAT
                art = int8_recovery.recover(
                    s, art, partial(_export_one, s, fmt, precision, out_dir, parity_x, ref, fp32_acc)
                )
            if not art.ok:
                log.error("%s", art.failure)
            artifacts.append(art)
    return artifacts


def _pairs(formats: list[str] | list[tuple[str, str]] | str | None, cfg: ExportConfig) -> list[tuple[str, str]]:
    if formats is None:
        return cfg.format_pairs()
    if isinstance(formats, str):
        return parse_formats(formats)
    return parse_formats([item if isinstance(item, str) else ":".join(item) for item in formats])


def _first_line(exc: BaseException) -> str:
    """An EdgeCompressError's whole "problem — fix" line; any other exception's type and first line."""
    return str(exc) if isinstance(exc, EdgeCompressError) else ox._first_line(exc)


def _export_one(
    s: ExportSession,
    fmt: str,
    precision: str,
    out_dir: Path,
    parity_x: np.ndarray,
    ref: np.ndarray,
    fp32_acc: float | None,
    exporter: Callable[[ExportSession, str, Path], tuple[list[Path], Path, dict[str, Any]]] | None = None,
) -> Artifact:
    """Export, check and judge one pair; never raises for a problem of this format (only for KeyboardInterrupt).

    ``exporter`` replaces the format's own (the accuracy-aware INT8 step ships its recovered model through here).
    """
    spec = FORMATS[fmt]
    name = f"{fmt}-{precision}"
    record: dict[str, Any] = {"name": name, "format": fmt, "precision": precision, "runtime": spec.runtime}
    record["fp32_val_accuracy"] = fp32_acc
    final = out_dir / name
    tmp = make_temp_dir(out_dir, f".{name}-")
    step, start = "export", time.perf_counter()
    try:
        files, model_file, info = (exporter or spec.export_fn())(s, precision, tmp)
        info = dict(info)  # exporters may hand out a shared (cached) record
        record.update(export_seconds=round(time.perf_counter() - start, 3), info=info)
        step = "non-empty check"
        empty = [f.name for f in files if not f.is_file() or f.stat().st_size == 0]
        if empty:
            raise ExportError(f"{name} produced empty or missing files {empty}", "see the exporter log")
        step = "parity"
        runtime, target, judged = spec.parity_of(precision, model_file)
        y, rt_info = run_artifact(runtime, target, parity_x, precision, s.contract.max_batch)
        judged = effective_precision(judged, rt_info.get("precision"))
        parity = parity_diagnostic(y, ref, s.contract.tolerance(judged), judged)
        record.update(
            parity_max_abs_diff=parity.max_abs_diff,
            parity_rel_diff=parity.rel_diff,
            parity_top1_agreement=parity.top1_agreement,
        )
        info.update(parity_runtime=runtime, parity_precision=judged, runtime_info=rt_info)
        info["parity"] = {"within_diagnostic": parity.within, "reason": parity.reason}
        val_acc = None
        if fp32_acc is not None:
            step = "val evaluation"
            assert s.val_x is not None and s.val_y is not None  # fp32_acc was measured on them
            val_out = run_artifact(runtime, target, s.val_x, precision, s.contract.max_batch)[0]
            if not np.all(np.isfinite(val_out)):
                raise ExportError(f"outputs NaN or Inf on val through {runtime}", "inspect the exported graph")
            record["val_metrics"] = metrics_of(val_out, s.val_y, probabilities=s.contract.output_probabilities)
            val_acc = record["val_metrics"]["accuracy"]
            info["val_runtime"] = runtime
        info.setdefault("tool_versions", tool_versions())
        failure = judge(name, precision, parity, val_acc, fp32_acc, s.cfg.max_accuracy_drop)
        if failure is not None:
            return _failed(record, failure, tmp, final)
        swap_into_place(tmp, final)
    except (KeyboardInterrupt, SystemExit):
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # one format's failure, whatever its type, is recorded and the others go on
        reason = f"{fmt}:{precision} failed at step '{step}': {_first_line(exc)}"
        if not isinstance(exc, EdgeCompressError):
            reason += " — fix: see the log"
        log.debug("%s", reason, exc_info=True)
        return _failed(record, reason, tmp, final)
    files = [final / f.relative_to(tmp) for f in files]
    art = Artifact(
        **record,
        files=files,
        model_file=final / model_file.relative_to(tmp),
        size_bytes=sum(f.stat().st_size for f in files),
    )
    log.info(
        "exported %s in %.1fs (%d bytes, parity %.3g = %.3g std, top-1 %.3f%s)",
        name,
        art.export_seconds,
        art.size_bytes,
        parity.max_abs_diff,
        parity.rel_diff,
        parity.top1_agreement,
        "" if art.val_metrics is None else f", val accuracy {art.val_metrics['accuracy']:.4f} vs FP32 {fp32_acc:.4f}",
    )
    return art


def _failed(record: dict[str, Any], failure: str, tmp: Path, final: Path) -> Artifact:
    """A failed artifact: its temporary folder and any older folder of the same name are removed."""
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)  # an earlier export's folder must not pass for this one
    return Artifact(**record, files=[], model_file=None, ok=False, failure=" ".join(failure.split()))
