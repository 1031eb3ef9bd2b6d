"""load_teacher: the checkpoint forms users bring, output selection, and the labels contract (never resized)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import zoo_models  # noqa: E402
from edgecompress.config import TeacherConfig
from edgecompress.errors import CheckpointError, ModelError
from edgecompress.models import ModelSpec, build_model, count_macs, is_prunable, load_state, load_teacher

torch.set_num_threads(1)
TRUST = ("zoo_models",)
X = torch.randn(3, 1, 8, 8)


def _raw(name: str = "plain_cnn", num_classes: int = 10, **kw) -> nn.Module:
    torch.manual_seed(0)
    return getattr(zoo_models, name)(num_classes=num_classes, **kw).eval()


def _load(path, num_classes=10, **cfg):
    cfg.setdefault("model", {"factory": "zoo_models:plain_cnn"})
    return load_teacher(
        TeacherConfig(checkpoint=path, **cfg),
        in_channels=1,
        num_classes=num_classes,
        input_size=(8, 8),
        trusted_modules=TRUST,
    )


def _forms(state: dict) -> dict[str, object]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    opt.step()
    return {
        "plain": state,
        "tutorial": {"epoch": 5, "model_state_dict": state, "optimizer_state_dict": opt.state_dict(), "loss": 0.12},
        "lightning": {
            "epoch": 3,
            "global_step": 90,
            "state_dict": {f"model.{k}": v for k, v in state.items()} | {"criterion.weight": torch.ones(10)},
            "hyper_parameters": {"lr": 0.01},
        },
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "timm_style": {"model": state, "arch": "plain_cnn"},
        "lightning_ddp": {"state_dict": {f"model.module.{k}": v for k, v in state.items()}},
    }


@pytest.mark.parametrize("form", ["plain", "tutorial", "lightning", "ddp", "timm_style", "lightning_ddp"])
def test_checkpoint_forms_load_exactly(tmp_path, form):
    raw = _raw()
    path = tmp_path / f"{form}.pt"
    torch.save(_forms(raw.state_dict())[form], path)
    teacher = _load(path)
    assert not teacher.training
    torch.testing.assert_close(teacher(X), raw(X))


def test_output_size_different_from_the_labels_is_refused_not_resized(tmp_path, monkeypatch):
    path = tmp_path / "ten.pt"
    torch.save(_raw(num_classes=10).state_dict(), path)
    with pytest.raises(ModelError) as err:
        _load(path, num_classes=7)
    text = str(err.value)
    assert "10 outputs" in text and "7 labels" in text and "never resized" in text and "\n" not in text
    # a factory that ignores num_classes is caught by the output check
    (tmp_path / "ec_fixed_head.py").write_text(
        "import zoo_models\n"
        "def net(in_channels=1):\n"
        "    return zoo_models.plain_cnn(num_classes=10, in_channels=in_channels)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="10 outputs but the data has 7 labels"):
        load_teacher(
            TeacherConfig(model={"factory": "ec_fixed_head:net"}, checkpoint=path),
            in_channels=1,
            num_classes=7,
            input_size=(8, 8),
            trusted_modules=("ec_fixed_head", "zoo_models"),
        )


def test_student_load_state_still_resizes_pruned_layers(tmp_path):
    """The resizing that stays: a student pruned and saved by this tool, rebuilt from its spec."""
    from edgecompress.models import prune_to_ratio, save_state

    spec = ModelSpec(factory="zoo_models:plain_cnn")
    model = build_model(spec, in_channels=1, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
    student = prune_to_ratio(model, (1, 8, 8), 0.3).eval()
    save_state(student, tmp_path / "s.pt")
    fresh = build_model(spec, in_channels=1, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
    torch.testing.assert_close(load_state(fresh, tmp_path / "s.pt").eval()(X), student(X))


@pytest.mark.parametrize(
    ("name", "kwargs", "output"),
    [("tuple_output", {}, 0), ("tuple_output", {"as_namedtuple": True}, "logits"), ("dict_output", {}, "logits")],
)
def test_tuple_and_dict_outputs(tmp_path, name, kwargs, output):
    raw = _raw(name, **kwargs)
    path = tmp_path / "t.pt"
    torch.save(raw.state_dict(), path)
    model = {"factory": f"zoo_models:{name}", "params": kwargs}
    with pytest.raises(ModelError) as err:
        _load(path, model=model)
    text = str(err.value)
    assert "set teacher.output" in text and "\n" not in text and "[2, 10]" in text
    teacher = _load(path, model=model, output=output)
    expected = raw(X)[0] if name == "tuple_output" else raw(X)["logits"]
    torch.testing.assert_close(teacher(X), expected)
    with pytest.raises(ModelError, match="not in the model's output"):
        _load(path, model=model, output=5 if name == "tuple_output" else "scores")


def test_whole_pickled_module_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_raw(), path)
    with pytest.raises(CheckpointError) as err:
        _load(path)
    text = str(err.value)
    assert "weights_only" in text and "torch.save(model)" in text and "model.state_dict()" in text
    assert "zoo_models.PlainCNN" in text and "\n" not in text


def test_torchscript_and_export_teachers(tmp_path):
    raw = _raw("small_resnet")
    ts = tmp_path / "teacher.pt"  # TorchScript saved under the usual .pt name
    torch.jit.save(torch.jit.trace(raw, torch.zeros(1, 1, 8, 8)), ts)
    for cfg in ({"checkpoint": ts}, {"checkpoint": ts, "model": {"family": "cnn"}}):  # a given spec is not used
        teacher = load_teacher(TeacherConfig(**cfg), in_channels=1, num_classes=10, input_size=(8, 8))
        torch.testing.assert_close(teacher(X), raw(X))
        assert not is_prunable(teacher)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dyn = tmp_path / "dynamic.pt2"
    torch.export.save(torch.export.export(raw, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)), dyn)
    fixed = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(raw, (torch.zeros(2, 1, 8, 8),)), fixed)
    macs = count_macs(raw, (1, 8, 8))
    for path in (ts, dyn, fixed):
        teacher = load_teacher(TeacherConfig(checkpoint=path), in_channels=1, num_classes=10, input_size=(8, 8))
        torch.testing.assert_close(teacher(X), raw(X))  # batch 3 runs on a program fixed to batch 2 (chunks)
        assert not is_prunable(teacher)
        assert abs(count_macs(teacher, (1, 8, 8)) - macs) < 0.05 * macs  # FLOP counter: conv/matmul only
    with pytest.raises(ModelError, match="10 outputs but the data has 4 labels"):
        load_teacher(TeacherConfig(checkpoint=ts), in_channels=1, num_classes=4, input_size=(8, 8))
    sd = tmp_path / "state.pt"
    torch.save(raw.state_dict(), sd)
    with pytest.raises(ModelError, match="teacher.model is not set"):
        load_teacher(TeacherConfig(checkpoint=sd), in_channels=1, num_classes=10, input_size=(8, 8))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_teacher(TeacherConfig(checkpoint=tmp_path / "none.pt2"), in_channels=1, num_classes=10, input_size=(8, 8))


def test_mismatched_architecture_names_the_layer(tmp_path):
    path = tmp_path / "cnn.pt"
    torch.save(_raw().state_dict(), path)
    with pytest.raises(CheckpointError, match="does not match the teacher architecture"):
        _load(path, model={"factory": "zoo_models:small_resnet"})
    wider = {k: torch.cat([v, v]) if k == "conv1.weight" else v for k, v in _raw().state_dict().items()}
    torch.save(wider, path)
    with pytest.raises(CheckpointError, match=r"conv1.weight has shape \[32, 1, 3, 3\]"):
        _load(path)


def test_untrusted_factory_teacher_is_refused(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(_raw().state_dict(), path)
    with pytest.raises(ModelError, match="--trust-factory zoo_models"):
        load_teacher(
            TeacherConfig(model={"factory": "zoo_models:plain_cnn"}, checkpoint=path),
            in_channels=1,
            num_classes=10,
            input_size=(8, 8),
        )


def test_teacher_config_fields(tmp_path):
    assert TeacherConfig(checkpoint=tmp_path / "t.pt2").model is None
    cfg = TeacherConfig(model={"family": "cnn"}, checkpoint=tmp_path / "a.pt", output="logits", accuracy=0.991)
    assert cfg.output == "logits" and cfg.accuracy == 0.991
    assert TeacherConfig(model={"family": "cnn"}, checkpoint=tmp_path / "a.pt", output=0).output == 0
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        TeacherConfig(model={"family": "cnn"}, checkpoint=tmp_path / "a.pt", accuracy=99.1)
    with pytest.raises(ValidationError, match="needs teacher.model"):
        TeacherConfig(train={"epochs": 1})
    with pytest.raises(ValidationError, match="differ"):
        TeacherConfig(model={"family": "cnn", "output": 1}, checkpoint=tmp_path / "a.pt", output=0)
