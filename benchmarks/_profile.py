"""Runtime profilers for the roofline: ONNX Runtime per-node times on the optimized graph, OpenVINO per-layer kernels.

Used by ``roofline.py`` to say *why* an artifact is far from the peak (which layers, which kernels, which fusions).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np

WARMUP = 5


def _node_macs(node: Any, inits: dict[str, Any], out_shape: list[int] | None) -> int | None:
    """MACs of a conv/GEMM node from its weight initializer and output shape (None for other ops)."""
    op = node.op_type
    w_idx = {"QLinearConv": 3, "QLinearMatMul": 3}.get(op, 1)
    if not any(s in op for s in ("Conv", "MatMul", "Gemm")) or len(node.input) <= w_idx or not out_shape:
        return None
    w = inits.get(node.input[w_idx])
    if w is None:
        return None
    dims = list(w.dims)
    if "Conv" in op and len(dims) >= 3:  # [Cout, Cin/g, kh, kw]: every output element sums Cin/g·kh·kw products
        return int(np.prod(out_shape)) * int(np.prod(dims[1:]))
    if len(dims) == 2:  # [K, N] (MatMul) or [N, K] (Gemm transB): every output element sums K products
        k = dims[0] if op != "Gemm" else min(dims)
        return int(np.prod(out_shape)) * int(k)
    return None


def profile_ort(model_file: Path, x: np.ndarray, *, threads: int | None, runs: int, workdir: Path) -> dict[str, Any]:
    """ONNX Runtime per-node profile: optimized graph's op types, time per op type, top nodes with GMAC/s."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / f"ort-{model_file.stem}")
    so.optimized_model_filepath = str(workdir / f"{model_file.stem}.optimized.onnx")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    sess = ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(runs):  # per-node medians below drop the first (warm-up) calls' outliers
        sess.run(None, {name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    opt = onnx.load(so.optimized_model_filepath)
    inits = {i.name: i for i in opt.graph.initializer}
    nodes = {nd.name: nd for nd in opt.graph.node}
    per_node: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node_name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        rec = per_node.setdefault(node_name, {"op": args.get("op_name"), "us": [], "out": None})
        rec["us"].append(float(e["dur"]))
        outs = args.get("output_type_shape") or []
        if outs and rec["out"] is None:
            rec["out"] = next(iter(outs[0].values()))
    total = 0.0
    nodes_out = []
    for node_name, rec in per_node.items():
        us = float(np.median(rec["us"]))
        total += us
        macs = _node_macs(nodes[node_name], inits, rec["out"]) if node_name in nodes else None
        nodes_out.append(
            {
                "node": node_name,
                "op": rec["op"],
                "us": us,
                "out": rec["out"],
                "macs": macs,
                "gmacs": macs / us / 1e3 if macs and us else None,
            }
        )
    by_op: dict[str, float] = collections.defaultdict(float)
    for nd in nodes_out:
        by_op[nd["op"]] += nd["us"]
    ops = collections.Counter(f"{nd.domain + '.' if nd.domain else ''}{nd.op_type}" for nd in opt.graph.node)
    return {
        "total_us": total,
        "by_op_us": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "nodes": sorted(nodes_out, key=lambda d: -d["us"]),
        "optimized_ops": dict(ops.most_common()),
    }


def profile_ov(model_file: Path, x: np.ndarray, *, threads: int | None, runs: int) -> dict[str, Any]:
    """OpenVINO per-layer profile (``PERF_COUNT``): layer type, kernel (exec_type), time; reorders counted."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_file))
    shape = model.input(0).get_partial_shape()
    model.reshape({model.input(0): ov.PartialShape([x.shape[0], *[shape[i] for i in range(1, len(shape))]])})
    config: dict[str, Any] = {"PERF_COUNT": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    req = compiled.create_infer_request()
    samples: dict[str, list[float]] = collections.defaultdict(list)
    kinds: dict[str, tuple[str, str]] = {}
    for _ in range(WARMUP):  # the first calls JIT-compile kernels; their counters would dominate the medians
        req.infer({0: x})
    for _ in range(runs):
        req.infer({0: x})
        for p in req.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                samples[p.node_name].append(p.real_time.total_seconds() * 1e6)
                kinds[p.node_name] = (p.node_type, p.exec_type)
    layers = [
        {"node": k, "type": kinds[k][0], "exec": kinds[k][1], "us": float(np.median(v))} for k, v in samples.items()
    ]
    by_type: dict[str, float] = collections.defaultdict(float)
    for layer in layers:
        by_type[f"{layer['type']} [{layer['exec']}]"] += layer["us"]
    return {
        "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT")),
        "total_us": sum(v["us"] for v in layers),
        "by_type_us": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
        "layers": sorted(layers, key=lambda d: -d["us"]),
        "reorders": sum(1 for v in layers if v["type"] == "Reorder"),
    }
