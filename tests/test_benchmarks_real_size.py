"""The 224x224 benchmark's pieces that need no 224x224 run: its configs validate, agreement and tables are right.

The benchmark itself (four networks through the pipeline, ~1.5 h on 2 shared cores) is run by hand with the command
in docs/performance.md, section 6.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks import real_size
from edgecompress.config import parse_config


def _args(**kw: object) -> argparse.Namespace:
    base = {"calib": 128, "eval": 200, "threads": 1, "qat_steps": 40, "student_steps": 30, "teacher_steps": 30}
    return argparse.Namespace(**{**base, **kw})


def test_configs_validate(tmp_path: Path) -> None:
    npz, ckpt = tmp_path / "d.npz", tmp_path / "t.pt"
    for arch in real_size.ARCHS:
        deploy = parse_config(real_size.deploy_config(arch, npz, ckpt, _args()))
        assert deploy.deploy_only and deploy.teacher.model.family == arch
        assert deploy.export.format_pairs() == [tuple(f.split(":")) for f in real_size.FORMATS]
        assert deploy.benchmark.batch_sizes == [1, 8]
    distill = parse_config(real_size.distill_config("mobilenet_v2", npz, ckpt, _args()))
    assert not distill.deploy_only and distill.distill.student.prune_ratio == 0.5
    assert distill.distill.train.max_steps_per_epoch == 30


def test_agreement_reads_the_benchmark_logits(tmp_path: Path) -> None:
    for name, logits in {"onnx-fp32": [[2, 1], [0, 3], [5, 4]], "onnx-int8": [[2, 1], [4, 3], [5, 4]]}.items():
        (tmp_path / "local" / name).mkdir(parents=True)
        np.save(tmp_path / "local" / name / "logits.npy", np.array(logits, np.float32))
    assert real_size._agreement(tmp_path, "onnx-int8", "onnx-fp32") == 2 / 3
    assert real_size._agreement(tmp_path, "openvino-int8", "openvino-fp32") is None


def test_render_states_the_machine_and_every_row() -> None:
    artifact = {"artifact": "onnx-int8", "ok": True, "size_mb": 1.8, "export_s": 10.0, "p50_ms": {"1": 4.0, "8": 30.0},
                "agreement_fp32": 0.97, "accuracy": 0.5, "recovery": "INT8 recovery: ...", "failure": None}  # fmt: skip
    report = {
        "machine": {"cpu_model": "cpu", "cpu_count": 2, "threads_used": 1},
        "command": "python -m benchmarks.real_size",
        "shared_machine": True,
        "archs": [{"arch": "resnet18", "params": 11.2e6, "macs": 1.8e9, "teacher_val_accuracy": 0.5,
                   "teacher_training": {"seconds": 10.0}, "artifacts": [artifact],
                   "deploy": {"peak_rss": 2**31, "wall_s": 100.0, "stages": {"export": 50.0, "benchmark": 20.0}}}],
        "failed": {"efficientnet_b0": "boom\nlast line"},
    }  # fmt: skip
    text = real_size.render(report)
    assert "shared machine" in text and "peak RSS 2.00 GiB" in text and "INT8 recovery" in text
    assert "| resnet18 | onnx-int8 | yes | 1.80 | 10.0 | 4.00 | 30.0 | 0.970 |" in text
    assert "efficientnet_b0 failed: last line" in text
