"""The layers of an ONNX graph as INT8 sees them: which compute nodes a QDQ graph quantizes, and which nodes must
stay float together for one layer's input to stay float.

Why groups: ONNX Runtime's QDQ quantizer quantizes a tensor when its producer *or* any consumer is quantized (and it
folds a ReLU into the producer's output quantization), so excluding only the layer that suffers from its input's
8-bit grid leaves that grid in place (measured: a layer fed by an outlier channel stays at the PTQ accuracy until its
producer is excluded too). :func:`float_group` therefore returns the layer, the ops between it and the compute node(s)
producing its input (activations, pooling, reshapes), those producers, and every other consumer of the tensors on that
path. The same group, by name, goes to NNCF's ignored scope for OpenVINO (:func:`openvino_names`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
# Ops with one activation input whose output is a function of it alone: the walk to a layer's producer passes them.
PASS_THROUGH_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Mish",
     "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Reshape", "Flatten", "Squeeze",
     "Unsqueeze", "Transpose", "Identity", "Dropout", "Cast", "Resize", "Pad"}
)  # fmt: skip
MAX_WALK = 8  # ops walked up from a layer's input before the group is closed


class GraphIndex:
    """Producers, consumers and constants of an ONNX ``ModelProto`` (read-only)."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.nodes = {n.name: n for n in proto.graph.node if n.name}
        self.producer = {out: n for n in proto.graph.node for out in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in proto.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name: t for t in proto.graph.initializer}
        self.constants = {n.output[0] for n in proto.graph.node if n.op_type == "Constant" and n.output}
        self.inputs = {i.name for i in proto.graph.input}

    def is_constant(self, name: str) -> bool:
        return not name or name in self.initializers or name in self.constants

    def activation_inputs(self, node: Any) -> list[str]:
        """Inputs of ``node`` that carry data (not weights, shapes or other constants)."""
        return [i for i in node.input if not self.is_constant(i)]

    def array(self, name: str) -> np.ndarray:
        """The value of an initializer."""
        from onnx import numpy_helper

        return numpy_helper.to_array(self.initializers[name])

    def compute_nodes(self) -> list[Any]:
        """Conv / Gemm / MatMul nodes with a constant weight (the layers INT8 quantizes), in graph order."""
        return [
            n
            for n in self.proto.graph.node
            if n.op_type in COMPUTE_OPS and n.name and len(n.input) > 1 and self._constant_weight(n.input[1])
        ]

    def _constant_weight(self, name: str) -> bool:
        if self.is_constant(name):
            return True
        node = self.producer.get(name)  # a QDQ graph: weight -> DequantizeLinear -> layer
        return node is not None and node.op_type == "DequantizeLinear" and self.is_constant(node.input[0])


def float_group(index: GraphIndex, name: str) -> list[str]:
    """Names of the nodes to keep float so that layer ``name`` computes on float inputs (see the module docstring).

    Walks up from each activation input through :data:`PASS_THROUGH_OPS` (at most :data:`MAX_WALK` ops) to the
    producing compute node(s) or any other op (an Add, a Concat, an SE multiply), which closes the walk and joins
    the group; every consumer of a tensor on the way joins too. ``index`` is the float graph that is quantized.
    """
    start = index.nodes[name]
    group: dict[str, None] = {name: None}
    todo = [(t, 0) for t in index.activation_inputs(start)]
    seen: set[str] = set()
    while todo:
        tensor, depth = todo.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for consumer in index.consumers.get(tensor, []):
            if consumer.name:
                group.setdefault(consumer.name, None)
        node = index.producer.get(tensor)
        if node is None or not node.name:
            continue
        group.setdefault(node.name, None)
        if node.op_type in PASS_THROUGH_OPS and depth < MAX_WALK:
            todo += [(t, depth + 1) for t in index.activation_inputs(node)]
    return list(group)


def union_groups(index: GraphIndex, names: Iterable[str]) -> list[str]:
    """The union of the float groups of ``names``, in graph order."""
    wanted = {n for name in names for n in float_group(index, name)}
    return [n.name for n in index.proto.graph.node if n.name in wanted]


def quantized_layers(proto: Any) -> list[str]:
    """Names of the compute nodes a QDQ graph runs in INT8: weight and activation inputs dequantized from 8 bits."""
    index = GraphIndex(proto)
    out = []
    for node in index.compute_nodes():
        ins = [index.producer.get(i) for i in node.input[:2]]
        if all(p is not None and p.op_type == "DequantizeLinear" for p in ins):
            out.append(node.name)
    return out


def openvino_names(model: Any, onnx_names: Iterable[str]) -> tuple[list[str], list[str]]:
    """The friendly names of the OpenVINO ops converted from ONNX nodes ``onnx_names``, and the names not found.

    OpenVINO's ONNX frontend names an op after its ONNX node, with a suffix for the pieces a node becomes (a Conv
    with a bias becomes ``<name>/WithoutBiases`` + the Add ``<name>``).
    """
    ops = [op.get_friendly_name() for op in model.get_ordered_ops()]
    found, missing = [], []
    for name in onnx_names:
        hits = [op for op in ops if op == name or op.startswith(name + "/")]
        if hits:
            found.extend(hits)
        else:
            missing.append(name)
    return list(dict.fromkeys(found)), missing
