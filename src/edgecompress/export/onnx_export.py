"""ONNX export, simplification, metadata, FP16 conversion and INT8 static QDQ quantization.

INT8 is static QDQ from ONNX Runtime: per-channel INT8 weights, unsigned (QUInt8) activations, after
``quant_pre_process``. On residual CNNs ORT's default per-tensor settings can be no faster than FP32; per-channel
weights with unsigned activations ran about 2.5x faster on our x86 CPU (issue notes), so those are the defaults.
The logits are never quantized at the output: an 8-bit grid on logits would distort calibrated confidences.
A thin stem convolution (one fed by the image with at most ``STEM_MAX_CHANNELS`` channels, e.g. grayscale or RGB)
can be kept in float: its reduction is only Cin x k x k long (9 for a 3x3 grayscale conv), too short for ORT's VNNI
kernels, and in float ORT runs it in its NCHWc layout instead (docs/performance.md: about -24 % INT8 latency on the
Fashion-MNIST student).
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import _lazy
from edgecompress._io import atomic_path
from edgecompress.errors import ExportError, QuantizationError
from edgecompress.export.contract import ExportContract

log = logging.getLogger(__name__)

ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
HEAD_OPS = ("Gemm", "MatMul")
STEM_MAX_CHANNELS = 4
# Ops that may sit between the classifier head and the graph output without computing features.
_PASS_THROUGH = {
    "Add",
    "Reshape",
    "Flatten",
    "Identity",
    "Softmax",
    "Mul",
    "Div",
    "Cast",
    "Squeeze",
    "DequantizeLinear",
}


def _with_output_head(model: Any, contract: ExportContract) -> Any:
    import torch

    if not contract.output_probabilities:
        return model
    return torch.nn.Sequential(model, torch.nn.Softmax(dim=-1))


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Put ``model`` in eval mode for the block and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def ort_session(model: Path | str | bytes, *, threads: int = 1) -> Any:
    """A CPU ONNX Runtime session from a file (``.onnx`` or ``.ort``) or serialized ONNX bytes."""
    ort = _lazy.require("onnxruntime", "ONNX export checks")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=so, providers=["CPUExecutionProvider"])


def ort_run(path_or_session: Any, x: np.ndarray) -> np.ndarray:
    """Run the first input/output of an ONNX model on ``x`` (float32) through ONNX Runtime."""
    sess = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0], dtype=np.float32)


def _torch_export(model: Any, contract: ExportContract, path: Path, exporter: str) -> None:
    import torch

    x = torch.from_numpy(contract.example_input(2 if contract.dynamic_batch else 1))
    names, outputs, opset = contract.input_names, contract.output_names, contract.opset
    if exporter == "dynamo":
        shapes = None
        if contract.dynamic_batch:
            shapes = ({0: torch.export.Dim(contract.batch_axis_name, min=1, max=max(contract.max_batch, 2))},)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            dynamic_shapes=shapes,
            verbose=False,
            input_names=names,
            output_names=outputs,
            opset_version=opset,
        )
    else:
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            dynamic_axes=contract.dynamic_axes or None,
            input_names=names,
            output_names=outputs,
            opset_version=opset,
        )


def export_onnx(
    model: Any,
    contract: ExportContract,
    path: Path,
    *,
    simplify: bool = True,
    exporters: tuple[str, ...] = ("dynamo", "torchscript"),
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Export a PyTorch classifier to ONNX following ``contract``, check it, optionally simplify, embed metadata.

    The dynamo exporter is tried first; the TorchScript exporter is the fallback (both verified on BN CNNs with
    torch 2.13 + onnxscript 0.7). The file is written atomically as one self-contained ``.onnx``.

    Returns:
        info: ``exporter`` used, ``simplified`` and the simplification parity ``simplify_max_abs_diff``.

    Raises:
        ExportError: every exporter failed (message names the step and the last cause), or the checker refused.
    """
    onnx = _lazy.require("onnx", "ONNX export")
    model = _with_output_head(model, contract)
    errors: list[str] = []
    proto = None
    used = None
    with tempfile.TemporaryDirectory(prefix="ec-onnx-") as tmp, eval_mode(model):
        for exporter in exporters:
            raw = Path(tmp) / f"{exporter}.onnx"
            try:
                with _quiet():
                    _torch_export(model, contract, raw, exporter)
                proto = onnx.load(str(raw))  # pulls in any external data the exporter wrote
                used = exporter
                break
            except Exception as exc:  # the exporters raise many unrelated types
                errors.append(f"{exporter}: {_first_line(exc)}")
                log.info("ONNX %s exporter failed: %s", exporter, errors[-1])
    if proto is None:
        raise ExportError(
            f"onnx export failed at step 'torch.onnx.export': {'; '.join(errors)}",
            "replace the unsupported layer or op in the model, or export a simpler head",
        )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(
            f"onnx export failed at step 'onnx.checker': {_first_line(exc)}", "report this model"
        ) from exc
    info: dict[str, Any] = {"exporter": used, "opset": contract.opset, "simplified": False}
    if simplify:
        proto, info["simplified"], info["simplify_max_abs_diff"] = _simplify_if_equal(proto, contract)
    embed_metadata(proto, {**contract.string_metadata(), **(metadata or {})})
    save_onnx(proto, path)
    return info


def _simplify_if_equal(proto: Any, contract: ExportContract) -> tuple[Any, bool, float | None]:
    """Run onnxslim; keep its result only when ORT outputs stay equal (max |diff| <= 1e-6) on an example batch."""
    try:
        onnxslim = _lazy.require("onnxslim", "ONNX simplification")
        slim = onnxslim.slim(proto)
        x = contract.example_input(4 if contract.dynamic_batch else 1, seed=1)
        before = ort_run(ort_session(proto.SerializeToString()), x)
        after = ort_run(ort_session(slim.SerializeToString()), x)
    except Exception as exc:  # a simplifier failure is not an export failure: keep the checked graph
        log.warning("onnxslim skipped: %s", _first_line(exc))
        return proto, False, None
    diff = float(np.max(np.abs(before - after))) if before.shape == after.shape else float("inf")
    if diff > 1e-6:
        log.warning("onnxslim changed outputs (max |diff| %.3g); keeping the unsimplified graph", diff)
        return proto, False, diff
    return slim, True, diff


def embed_metadata(proto: Any, metadata: dict[str, str]) -> None:
    """Set ``metadata_props`` (replacing keys already present)."""
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            existing[key].value = str(value)
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file."""
    onnx = _lazy.require("onnx", "ONNX metadata")
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def save_onnx(proto: Any, path: Path) -> Path:
    """Save a ModelProto atomically as one file (models here are far below the 2 GB protobuf limit)."""
    onnx = _lazy.require("onnx", "ONNX export")
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """FP16 weights and compute with float32 IO (Cast nodes at the boundary).

    Uses ONNX Runtime's bundled float16 converter (the same algorithm as onnxconverter-common, which is not a
    dependency). Metadata is kept.
    """
    onnx = _lazy.require("onnx", "ONNX FP16")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(src))
    meta = {p.key: p.value for p in proto.metadata_props}
    half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    del half.metadata_props[:]
    embed_metadata(half, meta)
    save_onnx(half, dst)
    return {"io": "float32", "weights": "float16", "compute": "float16"}


def find_head_nodes(proto: Any) -> list[str]:
    """Names of the final Gemm/MatMul nodes (the classifier head) that feed the graph outputs.

    Walks back from each graph output through pass-through ops (bias Add, Reshape, Softmax, ...) to the first
    Gemm/MatMul.
    """
    producer = {out: node for node in proto.graph.node for out in node.output}
    heads: list[str] = []
    for output in proto.graph.output:
        name, seen = output.name, 0
        while name in producer and seen < 16:
            node = producer[name]
            if node.op_type in HEAD_OPS:
                if node.name and node.name not in heads:
                    heads.append(node.name)
                break
            if node.op_type not in _PASS_THROUGH or not node.input:
                break
            name, seen = node.input[0], seen + 1
    return heads


def find_stem_nodes(proto: Any, max_in_channels: int = STEM_MAX_CHANNELS) -> list[str]:
    """Names of the Conv nodes that read a graph input directly and have at most ``max_in_channels`` input channels.

    These are the image stems (grayscale / RGB) whose short reduction does not fill INT8 GEMM kernels.
    """
    inputs = {i.name for i in proto.graph.input}
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    stems: list[str] = []
    for node in proto.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[0] not in inputs:
            continue
        dims = weights.get(node.input[1])
        if dims and len(dims) >= 2 and dims[1] <= max_in_channels and node.name:
            stems.append(node.name)
    return stems


class ArrayReader:
    """ONNX Runtime ``CalibrationDataReader`` over a float32 NCHW array, in equal batches.

    Equal batches matter: ORT's entropy/percentile calibrators stack per-batch outputs and fail on a short last batch,
    so the batch is the largest divisor of ``len(x)`` not above ``batch``.
    """

    def __init__(self, x: np.ndarray, input_name: str = "input", batch: int = 32) -> None:
        batch = max(d for d in range(1, min(batch, len(x)) + 1) if len(x) % d == 0)
        self._batches = [
            {input_name: np.ascontiguousarray(x[i : i + batch], dtype=np.float32)} for i in range(0, len(x), batch)
        ]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return self._batches[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def quantize_int8(
    src: Path,
    dst: Path,
    calib_x: np.ndarray,
    *,
    method: str = "minmax",
    keep_head_float: bool = False,
    keep_stem_float: bool = False,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
) -> dict[str, Any]:
    """Static INT8 QDQ quantization with ONNX Runtime.

    Steps: ``quant_pre_process`` (shape inference + graph optimization), then ``quantize_static`` with
    ``QuantFormat.QDQ``, per-channel QInt8 weights, QUInt8 activations and the chosen activation-range method
    (MinMax, Entropy = KL-divergence threshold, Percentile). With ``keep_head_float`` the final Gemm/MatMul is excluded;
    with ``keep_stem_float`` the thin stem convolutions (:func:`find_stem_nodes`) are; ``exclude`` names more nodes to
    keep float (mixed precision, :mod:`edgecompress.export.int8_recovery`).

    Returns:
        info: calibration method, excluded nodes, calib sample count.

    Raises:
        QuantizationError: naming the step ('quant_pre_process' or 'quantize_static') and the cause.
    """
    if method not in ORT_METHODS:
        raise QuantizationError(f"unknown INT8 calibration method '{method}'", f"use one of {', '.join(ORT_METHODS)}")
    if calib_x is None or len(calib_x) == 0:
        raise QuantizationError("INT8 quantization needs calibration samples, got none", "pass calib_x")
    onnx = _lazy.require("onnx", "INT8 quantization")
    q = _lazy.require("onnxruntime.quantization", "INT8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = read_metadata(src)
    with tempfile.TemporaryDirectory(prefix="ec-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        step = "quant_pre_process"
        try:
            with _quiet():
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            step = "quantize_static"
            proto = onnx.load(str(pre))
            heads = find_head_nodes(proto)
            head_types = sorted({n.op_type for n in proto.graph.node if n.name in heads}) or list(HEAD_OPS)
            stems = find_stem_nodes(proto)
            kept = (heads if keep_head_float else []) + (stems if keep_stem_float else [])
            exclude = list(dict.fromkeys([*kept, *exclude]))
            out = Path(tmp) / "int8.onnx"
            input_name = proto.graph.input[0].name
            with _quiet():
                q.quantize_static(
                    str(pre),
                    str(out),
                    ArrayReader(calib_x, input_name),
                    quant_format=q.QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    calibrate_method=getattr(q.CalibrationMethod, ORT_METHODS[method]),
                    nodes_to_exclude=exclude,
                    extra_options={"OpTypesToExcludeOutputQuantization": head_types},
                )
            proto = onnx.load(str(out))
        except Exception as exc:
            raise QuantizationError(
                f"onnx int8 failed at step '{step}' (method {method}): {_first_line(exc)}",
                "try another int8_calibration method or keep_head_float: true",
            ) from exc
    embed_metadata(proto, {**meta, "edgecompress.int8_calibration": method})
    save_onnx(proto, dst)
    return {
        "calibration_method": method,
        "excluded_nodes": exclude,
        "head_nodes": heads,
        "stem_nodes": stems,
        "per_channel": per_channel,
        "activation_type": "uint8",
        "weight_type": "int8",
        "calib_samples": len(calib_x),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' and quantizers' stdout chatter (they print progress), keeping it in the log."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            yield
    finally:
        if buf.getvalue().strip():
            log.debug("%s", buf.getvalue().strip())


def _first_line(exc: BaseException) -> str:
    """The exception's type and first line, without terminal colour codes (torch.onnx colours its messages)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:300]}" if line else type(exc).__name__
