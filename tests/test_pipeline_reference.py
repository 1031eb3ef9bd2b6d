"""The teacher's reference artifact: the calibrated teacher in ONNX FP32, or a failure that never stops a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.config import load_config
from edgecompress.data import load_splits
from edgecompress.export import ExportContract, run_artifact
from edgecompress.models import ModelSpec, build_model
from edgecompress.pipeline import preset_path
from edgecompress.pipeline import reference as ref
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.results import DistillResult, ExportResult, StageRecord
from edgecompress.pipeline.rundir import RunDir

T = 2.0


class Broken(nn.Module):
    """A teacher that cannot run on any input (the export has nothing to trace)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this teacher cannot run")


@pytest.fixture(scope="module")
def digits():
    cfg = load_config(preset_path("digits"))
    return cfg, load_splits(cfg.data, seed=cfg.seed)


def _ctx(tmp_path: Path, digits, teacher: nn.Module) -> tuple[Context, ExportContract]:
    cfg, splits = digits
    ctx = Context(cfg=cfg, run=RunDir(tmp_path / "run"), progress=False)
    ctx.splits = splits
    ctx.models["teacher"] = teacher.eval()
    members = [{"name": "teacher", "role": "teacher", "temperature": T}]
    ctx.results["distill"] = DistillResult(student_spec={}, chain={"members": members})
    contract = ExportContract.from_config(cfg.export, input_shape=splits.input_shape, num_classes=splits.num_classes,
                                          metadata={"labels": splits.labels})  # fmt: skip
    return ctx, contract


def test_the_reference_is_the_calibrated_teacher_in_onnx_fp32(tmp_path: Path, digits) -> None:
    torch.manual_seed(0)
    teacher = build_model(ModelSpec(family="cnn", params={"channels": [8, 16]}), in_channels=1, num_classes=10,
                          input_size=(8, 8))  # fmt: skip
    ctx, contract = _ctx(tmp_path, digits, teacher)
    splits = digits[1]
    out = tmp_path / "export" / ref.FOLDER
    art = ref.export_reference(ctx, splits, contract, out)
    assert art.ok and art.name == ref.NAME and (art.format, art.precision) == ("onnx", "fp32")
    assert out.resolve() in Path(art.model_file).resolve().parents
    assert art.test_metrics is not None and 0 <= art.test_metrics["accuracy"] <= 1
    # T is folded in: the artifact's logits are the teacher's divided by T
    x = np.asarray(splits.test.x[:64])
    got = run_artifact(art.runtime, art.model_file, x, "fp32")[0]
    with torch.no_grad():
        want = (teacher(torch.from_numpy(x)) / T).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not ctx.warnings
    # benchmarked only from its own folder of the export stage (a run record is data)
    ctx.results["export"] = ExportResult(artifacts=[], reference=art)
    ctx.stages = [StageRecord(name="export", seconds=1.0, cached=False, output_dir=str(tmp_path / "elsewhere"))]
    assert ref.vetted(ctx) is None and "not in its own export folder" in ctx.warnings[-1]
    ctx.stages = [StageRecord(name="export", seconds=1.0, cached=False, output_dir=str(tmp_path / "export"))]
    assert ref.vetted(ctx) == art
    assert ref.reference_note(ctx) is None


def test_a_teacher_that_cannot_be_exported_fails_only_its_reference(tmp_path: Path, digits) -> None:
    ctx, contract = _ctx(tmp_path, digits, Broken())
    art = ref.export_reference(ctx, digits[1], contract, tmp_path / "export" / ref.FOLDER)
    assert not art.ok and art.model_file is None and art.failure
    assert len(ctx.warnings) == 1 and "the speed-up over the teacher is not measured" in ctx.warnings[0]
    ctx.results["export"] = ExportResult(artifacts=[], reference=art)
    assert ref.vetted(ctx) is None  # nothing to measure
    assert ref.reference_note(ctx) == f"the teacher's FP32 export failed: {art.failure}"
    ctx.results["export"] = ExportResult(artifacts=[])  # a record from before the reference existed
    assert "no teacher reference" in ref.reference_note(ctx)
