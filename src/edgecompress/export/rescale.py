"""Multiply an exported model's output by a scalar inside the graph (re-folding a re-fitted temperature).

Each format's hook is named in its :class:`~edgecompress.export.formats.FormatSpec` (``rescale``);
:func:`rescale_output` writes the edited copy of an artifact atomically.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecompress import _lazy
from edgecompress._io import make_temp_dir
from edgecompress.errors import ExportError

if TYPE_CHECKING:
    from edgecompress.export.artifact import Artifact

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


def rescale_onnx_files(artifact: Any, factor: float, folder: Path) -> tuple[list[Path], Path]:
    """Rescale hook of ONNX-file artifacts: every ``.onnx`` gets the ``Mul``; other files are copied unchanged."""
    src_dir = Path(artifact.model_file).parent
    files = []
    for f in artifact.files:
        target = folder / f.relative_to(src_dir)
        if f.suffix == ".onnx":  # model.onnx and, for TensorRT INT8, model_qdq.onnx
            rescale_onnx(f, target, factor)
        else:
            shutil.copyfile(f, target)
        files.append(target)
    return files, folder / Path(artifact.model_file).name


def rescale_tensorrt_files(artifact: Any, factor: float, folder: Path) -> tuple[list[Path], Path]:
    """Rescale hook of TensorRT: its ONNX build kit can be edited; a built engine cannot."""
    if Path(artifact.model_file).suffix != ".onnx":
        raise ExportError(
            f"cannot rescale the built TensorRT engine of {artifact.name}",
            "fold the new temperature into the model and export tensorrt again",
        )
    return rescale_onnx_files(artifact, factor, folder)


def rescale_openvino_files(artifact: Any, factor: float, folder: Path) -> tuple[list[Path], Path]:
    """Rescale hook of OpenVINO IR: a ``Multiply`` before the Result."""
    from edgecompress.export.openvino_export import rescale_ir

    model_file = folder / Path(artifact.model_file).name
    return rescale_ir(Path(artifact.model_file), model_file, factor), model_file


def rescale_output(artifact: Artifact, factor: float, out_dir: Path) -> Artifact:
    """Copy ``artifact`` with its logits multiplied by ``factor`` inside the graph (re-folding a re-fitted 1/T).

    The format's rescale hook (:attr:`FormatSpec.rescale`) edits the graph. Written atomically to
    ``out_dir/<name>``; parity fields are cleared (the outputs changed on purpose).

    Raises:
        ExportError: the artifact failed, its format cannot be edited (export again instead), or its output is
            probabilities.
    """
    from edgecompress.export.artifact import swap_into_place
    from edgecompress.export.formats import FORMATS

    if not artifact.ok or artifact.model_file is None:
        raise ExportError(f"cannot rescale failed artifact {artifact.name}", "export it successfully first")
    hook = FORMATS[artifact.format].rescale_fn()
    if hook is None:
        raise ExportError(
            f"cannot rescale the {artifact.format} artifact {artifact.name} in place",
            "fold the new temperature into the model and export that format again",
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / artifact.name
    tmp = make_temp_dir(out_dir, f".{artifact.name}-")
    try:
        files, model_file = hook(artifact, float(factor), tmp)
        swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved = [final / f.relative_to(tmp) for f in files]
    prev = float(artifact.info.get("output_scale", 1.0))
    return artifact.model_copy(
        update={
            "files": moved,
            "model_file": final / model_file.relative_to(tmp),
            "size_bytes": sum(f.stat().st_size for f in moved),
            "parity_max_abs_diff": None,
            "parity_rel_diff": None,
            "parity_top1_agreement": None,
            "info": {**artifact.info, "output_scale": prev * float(factor)},
        }
    )
