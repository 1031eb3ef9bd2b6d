"""Multiply an exported model's output by a scalar inside the graph (re-folding a re-fitted temperature)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress.errors import ExportError

SCALE_INIT = "edgecompress_output_scale"


def rescale_onnx(src: Path, dst: Path, factor: float) -> Path:
    """Copy an ONNX model with ``Mul(output, factor)`` appended; the output keeps its name.

    Raises:
        ExportError: the model outputs probabilities (scaling them is meaningless).
    """
    onnx = _lazy.require("onnx", "rescaling ONNX outputs")
    from onnx import helper, numpy_helper

    from edgecompress.export.onnx_export import embed_metadata, save_onnx

    proto = onnx.load(str(src))
    out = proto.graph.output[0].name
    if out == "probabilities":
        raise ExportError(f"{src.name} outputs probabilities; scaling them is meaningless", "export logits instead")
    inner = f"{out}_unscaled"
    for node in proto.graph.node:
        node.output[:] = [inner if o == out else o for o in node.output]
        node.input[:] = [inner if i == out else i for i in node.input]
    name = SCALE_INIT
    while any(init.name == name for init in proto.graph.initializer):
        name += "_"
    proto.graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), name))
    proto.graph.node.append(helper.make_node("Mul", [inner, name], [out], name=f"{name}_mul"))
    meta = {p.key: p.value for p in proto.metadata_props}
    previous = float(meta.get("edgecompress.output_scale", "1.0"))
    embed_metadata(proto, {"edgecompress.output_scale": repr(previous * factor)})
    onnx.checker.check_model(proto)
    return save_onnx(proto, dst)


def rescale_files(artifact: Any, factor: float, folder: Path) -> tuple[list[Path], Path]:
    """Write the rescaled copy of ``artifact``'s files into ``folder``; returns (files, model_file)."""
    from edgecompress.export.openvino_export import rescale_ir

    src_dir = Path(artifact.model_file).parent
    model_file = folder / Path(artifact.model_file).name
    if artifact.format == "onnx" or (artifact.format == "tensorrt" and artifact.model_file.suffix == ".onnx"):
        files = []
        for f in artifact.files:
            target = folder / f.relative_to(src_dir)
            if f.suffix == ".onnx":  # model.onnx and, for TensorRT INT8, model_qdq.onnx
                rescale_onnx(f, target, factor)
            else:
                shutil.copyfile(f, target)
            files.append(target)
        return files, model_file
    if artifact.format == "openvino":
        return rescale_ir(Path(artifact.model_file), model_file, factor), model_file
    raise ExportError(
        f"cannot rescale a {artifact.format} artifact in place",
        "fold the new temperature into the model and export that format again",
    )
