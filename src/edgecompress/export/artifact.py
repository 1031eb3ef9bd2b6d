"""What export produces: the :class:`Artifact` record, running one through its runtime, and atomic folder swaps."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgecompress.errors import DeviceError, ExportError
from edgecompress.export.recovery_types import Int8Recovery


class Artifact(BaseModel):
    """One requested ``(format, precision)``: an exported model, or a recorded failure.

    A failed artifact (``ok`` false) has ``failure`` set to one line ``"problem — fix: ..."`` with the measured
    numbers, keeps what was measured (parity, ``val_metrics``), and has no files: ``files == []`` and
    ``model_file is None`` (nothing half-made or rejected is left in the export folder).

    Attributes:
        name: ``"<format>-<precision>"``, also the artifact's folder name.
        files: every file written, inside ``<out_dir>/<name>/``.
        model_file: the file a runtime loads (None for a failure).
        runtime: the ``devices`` runtime that loads it.
        parity_max_abs_diff: max |artifact − PyTorch| on the parity batch.
        parity_rel_diff: that difference divided by the standard deviation of PyTorch's logits on the batch.
        parity_top1_agreement: fraction of the parity batch whose top-1 class matches PyTorch.
        val_metrics: ``{"accuracy", "ece", "nll"}`` (fractions) of the artifact on val through its runtime (or its
            parity target, for a TensorRT engine not built here), when val was given.
        fp32_val_accuracy: the PyTorch model's accuracy on the same val split (the accuracy gate's reference).
        test_metrics, note, refit_of, refit_temperature, reliability_png: filled later by the pipeline.
        int8_recovery: the accuracy-aware INT8 step's record when plain INT8 missed the gate
            (:mod:`edgecompress.export.int8_recovery`): ranking, every step, float layers, speed.
    """

    model_config = ConfigDict(protected_namespaces=())

    name: str
    format: str
    precision: str
    files: list[Path]
    model_file: Path | None
    runtime: str
    size_bytes: int = 0
    parity_max_abs_diff: float | None = None
    parity_rel_diff: float | None = None
    parity_top1_agreement: float | None = None
    export_seconds: float = 0.0
    info: dict[str, Any] = {}
    ok: bool = True
    failure: str | None = None
    val_metrics: dict[str, float] | None = None
    fp32_val_accuracy: float | None = None
    test_metrics: dict[str, float] | None = None
    val_ece_shift: float | None = None
    note: str | None = None
    refit_of: str | None = None
    refit_temperature: float | None = None
    reliability_png: Path | None = None
    int8_recovery: Int8Recovery | None = None


def run_artifact(
    runtime: str, model_file: Path, x: np.ndarray, precision: str | None = None, max_batch: int | None = None
) -> tuple[np.ndarray, dict]:
    """Run ``x`` through ``model_file`` with the named ``devices`` runtime; the one place export touches runtimes.

    ``precision`` is the artifact's stated precision: the runtime is asked to execute at it (OpenVINO would otherwise
    pick bf16 for an FP32 IR on CPUs that have it). ``max_batch`` splits ``x`` into chunks the artifact accepts
    (ExecuTorch programs are exported with a bounded batch).

    Raises:
        MissingExtraError: the runtime is not installed here (names the extra).
        ExportError: the runtime could not load or run the file.
    """
    from edgecompress.devices.agent import runtime_options
    from edgecompress.devices.host_runtimes import get_runtime

    step = max_batch or max(1, len(x))
    try:
        rt = get_runtime(runtime, **runtime_options(runtime, precision))
        rt.load(Path(model_file), threads=1)
        out = [np.asarray(rt.run(np.ascontiguousarray(x[i : i + step])), np.float32) for i in range(0, len(x), step)]
        return np.concatenate(out), rt.info()
    except DeviceError as exc:  # a missing runtime (MissingExtraError) propagates as it is: it names the extra
        raise ExportError(f"running {Path(model_file).name} in {runtime} failed: {exc.problem}", exc.fix) from exc


def swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older ``final`` without a moment of neither."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
