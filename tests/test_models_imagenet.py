"""The 224x224 ImageNet-class families have torchvision's layout: its state-dict keys, shapes and parameter counts.

torchvision cannot be imported beside this torch build, so the expected values are written down here from
torchvision's published model code (``torchvision/models/{resnet,mobilenetv2,mobilenetv3,efficientnet}.py``) and its
weight metadata (``num_params``): every entry count, the parameter count, and keys of every block type with their
shapes. A checkpoint in that layout loads through the teacher loader (wrapped and prefixed as trainers save it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# family: (state-dict entries, parameters with 1000 classes (torchvision's num_params), {key: shape})
TORCHVISION = {
    "resnet18": (122, 11_689_512, {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,), "bn1.num_batches_tracked": (),
        "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.1.bn2.bias": (64,), "layer2.0.conv1.weight": (128, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer2.0.downsample.1.running_mean": (128,),
        "layer3.1.conv2.weight": (256, 256, 3, 3), "layer4.0.downsample.0.weight": (512, 256, 1, 1),
        "layer4.1.bn2.weight": (512,), "fc.weight": (1000, 512), "fc.bias": (1000,),
    }),
    "mobilenet_v2": (314, 3_504_872, {
        "features.0.0.weight": (32, 3, 3, 3), "features.0.1.weight": (32,), "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.0.1.running_var": (32,), "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.1.conv.2.weight": (16,), "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.2.conv.1.0.weight": (96, 1, 3, 3), "features.2.conv.2.weight": (24, 96, 1, 1),
        "features.2.conv.3.running_mean": (24,), "features.17.conv.2.weight": (320, 960, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1), "features.18.1.num_batches_tracked": (),
        "classifier.1.weight": (1000, 1280),
    }),
    "mobilenet_v3_small": (244, 2_542_856, {
        "features.0.0.weight": (16, 3, 3, 3), "features.1.block.0.0.weight": (16, 1, 3, 3),
        "features.1.block.1.fc1.weight": (8, 16, 1, 1), "features.1.block.1.fc1.bias": (8,),
        "features.1.block.1.fc2.weight": (16, 8, 1, 1), "features.1.block.2.0.weight": (16, 16, 1, 1),
        "features.2.block.0.0.weight": (72, 16, 1, 1), "features.2.block.1.0.weight": (72, 1, 3, 3),
        "features.2.block.2.0.weight": (24, 72, 1, 1), "features.4.block.1.0.weight": (96, 1, 5, 5),
        "features.4.block.2.fc1.weight": (24, 96, 1, 1), "features.4.block.3.0.weight": (40, 96, 1, 1),
        "features.11.block.2.fc1.weight": (144, 576, 1, 1), "features.12.0.weight": (576, 96, 1, 1),
        "classifier.0.weight": (1024, 576), "classifier.3.weight": (1000, 1024),
    }),
    "efficientnet_b0": (360, 5_288_548, {
        "features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.0.0.weight": (32, 1, 3, 3),
        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1), "features.1.0.block.1.fc2.weight": (32, 8, 1, 1),
        "features.1.0.block.2.0.weight": (16, 32, 1, 1), "features.2.0.block.0.0.weight": (96, 16, 1, 1),
        "features.2.0.block.1.0.weight": (96, 1, 3, 3), "features.2.0.block.2.fc1.weight": (4, 96, 1, 1),
        "features.2.1.block.2.fc1.weight": (6, 144, 1, 1), "features.3.0.block.1.0.weight": (144, 1, 5, 5),
        "features.6.3.block.3.0.weight": (192, 1152, 1, 1), "features.7.0.block.3.0.weight": (320, 1152, 1, 1),
        "features.8.0.weight": (1280, 320, 1, 1), "classifier.1.weight": (1000, 1280),
    }),
}  # fmt: skip


def _build(family: str, **kw):  # noqa: ANN202 - an nn.Module
    from edgecompress.models import ModelSpec, build_model

    kw = {"in_channels": 3, "num_classes": 1000, "input_size": (224, 224), **kw}
    return build_model(ModelSpec(family=family), **kw)


@pytest.mark.parametrize("family", sorted(TORCHVISION))
def test_state_dict_is_torchvisions(family: str) -> None:
    entries, params, keys = TORCHVISION[family]
    state = _build(family).state_dict()
    assert len(state) == entries
    assert sum(v.numel() for k, v in state.items() if "running_" not in k and "num_batches" not in k) == params
    for key, shape in keys.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, (key, tuple(state[key].shape))


_LOADS = [f if f == "mobilenet_v3_small" else pytest.param(f, marks=pytest.mark.slow) for f in sorted(TORCHVISION)]


@pytest.mark.parametrize("family", _LOADS)  # one family in the fast suite: the loader is the same for all
def test_torchvision_layout_checkpoint_loads_as_a_teacher(family: str, tmp_path: Path) -> None:
    """A state dict in torchvision's layout, saved the way trainers wrap it (``module.`` under ``state_dict``)."""
    import torch

    torch.set_num_threads(1)
    from edgecompress.config import TeacherConfig
    from edgecompress.models import ModelSpec, load_teacher

    torch.manual_seed(0)
    source = _build(family, num_classes=10).eval()
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    cfg = TeacherConfig(model=ModelSpec(family=family), checkpoint=path)
    teacher = load_teacher(cfg, in_channels=3, num_classes=10, input_size=(32, 32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), source(x))


def test_families_are_registered_and_check_their_params() -> None:
    from edgecompress.errors import ModelError
    from edgecompress.models import FAMILIES
    from edgecompress.models.families import build_family

    assert {"resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0"} <= set(FAMILIES)
    with pytest.raises(ModelError, match="width_mult"):
        build_family("mobilenet_v2", {"width_mult": 0}, in_channels=3, num_classes=10, input_size=(224, 224))
    with pytest.raises(ModelError, match="dropout"):
        build_family("efficientnet_b0", {"dropout": 1.5}, in_channels=3, num_classes=10, input_size=(224, 224))
    with pytest.raises(ModelError, match="unknown param 'depth'"):
        build_family("resnet18", {"depth": 34}, in_channels=3, num_classes=10, input_size=(224, 224))


def test_width_and_grayscale_variants_run() -> None:
    """``width_mult`` follows torchvision's rounding; one input channel replaces the RGB stem; any input size runs."""
    import torch

    from edgecompress.models.families import build_family

    half = build_family("mobilenet_v2", {"width_mult": 0.5}, in_channels=1, num_classes=10, input_size=(32, 32))
    assert tuple(half.state_dict()["features.0.0.weight"].shape) == (16, 1, 3, 3)
    assert tuple(half.state_dict()["features.18.0.weight"].shape) == (1280, 160, 1, 1)  # last width never shrinks
    v3 = build_family("mobilenet_v3_small", {"width_mult": 0.75}, in_channels=1, num_classes=7, input_size=(32, 32))
    with torch.no_grad():
        assert v3.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
        assert half.eval()(torch.zeros(1, 1, 48, 40)).shape == (1, 10)
