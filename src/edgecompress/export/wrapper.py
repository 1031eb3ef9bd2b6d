"""One wrapper for every exporter (ultralytics ``try_export`` without the god class).

Per ``(format, precision)``: export into a temporary folder, check the files are non-empty, run the artifact
through its own runtime against PyTorch on a fixed batch (max |diff| and top-1 agreement), optionally check INT8
accuracy on val, then rename the folder into place — a killed or failed export never leaves a half artifact.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgecompress._io import sha256_json
from edgecompress.errors import DeviceError, EdgeCompressError, ExportError
from edgecompress.export import onnx_export as ox
from edgecompress.export.config import ExportConfig
from edgecompress.export.contract import ExportContract, effective_precision, stringify_metadata, tool_versions
from edgecompress.export.formats import FORMATS, available_here, parse_formats
from edgecompress.export.quantize import (
    check_accuracy_drop,
    choose_int8,
    fidelity_scorer,
    label_scorer,
)

log = logging.getLogger(__name__)


class Artifact(BaseModel):
    """One exported model. ``error`` is set (and files empty) only for a recorded failure."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    format: str
    precision: str
    files: list[Path]
    model_file: Path | None
    runtime: str
    size_bytes: int = 0
    parity_max_abs_diff: float | None = None
    parity_top1_agreement: float | None = None
    export_seconds: float = 0.0
    info: dict[str, Any] = {}
    error: str | None = None
    # filled by the pipeline after export: metrics through the artifact's own runtime, re-fit twins, notes
    test_metrics: dict[str, float] | None = None
    val_ece_shift: float | None = None
    note: str | None = None
    refit_of: str | None = None
    refit_temperature: float | None = None
    reliability_png: Path | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_artifact(
    runtime: str, model_file: Path, x: np.ndarray, precision: str | None = None, max_batch: int | None = None
) -> tuple[np.ndarray, dict]:
    """Run ``x`` through ``model_file`` with the named ``devices`` runtime; the one place export touches runtimes.

    ``precision`` is the artifact's stated precision: the runtime is asked to execute at it (OpenVINO would otherwise
    pick bf16 for an FP32 IR on CPUs that have it). ``max_batch`` splits ``x`` into chunks the artifact accepts
    (ExecuTorch programs are exported with a bounded batch).
    """
    from edgecompress.devices.agent import runtime_options
    from edgecompress.devices.runtimes import get_runtime

    step = max_batch or max(1, len(x))
    try:
        rt = get_runtime(runtime, **runtime_options(runtime, precision))
        rt.load(Path(model_file), threads=1)
        out = [np.asarray(rt.run(np.ascontiguousarray(x[i : i + step])), np.float32) for i in range(0, len(x), step)]
        return np.concatenate(out), rt.info()
    except DeviceError as exc:  # a missing runtime (MissingExtraError) propagates as it is: it names the extra
        raise ExportError(f"running {Path(model_file).name} in {runtime} failed: {exc.problem}", exc.fix) from exc


class _Session:
    """What one ``export_all`` call shares between exporters: the base ONNX, chosen INT8 models, references."""

    def __init__(self, model, contract, cfg, calib_x, val_x, val_y, metadata, work: Path) -> None:
        self.model, self.contract, self.cfg, self.work = model, contract, cfg, work
        self.calib_x, self.val_x, self.val_y = calib_x, val_x, val_y
        self.metadata = metadata
        self._cache: dict[str, Any] = {}

    def torch_logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        model = ox._with_output_head(self.model, self.contract)
        with ox.eval_mode(model), torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x))).numpy().astype(np.float32)

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def base_onnx(self) -> Path:
        def make() -> Path:
            path = self.work / "base.onnx"
            info = ox.export_onnx(self.model, self.contract, path, simplify=self.cfg.simplify, metadata=self.metadata)
            self._cache["base_info"] = info
            return path

        return self.once("base_onnx", make)

    def scorer(self) -> tuple[Callable, np.ndarray, str]:
        """Scorer for INT8 candidates: labels on val when given, else fidelity to FP32 on calibration images."""

        def make() -> tuple[Callable, np.ndarray, str]:
            if self.val_x is not None and self.val_y is not None:
                return label_scorer(self.val_y), self.val_x, "val"
            x = self.calib_x[:256]
            return fidelity_scorer(self.torch_logits(x)), x, "fp32-fidelity-on-calib"

        return self.once("scorer", make)

    def int8_onnx(self) -> tuple[Path, dict]:
        def make() -> tuple[Path, dict]:
            base = self.base_onnx()
            scorer, x, data = self.scorer()

            def build(method: str, head: bool) -> tuple[Path, dict]:
                path = self.work / f"int8-{method}-{'headfloat' if head else 'full'}.onnx"
                return path, ox.quantize_int8(
                    base,
                    path,
                    self.calib_x,
                    method=method,
                    keep_head_float=head,
                    keep_stem_float=self.cfg.keep_stem_float,
                )

            chosen, record = choose_int8(
                build,
                lambda cand: run_artifact("onnxruntime", cand[0], x)[0],
                scorer,
                method=self.cfg.int8_calibration,
                keep_head_float=self.cfg.keep_head_float,
            )
            return chosen[0], {**chosen[1], "selection": record, "selection_data": data}

        return self.once("int8_onnx", make)


def _require_calib(s: _Session, name: str) -> None:
    if s.calib_x is None or len(s.calib_x) == 0:
        raise ExportError(f"{name} needs calibration samples (calib_x is empty)", "give the data a calib split")


def _export_onnx(s: _Session, precision: str, d: Path) -> tuple[list[Path], Path, dict]:
    out = d / "model.onnx"
    if precision == "fp32":
        shutil.copyfile(s.base_onnx(), out)
        info = dict(s._cache.get("base_info", {}))
    elif precision == "fp16":
        info = ox.convert_fp16(s.base_onnx(), out)
    else:
        _require_calib(s, "onnx:int8")
        path, info = s.int8_onnx()
        shutil.copyfile(path, out)
    return [out], out, info


def _export_openvino(s: _Session, precision: str, d: Path) -> tuple[list[Path], Path, dict]:
    from edgecompress.export import openvino_export as ovx

    xml = d / "model.xml"
    if precision in ("fp32", "fp16"):
        info = ovx.export_ir(s.base_onnx(), xml, precision=precision)
    else:
        _require_calib(s, "openvino:int8")
        scorer, x, data = s.scorer()

        def build(method: str, head: bool) -> tuple[Path, dict]:
            path = s.work / f"ov-int8-{method}-{int(head)}" / "model.xml"
            return path, ovx.quantize_ir(s.base_onnx(), path, s.calib_x, method=method, keep_head_float=head)

        chosen, record = choose_int8(
            build,
            lambda cand: run_artifact("openvino", cand[0], x)[0],
            scorer,
            method=s.cfg.int8_calibration,
            keep_head_float=s.cfg.keep_head_float,
        )
        for src in (chosen[0], chosen[0].with_suffix(".bin")):
            shutil.copyfile(src, d / src.name)
        info = {**chosen[1], "selection": record, "selection_data": data}
    return [xml, xml.with_suffix(".bin")], xml, info


def _export_tensorrt(s: _Session, precision: str, d: Path) -> tuple[list[Path], Path, dict]:
    from edgecompress._io import atomic_write_json
    from edgecompress.export import tensorrt as trx

    onnx_file = d / "model.onnx"
    shutil.copyfile(s.base_onnx(), onnx_file)
    files, cache = [onnx_file], None
    info: dict[str, Any] = {"builds_on_target": True}
    if precision == "int8":
        _require_calib(s, "tensorrt:int8")
        cache = "calibration.cache"
        amax = trx.compute_activation_ranges(onnx_file, s.calib_x, method="entropy")
        files.append(trx.write_calibration_cache(amax, d / cache))
        qdq, qinfo = s.int8_onnx()  # explicit-quantization alternative: trtexec --onnx=model_qdq.onnx --int8
        shutil.copyfile(qdq, d / "model_qdq.onnx")
        files.append(d / "model_qdq.onnx")
        info.update({"calibration_method": "entropy (ORT histogram, TensorRT cache)", "qdq": qinfo})
    recipe = trx.make_recipe(onnx_file.name, s.contract, precision=precision, calibration_cache=cache)
    files.append(atomic_write_json(d / "model.recipe.json", recipe))
    info["recipe"] = recipe
    model_file = onnx_file
    ok, why = available_here("tensorrt", precision)
    if ok:
        engine, sidecar = trx.build_engine(onnx_file, recipe, d / recipe["engine"], calib_x=s.calib_x)
        files += [engine, sidecar]
        model_file = engine
    info["engine_built_here"] = ok
    info["engine_note"] = "built here" if ok else why
    return files, model_file, info


def _export_executorch(s: _Session, precision: str, d: Path) -> tuple[list[Path], Path, dict]:
    from edgecompress.export import mobile

    if precision == "int8":
        _require_calib(s, "executorch:int8")
    pte = d / "model.pte"
    info = mobile.export_executorch(s.model, s.contract, pte, precision=precision, calib_x=s.calib_x)
    return [pte], pte, info


def _export_ort(s: _Session, precision: str, d: Path) -> tuple[list[Path], Path, dict]:
    from edgecompress.export import mobile

    info: dict[str, Any] = {}
    src = s.base_onnx()
    if precision == "int8":
        _require_calib(s, "ort:int8")
        src, info = s.int8_onnx()
    out = d / "model.ort"
    info = {**info, **mobile.convert_to_ort(src, out)}
    return [out], out, info


EXPORTERS: dict[str, Callable[[_Session, str, Path], tuple[list[Path], Path, dict]]] = {
    "onnx": _export_onnx,
    "openvino": _export_openvino,
    "tensorrt": _export_tensorrt,
    "executorch": _export_executorch,
    "ort": _export_ort,
}


def _parity_target(fmt: str, precision: str, files: list[Path], model_file: Path) -> tuple[str, Path, str]:
    """(runtime, file, precision judged) used for the parity check of one artifact."""
    if fmt == "tensorrt" and model_file.suffix == ".onnx":  # no engine here: check the ONNX it will be built from
        if precision == "int8":
            return "onnxruntime", model_file.with_name("model_qdq.onnx"), "int8"
        return "onnxruntime", model_file, "fp32"
    return FORMATS[fmt].runtime, model_file, precision


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    record_failures: bool = False,
) -> list[Artifact]:
    """Export ``model`` to every requested ``(format, precision)`` and verify each through its own runtime.

    Args:
        model: PyTorch classifier returning logits (temperature already folded in, if any).
        contract: names, shapes, tolerance; ``contract.metadata`` is embedded in every artifact.
        formats: ``"format:precision"`` strings, pairs, or ``"all"``; default ``cfg.formats``.
        calib_x: calibration images (float32 NCHW); the first ``cfg.calib_samples`` are used.
        out_dir: one subfolder per artifact (``onnx-int8/`` ...), each written atomically.
        metadata: extra metadata for every artifact (labels, temperature, preprocessing, config hash ...).
        cfg: export options; default ``ExportConfig()``.
        val_x, val_y: validation split for choosing INT8 calibration and the ``max_accuracy_drop`` check.
        parity_x: fixed parity batch; default the first 32 calibration images (or a seeded random batch).
        record_failures: record a failed export as an Artifact with ``error`` set instead of raising.

    Raises:
        ExportError: naming the format, the step and the cause (unless ``record_failures``).
    """
    cfg = cfg or ExportConfig()
    if formats is None:
        pairs = cfg.format_pairs()
    elif isinstance(formats, str):
        pairs = parse_formats(formats)
    else:
        pairs = parse_formats([item if isinstance(item, str) else ":".join(item) for item in formats])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calib = None if calib_x is None else np.ascontiguousarray(calib_x[: cfg.calib_samples], dtype=np.float32)
    if parity_x is None:
        parity_x = calib[:32] if calib is not None and len(calib) else contract.example_input(16, seed=7)
    parity_x = np.ascontiguousarray(parity_x, dtype=np.float32)
    meta = {**contract.metadata, **(metadata or {})}
    meta.setdefault("edgecompress.export_config_hash", sha256_json(cfg.model_dump(mode="json")))
    meta.setdefault("edgecompress.tool_versions", tool_versions())
    string_meta = stringify_metadata(meta)
    artifacts: list[Artifact] = []
    with tempfile.TemporaryDirectory(prefix=".export-work-", dir=out_dir) as work:
        s = _Session(model, contract, cfg, calib, val_x, val_y, string_meta, Path(work))
        ref = s.torch_logits(parity_x)
        fp32_acc = None
        if val_x is not None and val_y is not None:
            fp32_acc = label_scorer(val_y)(s.torch_logits(val_x))["accuracy"]
        for fmt, precision in pairs:
            try:
                artifacts.append(_export_one(s, fmt, precision, out_dir, parity_x, ref, fp32_acc))
            except ExportError as exc:
                if not record_failures:
                    raise
                log.error("%s", exc)
                spec = FORMATS[fmt]
                artifacts.append(
                    Artifact(
                        name=f"{fmt}-{precision}",
                        format=fmt,
                        precision=precision,
                        files=[],
                        model_file=None,
                        runtime=spec.runtime,
                        error=str(exc),
                    )
                )
    return artifacts


def _export_one(
    s: _Session, fmt: str, precision: str, out_dir: Path, parity_x: np.ndarray, ref: np.ndarray, fp32_acc: float | None
) -> Artifact:
    name = f"{fmt}-{precision}"
    step = "export"
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        files, model_file, info = EXPORTERS[fmt](s, precision, tmp)
        seconds = time.perf_counter() - start
        step = "non-empty check"
        empty = [f.name for f in files if not f.is_file() or f.stat().st_size == 0]
        if empty:
            raise ExportError(f"{name} produced empty or missing files {empty}", "see the exporter log")
        step = "parity"
        runtime, target, judged = _parity_target(fmt, precision, files, model_file)
        y, rt_info = run_artifact(runtime, target, parity_x, precision, s.contract.max_batch)
        if y.shape != ref.shape:
            raise ExportError(f"{name} output shape {y.shape} differs from PyTorch {ref.shape}", "check the export")
        diff = float(np.max(np.abs(y - ref))) if y.size else 0.0
        agree = float(np.mean(y.argmax(1) == ref.argmax(1))) if y.size else 1.0
        judged = effective_precision(judged, rt_info.get("precision"))
        passed, why = s.contract.tolerance(judged).check(diff, agree, ref)
        if not passed:
            raise ExportError(f"{name} parity vs PyTorch ({judged} tolerance): {why}", "inspect the exported graph")
        info = {**info, "parity_runtime": runtime, "parity_precision": judged, "runtime_info": rt_info}
        if precision == "int8" and fp32_acc is not None:
            step = "accuracy check"
            acc = label_scorer(s.val_y)(run_artifact(runtime, target, s.val_x, precision, s.contract.max_batch)[0])[
                "accuracy"
            ]
            info.update({"val_accuracy": acc, "fp32_val_accuracy": fp32_acc})
            info["accuracy_drop"] = check_accuracy_drop(fp32_acc, acc, s.cfg.max_accuracy_drop, name)
        info.setdefault("tool_versions", tool_versions())
        final = out_dir / name
        _swap_into_place(tmp, final)
    except EdgeCompressError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ExportError) and str(exc).startswith(f"{fmt}:{precision} "):
            raise
        raise type(exc if isinstance(exc, ExportError) else ExportError)(
            f"{fmt}:{precision} failed at step '{step}': {exc.problem}", exc.fix
        ) from exc
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ExportError(f"{fmt}:{precision} failed at step '{step}': {ox._first_line(exc)}", "see the log") from exc
    files = [final / f.relative_to(tmp) for f in files]
    art = Artifact(
        name=name,
        format=fmt,
        precision=precision,
        files=files,
        model_file=final / model_file.relative_to(tmp),
        runtime=FORMATS[fmt].runtime,
        size_bytes=sum(f.stat().st_size for f in files),
        parity_max_abs_diff=diff,
        parity_top1_agreement=agree,
        export_seconds=round(seconds, 3),
        info=info,
    )
    log.info("exported %s in %.1fs (%d bytes, parity %.3g, top-1 %.3f)", name, seconds, art.size_bytes, diff, agree)
    return art


def rescale_output(artifact: Artifact, factor: float, out_dir: Path) -> Artifact:
    """Copy ``artifact`` with its logits multiplied by ``factor`` inside the graph (re-folding a re-fitted 1/T).

    ONNX (and TensorRT's ONNX): a ``Mul`` appended before the output; OpenVINO: a ``Multiply`` before the Result.
    Written atomically to ``out_dir/<name>``; parity fields are cleared (the outputs changed on purpose).

    Raises:
        ExportError: the format cannot be edited (re-export instead), or the output is probabilities.
    """
    from edgecompress.export.rescale import rescale_files

    if not artifact.ok or artifact.model_file is None:
        raise ExportError(f"cannot rescale failed artifact {artifact.name}", "export it successfully first")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / artifact.name
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact.name}-", dir=out_dir))
    try:
        files, model_file = rescale_files(artifact, float(factor), tmp)
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prev = float(artifact.info.get("output_scale", 1.0))
    return artifact.model_copy(
        update={
            "files": [final / f.relative_to(tmp) for f in files],
            "model_file": final / model_file.relative_to(tmp),
            "size_bytes": sum((final / f.relative_to(tmp)).stat().st_size for f in files),
            "parity_max_abs_diff": None,
            "parity_top1_agreement": None,
            "info": {**artifact.info, "output_scale": prev * float(factor)},
        }
    )
