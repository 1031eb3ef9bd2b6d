"""The zoo of user-style architectures (tests/zoo_models.py): built by a trusted factory, cut to a MAC budget."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo_models  # noqa: E402
from edgecompress.config import TeacherConfig
from edgecompress.errors import ModelError
from edgecompress.models import (
    ModelSpec,
    build_model,
    count_macs,
    find_classifier,
    is_prunable,
    load_teacher,
    prune_search,
    prune_to_ratio,
    save_state,
)

torch.set_num_threads(1)
TRUST = ("zoo_models",)
TARGET = 0.25


def _build(name: str, in_channels: int, **spec) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelSpec(factory=f"zoo_models:{name}", **spec),
        in_channels=in_channels,
        num_classes=10,
        input_size=(8, 8),
        trusted_modules=TRUST,
    ).eval()


@pytest.mark.parametrize("name", sorted(set(zoo_models.ZOO) - {"tuple_output"}))
def test_zoo_model_prunes_to_a_quarter_of_its_macs(name):
    _, channels = zoo_models.ZOO[name]
    shape = (channels, 8, 8)
    model = _build(name, channels)
    base = count_macs(model, shape)
    res = prune_search(model, shape, TARGET)
    assert 0.75 * TARGET <= res.mac_ratio <= TARGET, res.mac_ratio
    assert res.macs == count_macs(res.model, shape)
    x = torch.randn(4, *shape)
    out = res.model.eval()(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert count_macs(model, shape) == base  # the original is untouched


def test_tuple_output_teacher_through_load_teacher(tmp_path):
    raw = _build("tuple_output", 1)
    path = tmp_path / "teacher.pt"
    torch.save({"model_state_dict": raw.state_dict(), "epoch": 7}, path)
    cfg = TeacherConfig(model={"factory": "zoo_models:tuple_output"}, checkpoint=path, output=0)
    teacher = load_teacher(cfg, in_channels=1, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(teacher(x), raw(x)[0])
    assert is_prunable(teacher)
    res = prune_search(teacher, (1, 8, 8), TARGET)
    assert 0.75 * TARGET <= res.mac_ratio <= TARGET
    assert res.model.eval()(x).shape == (3, 10)


def test_head_registered_first_and_se_linears_are_not_taken_for_the_classifier():
    assert find_classifier(_build("head_first", 1), (1, 8, 8)) == ["classifier"]
    mobile = _build("tiny_mobilenet", 1)
    assert find_classifier(mobile, (1, 8, 8)) == ["classifier"]
    # the old rule (last registered Linear) picks the bottleneck of head_first, whose outputs would then be cut
    head_first = _build("head_first", 1)
    assert [n for n, m in head_first.named_modules() if isinstance(m, nn.Linear)][-1] == "bottleneck"
    pruned = prune_to_ratio(head_first, (1, 8, 8), TARGET)
    assert pruned.classifier.out_features == 10 and pruned.bottleneck.out_features < 32


def test_grouped_convs_reach_targets_below_the_highest_ratio():
    """MACs are not monotone in the ratio: a low target is found though the highest ratio gives more MACs."""
    model = _build("grouped_net", 1)
    res = prune_search(model, (1, 8, 8), 0.05)
    assert res.mac_ratio <= 0.05 and res.ratio < 0.95
    groups = [m for m in res.model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert groups and all(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0 for m in groups)
    rounded = prune_search(model, (1, 8, 8), 0.3, round_to=8)  # grouped channels counted per group
    assert rounded.mac_ratio <= 0.3 and not rounded.relaxed
    widths = [m.out_channels for m in rounded.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths


def test_example_round_to_8_with_16_channel_layers_is_met_where_possible():
    """examples/fashion_mnist.yaml: prune_ratio 0.05 with round_to 8, on a net whose first layer has 16 channels."""
    model = _build("plain_cnn", 1)
    res = prune_search(model, (1, 8, 8), 0.05, round_to=8)
    assert res.mac_ratio <= 0.05
    assert res.relaxed and all(0 < kept < 8 for _, kept in res.relaxed)  # reported, never emptied
    assert "round_to 8 was not met in" in res.warning()
    widths = [m.out_channels for m in res.model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w >= 1 for w in widths)
    easy = prune_search(model, (1, 8, 8), 0.4, round_to=8)
    assert not easy.relaxed and easy.warning() is None
    assert all(m.out_channels % 8 == 0 for m in easy.model.modules() if isinstance(m, nn.Conv2d))


def test_hard_coded_view_is_named_with_its_fix():
    model = zoo_models.hard_coded_view()
    with pytest.raises(ModelError) as err:
        prune_to_ratio(model, (1, 8, 8), TARGET)
    text = str(err.value)
    assert "'fc1'" in text and "torch.flatten(x, 1)" in text and "\n" not in text
    assert "unexpected" not in text


def test_unreachable_target_names_the_smallest_reachable_ratio():
    model = _build("small_resnet", 1)
    with pytest.raises(ModelError, match=r"smallest reachable is 0\.\d+") as err:
        prune_search(model, (1, 8, 8), 1e-5)
    floor = float(str(err.value).split("smallest reachable is ")[1].split(" ")[0])
    assert prune_search(model, (1, 8, 8), floor * 1.01).mac_ratio <= floor * 1.01


def test_torchscript_teacher_cannot_be_pruned(tmp_path):
    raw = _build("small_resnet", 1)
    path = tmp_path / "teacher.ts"
    torch.jit.save(torch.jit.script(raw), path)
    teacher = load_teacher(TeacherConfig(checkpoint=path), in_channels=1, num_classes=10, input_size=(8, 8))
    assert not is_prunable(teacher)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(teacher(x), raw(x))
    with pytest.raises(ModelError, match="distill.student.model"):
        prune_to_ratio(teacher, (1, 8, 8), TARGET)


def test_pruned_wrapped_student_rebuilds_from_the_teacher_spec(tmp_path):
    from edgecompress.models import load_state, teacher_spec

    cfg = TeacherConfig(model={"factory": "zoo_models:dict_output"}, output="logits", train={"epochs": 1})
    teacher = load_teacher(cfg, in_channels=1, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
    student = prune_to_ratio(teacher, (1, 8, 8), 0.4).eval()
    save_state(student, tmp_path / "student.pt")
    spec = teacher_spec(cfg)
    rebuilt = build_model(spec, in_channels=1, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
    rebuilt = load_state(rebuilt, tmp_path / "student.pt").eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt(x), student(x))


def test_pruned_tuple_output_student_exports_to_onnx(tmp_path):
    """The SelectOutput wrapper survives pruning and ONNX export: the graph has one output, the logits."""
    import onnxruntime as ort

    student = prune_to_ratio(_build("tuple_output", 1, output=0), (1, 8, 8), 0.4).eval()
    path = tmp_path / "student.onnx"
    torch.onnx.export(
        student,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 1, 8, 8)
    [out] = session.run(None, {"input": x.numpy()})
    assert [o.name for o in session.get_outputs()] == ["logits"]
    torch.testing.assert_close(torch.from_numpy(out), student(x).detach(), rtol=1e-4, atol=1e-5)


def test_torchvision_style_factory_without_in_channels(tmp_path):
    """`resnet_like_torchvision(num_classes=1000)` takes no in_channels: it is called without it, and its checkpoint
    loads as a teacher for RGB data."""
    raw = zoo_models.resnet_like_torchvision(num_classes=10).eval()
    path = tmp_path / "rgb.pt"
    torch.save({"state_dict": raw.state_dict()}, path)
    cfg = TeacherConfig(model={"factory": "zoo_models:resnet_like_torchvision"}, checkpoint=path)
    teacher = load_teacher(cfg, in_channels=3, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(teacher(x), raw(x))
    with pytest.raises(ModelError, match=r"fails on an input of shape \[2, 1, 8, 8\]"):  # gray data, RGB model
        load_teacher(cfg, in_channels=1, num_classes=10, input_size=(8, 8), trusted_modules=TRUST)
