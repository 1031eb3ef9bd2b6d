"""Deploy-only runs (``distill: {student: none}``, resolved as ``deploy_only: true``): the teacher ships as it is.

The distill stage hands the teacher on unchanged — not pruned, not distilled — and every later stage runs as usual
on it: calibrate (temperature scaling on val, T folded), export and quantize (with the accuracy gate and INT8
recovery), benchmark, report and bundles. The stage writes ``student.pt`` (the teacher's state) so that a reused
stage, the calibrate stage and ``edgecompress bench`` rebuild the shipped model the way they rebuild a student.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from edgecompress.errors import ModelError
from edgecompress.pipeline.context import Context
from edgecompress.pipeline.results import DistillResult, TeacherResult
from edgecompress.pipeline.rundir import StageDir
from edgecompress.pipeline.train_stages import splits_of, val_accuracy

log = logging.getLogger(__name__)

NOTE = "deploy-only (distill.student: none): the teacher as it is, not pruned, not distilled"


def key(ctx: Context) -> dict[str, Any]:
    """The distill stage's key in a deploy-only run: the teacher alone (no distillation settings apply)."""
    return {"deploy_only": True, "teacher": ctx.keys["teacher"]}


def compute(ctx: Context, sd: StageDir) -> DistillResult:
    """Hand the loaded (or trained) teacher on as the model to calibrate and export.

    Raises:
        ModelError: the teacher is a TorchScript / torch.export program (the later stages rebuild the shipped model
            from its spec and a state dict, which a program does not have).
    """
    from edgecompress.models import save_state

    teacher_result = ctx.result("teacher", TeacherResult)
    if teacher_result.spec is None:
        raise ModelError(
            "deploy-only needs the teacher as an architecture + state dict; a TorchScript / torch.export program "
            "cannot be rebuilt by the calibrate and export stages",
            "give teacher.model (a family or a trusted factory) and a state-dict teacher.checkpoint",
        )
    splits = splits_of(ctx)
    model = copy.deepcopy(ctx.models["teacher"]).eval()
    save_state(model, sd.path / "student.pt")
    ctx.models["student"] = model
    size = {"params": teacher_result.params, "macs": teacher_result.macs}
    metrics = dict(teacher_result.test or {})
    val = val_accuracy(model, splits)
    members = [
        {"name": "teacher", "role": "teacher", **size, **metrics},
        {"name": "student", "role": "student", "teacher": "teacher", **size, **metrics, "val_accuracy": val,
         "fidelity_agreement": 1.0, "note": NOTE},
    ]  # fmt: skip
    log.info("%s", NOTE)
    return DistillResult(
        student_spec=teacher_result.spec,
        chain={"members": members, "deploy_only": True},
        member_specs={"student": teacher_result.spec},
        student_val_accuracy=val,
        teacher_val_accuracy=teacher_result.val_accuracy,
    )
