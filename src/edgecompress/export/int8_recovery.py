"""Accuracy-aware INT8: an INT8 artifact that misses ``export.max_accuracy_drop`` is recovered, not just failed.

The steps, each judged on val through the artifact's own runtime against the same gate:

1. **Rank** the layers the plain INT8 graph quantizes by their local INT8 error on calibration images
   (:mod:`edgecompress.export.sensitivity`; one ranking per export call, shared by the runtimes).
2. **Mixed precision**: keep the k most sensitive layers float (each with the nodes that must stay float with it,
   :func:`~edgecompress.export.int8_layers.float_group`), k = 1, 2, 4, ... up to ``max_float_fraction`` of the
   layers, then the smallest passing k by bisection. ONNX Runtime: ``nodes_to_exclude``; OpenVINO: NNCF's ignored
   scope. The passing model's speed is measured against the FP32 model in the same runtime (paired rounds).
3. **QAT with distillation** (:mod:`edgecompress.export.qat`) when no k holds the gate, or the mixed model is below
   ``min_speedup`` x FP32: the FP32 model fine-tuned under simulated INT8, then quantized by the format's own
   exporter (MinMax ranges, which land on the ranges QAT learned).

What ships is the QAT artifact when it holds the gate, else the mixed one when it holds the gate and is faster than
FP32; else the artifact stays failed with every step in its failure. Either way the artifact carries an
:class:`~edgecompress.export.recovery_types.Int8Recovery` record (ranking, steps, float layers, speed). Formats:
``onnx`` (ONNX Runtime) and ``openvino``; the others keep the plain gate.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecompress.errors import EdgeCompressError
from edgecompress.export.artifact import Artifact, run_artifact
from edgecompress.export.int8_choice import metrics_of
from edgecompress.export.recovery_types import Int8Recovery, LayerSensitivity, RecoveryStep
from edgecompress.export.session import ExportSession

log = logging.getLogger(__name__)

Exported = tuple[list[Path], Path, dict[str, Any]]
ExportOne = Callable[[Callable[[ExportSession, str, Path], Exported]], Artifact]
RUNTIMES = {"onnx": "onnxruntime", "openvino": "openvino"}
SPEED_ROUNDS = 5


def applies(s: ExportSession, art: Artifact) -> bool:
    """Whether ``art`` is an INT8 artifact of a recoverable format that failed the accuracy gate on val."""
    cfg = s.cfg.int8_recovery
    if art.ok or not cfg.enabled or art.precision != "int8" or art.format not in RUNTIMES:
        return False
    if art.val_metrics is None or art.fp32_val_accuracy is None or s.calib_x is None or not len(s.calib_x):
        return False
    return art.fp32_val_accuracy - art.val_metrics["accuracy"] > s.cfg.max_accuracy_drop + 1e-12


def recover(s: ExportSession, art: Artifact, export_one: ExportOne) -> Artifact:
    """``art`` recovered by mixed precision or QAT (see the module docstring), or ``art`` as it was.

    Args:
        s: the export session that made ``art``.
        art: the artifact as the gate judged it.
        export_one: the driver's export-check-judge of this ``(format, precision)`` with another exporter; the
            recovered model goes through it, so it is checked exactly like any artifact.
    """
    if not applies(s, art):
        return art
    assert art.val_metrics is not None and art.fp32_val_accuracy is not None
    runtime = RUNTIMES[art.format]
    log.warning("%s loses %.1f points on val: trying mixed precision, then QAT", art.name,
                100 * (art.fp32_val_accuracy - art.val_metrics["accuracy"]))  # fmt: skip
    flow = _Flow(s, art, runtime)
    try:
        rec = flow.run()
    except Exception as exc:  # recovery is a fallback: whatever stops it leaves the artifact failed, never crashes
        why = str(exc) if isinstance(exc, EdgeCompressError) else f"{type(exc).__name__}: {exc}"
        log.warning("INT8 recovery of %s stopped: %s", art.name, why, exc_info=log.isEnabledFor(logging.DEBUG))
        flow.record.steps.append(RecoveryStep(kind=flow.phase, note=f"stopped: {why.splitlines()[0][:300]}"))
        flow.chosen_folder, rec = None, flow.record
    chosen = flow.chosen_folder
    if chosen is None:
        failure = f"{art.failure}; {rec.summary()}"
        return art.model_copy(update={"int8_recovery": rec, "failure": failure})
    recovered = export_one(lambda _s, _p, d: _copy_candidate(chosen, d, flow.chosen_info))
    if not recovered.ok:
        failure = f"{recovered.failure}; {rec.summary()}"
        return recovered.model_copy(update={"int8_recovery": rec, "failure": failure})
    return recovered.model_copy(update={"int8_recovery": rec, "note": rec.summary()})


def _copy_candidate(folder: Path, dest: Path, info: dict[str, Any]) -> Exported:
    files = []
    for f in sorted(folder.iterdir()):
        shutil.copyfile(f, dest / f.name)
        files.append(dest / f.name)
    model_file = next(f for f in files if f.suffix in (".onnx", ".xml"))
    return files, model_file, info


class _Flow:
    """One artifact's recovery: the candidates it tried, the record, the folder that ships."""

    def __init__(self, s: ExportSession, art: Artifact, runtime: str) -> None:
        self.s, self.art, self.runtime = s, art, runtime
        self.cfg = s.cfg.int8_recovery
        self.fp32 = float(art.fp32_val_accuracy or 0.0)
        selection = art.info.get("selection") or {}
        self.method = str(selection.get("calibration_method") or art.info.get("calibration_method") or "minmax")
        self.method = self.method.split(" ")[0]
        self.head = bool(selection.get("keep_head_float", False))
        self.root = s.work / "int8-recovery" / art.format
        self.root.mkdir(parents=True, exist_ok=True)
        self.phase: Literal["mixed", "qat"] = "mixed"  # the step running (named in the record if it stops)
        self.chosen_folder: Path | None = None
        self.chosen_info: dict[str, Any] = {}
        self.record = Int8Recovery(
            runtime=runtime,
            fp32_val_accuracy=self.fp32,
            max_accuracy_drop=s.cfg.max_accuracy_drop,
            min_speedup=self.cfg.min_speedup,
            layers=0,
            speed_setup=f"{runtime}, batch 1, 1 thread, median of {SPEED_ROUNDS} paired rounds",
        )

    # ----------------------------------------------------------------------------------------------- the steps

    def run(self) -> Int8Recovery:
        ranking, compute, plain_float = ranked_layers(self.s)
        rec = self.record
        rec.layers, rec.ranking = len(compute), ranking[:20]
        if self.art.format != "onnx":  # OpenVINO's plain INT8: what NNCF was told to ignore (the head, if chosen)
            plain_float = _float_layers(None, self.art.info, _float_index(self.s))
        assert self.art.val_metrics is not None
        rec.steps.append(RecoveryStep(kind="ptq", val_accuracy=self.art.val_metrics["accuracy"],
                                      float_layers=plain_float, note=f"calibration {self.method}"))  # fmt: skip
        mixed = self._mixed([r.name for r in ranking], max(1, int(self.cfg.max_float_fraction * len(compute))))
        if mixed is not None and (mixed[1].speedup or 0.0) >= self.cfg.min_speedup:
            return self._choose(*mixed)
        self.phase = "qat"
        qat = self._qat() if self.cfg.qat else None
        if qat is not None and qat[1].within_gate:
            return self._choose(*qat)
        if mixed is not None and (mixed[1].speedup or 0.0) > 1.0:
            mixed[1].note = f"below min_speedup {self.cfg.min_speedup:g}x; QAT did not hold the gate"
            return self._choose(*mixed)
        if mixed is not None:
            mixed[1].note = "holds the gate but is not faster than FP32: not shipped"
        return rec

    def _choose(self, folder: Path, step: RecoveryStep, info: dict[str, Any]) -> Int8Recovery:
        self.chosen_folder, self.chosen_info = folder, {**info, "int8_recovery": step.kind}
        self.record.chosen = "qat" if step.kind == "qat" else "mixed"
        self.record.float_layers = list(step.float_layers)
        self.record.speedup = step.speedup
        return self.record

    def _mixed(self, names: list[str], cap: int) -> tuple[Path, RecoveryStep, dict[str, Any]] | None:
        """The smallest k (of the ranked ``names``) whose mixed model holds the gate, with its speed; or None."""
        tried: dict[int, tuple[Path, RecoveryStep, dict[str, Any]]] = {}

        def attempt(k: int) -> bool:
            if k not in tried:
                tried[k] = self._candidate_mixed(names[:k], k)
            return tried[k][1].within_gate

        ks = [k for k in _doubling(cap) if k <= len(names)] or ([len(names)] if names else [])
        low, high = 0, None
        for k in ks:
            if attempt(k):
                high = k
                break
            low = k
        if high is None:
            return None
        while high - low > 1:  # bisection between the last failing and the first passing k
            mid = (low + high) // 2
            if attempt(mid):
                high = mid
            else:
                low = mid
        folder, step, info = tried[high]
        step.speedup = self._speedup(folder)
        return folder, step, info

    def _candidate_mixed(self, layers: list[str], k: int) -> tuple[Path, RecoveryStep, dict[str, Any]]:
        from edgecompress.export.int8_layers import union_groups

        start = time.perf_counter()
        index = _float_index(self.s)
        exclude = union_groups(index, layers)
        folder = self.root / f"mixed-{k}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        calib = self.s.require_calib("int8 recovery")
        if self.art.format == "onnx":
            from edgecompress.export import onnx_export as ox

            model_file = folder / "model.onnx"
            info = ox.quantize_int8(self.s.base_onnx(), model_file, calib, method=self.method,
                                    keep_head_float=self.head, keep_stem_float=self.s.cfg.keep_stem_float,
                                    exclude=exclude)  # fmt: skip
        else:
            from edgecompress.export import openvino_export as ovx

            model_file = folder / "model.xml"
            info = ovx.quantize_ir(self.s.base_onnx(), model_file, calib, method=self.method,
                                   keep_head_float=self.head, ignore_onnx_nodes=exclude)  # fmt: skip
        acc = self._val_accuracy(model_file)
        floats = _float_layers(model_file, info, index)
        step = RecoveryStep(kind="mixed", val_accuracy=acc, within_gate=self._within(acc), float_layers=floats,
                            seconds=time.perf_counter() - start, note=f"{k} most sensitive kept float")  # fmt: skip
        log.info("INT8 recovery %s: %d layers float -> val accuracy %.4f", self.art.name, len(floats), acc)
        self.record.steps.append(step)
        return folder, step, {**info, "float_layers": floats}

    def _qat(self) -> tuple[Path, RecoveryStep, dict[str, Any]] | None:
        from edgecompress.export.formats import FORMATS

        start = time.perf_counter()
        sub, res = qat_session(self.s)
        folder = self.root / "qat"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        files, model_file, info = FORMATS[self.art.format].export_fn()(sub, "int8", folder)
        for f in folder.iterdir():  # the exporter's own files only
            if f not in files:
                f.unlink()
        acc = self._val_accuracy(model_file)
        floats = _float_layers(model_file, info, _index_of(sub.base_onnx()))
        step = RecoveryStep(kind="qat", val_accuracy=acc, within_gate=self._within(acc),
                            float_layers=floats, seconds=time.perf_counter() - start,
                            note=f"{res.steps} steps, KL to FP32 {res.kl_start:.3g} -> {res.kl_end:.3g}")  # fmt: skip
        if step.within_gate:
            step.speedup = self._speedup(folder)
        self.record.steps.append(step)
        return folder, step, {**info, "qat": res.summary()}

    # --------------------------------------------------------------------------------------------- measuring

    def _within(self, acc: float) -> bool:
        return self.fp32 - acc <= self.s.cfg.max_accuracy_drop + 1e-12

    def _val_accuracy(self, model_file: Path) -> float:
        s = self.s
        assert s.val_x is not None and s.val_y is not None
        out = run_artifact(self.runtime, model_file, s.val_x, "int8", s.contract.max_batch)[0]
        return float(metrics_of(out, s.val_y, probabilities=s.contract.output_probabilities)["accuracy"])

    def _speedup(self, folder: Path) -> float:
        model_file = next(f for f in folder.iterdir() if f.suffix in (".onnx", ".xml"))
        x = np.ascontiguousarray(self.s.require_calib("int8 recovery")[:1], dtype=np.float32)
        return paired_speedup(self.runtime, self.s.base_onnx(), model_file, x)


def _float_layers(model_file: Path | None, info: dict[str, Any], index: Any) -> list[str]:
    """Compute layers not run in INT8: read from the QDQ graph itself (ONNX), or, for OpenVINO, the layers of the
    float graph ``index`` whose ops NNCF was told to ignore (``info["excluded_nodes"]``)."""
    from edgecompress.export.int8_layers import GraphIndex, quantized_layers

    if model_file is not None and model_file.suffix == ".onnx":
        qdq = _index_of(model_file)
        int8 = set(quantized_layers(qdq.proto))
        return [n.name for n in GraphIndex(qdq.proto).compute_nodes() if n.name not in int8]
    ignored = {str(n).split("/")[0] for n in info.get("excluded_nodes", [])}
    return [n.name for n in index.compute_nodes() if n.name in ignored]


def _index_of(path: Path) -> Any:
    import onnx

    from edgecompress.export.int8_layers import GraphIndex

    return GraphIndex(onnx.load(str(path)))


def _doubling(cap: int) -> list[int]:
    ks, k = [], 1
    while k < cap:
        ks.append(k)
        k *= 2
    return [*ks, cap]


def _float_index(s: ExportSession) -> Any:
    """The float graph INT8 quantizes (the base ONNX after ONNX Runtime's ``quant_pre_process``), indexed."""

    def make() -> Any:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from edgecompress.export.onnx_export import _quiet

        pre = s.work / "int8-recovery" / "pre.onnx"
        pre.parent.mkdir(parents=True, exist_ok=True)
        with _quiet():
            quant_pre_process(str(s.base_onnx()), str(pre), skip_symbolic_shape=False)
        return _index_of(pre)

    return s.once("int8_recovery_float_index", make)


def ranked_layers(s: ExportSession) -> tuple[list[LayerSensitivity], list[str], list[str]]:
    """The ranking (once per export call), the compute layers, and the layers plain INT8 keeps float (stem, head)."""

    def make() -> tuple[list[LayerSensitivity], list[str], list[str]]:
        from edgecompress.export.sensitivity import rank_layers

        index = _float_index(s)
        qdq, _ = s.int8_onnx()
        x = s.require_calib("int8 recovery")[: s.cfg.int8_recovery.sensitivity_samples]
        ranking = rank_layers(qdq, s.work / "int8-recovery" / "pre.onnx", x)
        return ranking, [n.name for n in index.compute_nodes()], _float_layers(qdq, {}, index)

    return s.once("int8_recovery_ranking", make)


def qat_session(s: ExportSession) -> tuple[ExportSession, Any]:
    """An export session of the QAT-fine-tuned model (trained once per export call, shared by the runtimes)."""

    def make() -> tuple[ExportSession, Any]:
        from edgecompress.export.qat import qat_distill

        cfg = s.cfg.int8_recovery
        res = qat_distill(s.model, s.require_calib("QAT"), steps=cfg.qat_steps, batch_size=cfg.qat_batch_size,
                          lr=cfg.qat_lr)  # fmt: skip
        work = s.work / "int8-recovery" / "qat-session"
        work.mkdir(parents=True, exist_ok=True)
        sub_cfg = s.cfg.model_copy(update={"int8_calibration": "minmax"})
        return ExportSession(res.model, s.contract, sub_cfg, s.calib_x, s.val_x, s.val_y, s.metadata, work), res

    return s.once("int8_recovery_qat", make)


def paired_speedup(runtime: str, reference: Path, candidate: Path, x: np.ndarray, *, rounds: int = SPEED_ROUNDS,
                   min_time_s: float = 0.15) -> float:  # fmt: skip
    """Median over ``rounds`` of ``latency(reference) / latency(candidate)``, each round timing both back to back.

    Both run in ``runtime`` with one thread on the batch ``x``; pairing the rounds cancels most of a busy
    machine's drift. The reference runs at FP32 (OpenVINO: the f32 hint), the candidate as stored.
    """
    from edgecompress.devices.agent import measure, runtime_options
    from edgecompress.devices.host_runtimes import get_runtime

    ref = get_runtime(runtime, **runtime_options(runtime, "fp32"))
    ref.load(Path(reference), threads=1)
    cand = get_runtime(runtime, **runtime_options(runtime, "int8"))
    cand.load(Path(candidate), threads=1)
    ratios = []
    for _ in range(rounds):
        t_ref = measure(ref, x, warmup=3, min_time_s=min_time_s, min_iters=5, repeats=1)["p50"]
        t_cand = measure(cand, x, warmup=3, min_time_s=min_time_s, min_iters=5, repeats=1)["p50"]
        ratios.append(t_ref / max(t_cand, 1e-9))
    return float(np.median(ratios))
