"""The per-format exporters that :data:`edgecompress.export.formats.FORMATS` names, and TensorRT's parity target.

Each exporter is ``exporter(session, precision, folder) -> (files, model_file, info)``: it writes into ``folder`` (a
temporary folder the driver renames into place) and reuses the session's base and INT8 ONNX where it can.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgecompress.export.formats import available_here
from edgecompress.export.session import ExportSession

Exported = tuple[list[Path], Path, dict[str, Any]]


def export_onnx(s: ExportSession, precision: str, d: Path) -> Exported:
    """ONNX: the base graph (fp32), FP16 weights and activations, or the chosen INT8 QDQ graph."""
    from edgecompress.export import onnx_export as ox

    out = d / "model.onnx"
    if precision == "fp32":
        shutil.copyfile(s.base_onnx(), out)
        info = s.base_info()
    elif precision == "fp16":
        info = ox.convert_fp16(s.base_onnx(), out)
    else:
        s.require_calib("onnx:int8")
        path, info = s.int8_onnx()
        shutil.copyfile(path, out)
    return [out], out, info


def export_openvino(s: ExportSession, precision: str, d: Path) -> Exported:
    """OpenVINO IR from the base ONNX; INT8 by NNCF, calibration method (and float head) chosen like ONNX's."""
    from edgecompress.export import openvino_export as ovx

    xml = d / "model.xml"
    if precision in ("fp32", "fp16"):
        info = ovx.export_ir(s.base_onnx(), xml, precision=precision)
    else:
        calib = s.require_calib("openvino:int8")

        def build(method: str, head: bool) -> tuple[Path, dict]:
            path = s.work / f"ov-int8-{method}-{int(head)}" / "model.xml"
            return path, ovx.quantize_ir(s.base_onnx(), path, calib, method=method, keep_head_float=head)

        chosen, info = s.choose_int8(build, "openvino")
        for src in (chosen, chosen.with_suffix(".bin")):
            shutil.copyfile(src, d / src.name)
    return [xml, xml.with_suffix(".bin")], xml, info


def export_tensorrt(s: ExportSession, precision: str, d: Path) -> Exported:
    """TensorRT build kit (ONNX, recipe, INT8 calibration cache and QDQ ONNX); the engine too where a GPU is."""
    from edgecompress._io import atomic_write_json
    from edgecompress.export import tensorrt as trx

    onnx_file = d / "model.onnx"
    shutil.copyfile(s.base_onnx(), onnx_file)
    files, cache = [onnx_file], None
    info: dict[str, Any] = {"builds_on_target": True}
    here, why = available_here("tensorrt", precision)
    if precision == "int8":
        calib = s.require_calib("tensorrt:int8")
        cache = "calibration.cache"
        amax = trx.compute_activation_ranges(onnx_file, calib, method="entropy")
        version = trx.local_trt_version() if here else None  # an engine built here must accept the cache
        files.append(trx.write_calibration_cache(amax, d / cache, trt_version=version))
        qdq, qinfo = s.int8_onnx()  # explicit-quantization alternative: trtexec --onnx=model_qdq.onnx --int8
        shutil.copyfile(qdq, d / "model_qdq.onnx")
        files.append(d / "model_qdq.onnx")
        info.update({"calibration_method": "entropy (ORT histogram, TensorRT cache)", "qdq": qinfo})
    recipe = trx.make_recipe(onnx_file.name, s.contract, precision=precision, calibration_cache=cache)
    files.append(atomic_write_json(d / "model.recipe.json", recipe))
    info["recipe"] = recipe
    model_file = onnx_file
    if here:
        engine = trx.build_engine_here(onnx_file, recipe)
        files += [engine, engine.with_name(engine.name + ".json")]
        model_file = engine
    info["engine_built_here"] = here
    info["engine_note"] = "built here" if here else why
    return files, model_file, info


def tensorrt_parity_target(precision: str, model_file: Path) -> tuple[str, Path, str]:
    """An engine runs in TensorRT; without one (no GPU here) the ONNX it will be built from runs in ONNX Runtime."""
    if model_file.suffix != ".onnx":
        return "tensorrt", model_file, precision
    if precision == "int8":
        return "onnxruntime", model_file.with_name("model_qdq.onnx"), "int8"
    return "onnxruntime", model_file, "fp32"


def export_executorch(s: ExportSession, precision: str, d: Path) -> Exported:
    """ExecuTorch ``.pte`` (XNNPACK); INT8 by PT2E quantization with the calibration images."""
    from edgecompress.export import mobile

    if precision == "int8":
        s.require_calib("executorch:int8")
    pte = d / "model.pte"
    info = mobile.export_executorch(s.model, s.contract, pte, precision=precision, calib_x=s.calib_x)
    return [pte], pte, info


def export_ort(s: ExportSession, precision: str, d: Path) -> Exported:
    """ORT format for ONNX Runtime Mobile, converted from the base (fp32) or the chosen INT8 ONNX."""
    from edgecompress.export import mobile

    info: dict[str, Any] = {}
    src = s.base_onnx()
    if precision == "int8":
        s.require_calib("ort:int8")
        src, info = s.int8_onnx()
    out = d / "model.ort"
    info = {**info, **mobile.convert_to_ort(src, out)}
    return [out], out, info
