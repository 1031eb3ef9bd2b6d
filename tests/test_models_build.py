"""Model families, specs, factories, MAC counting."""

from __future__ import annotations

import textwrap

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from edgecompress.errors import ModelError
from edgecompress.models import FAMILIES, ModelSpec, build_model, count_macs, count_params

torch.set_num_threads(1)

SPECS = {
    "cnn": {"channels": [8, 16, 32]},
    "resnet": {"depth": 8, "width": 8},
    "mlp": {"hidden": [32, 16]},
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 8, 8)])
def test_every_family_builds_and_forwards(family, shape):
    spec = ModelSpec(family=family, params=SPECS[family])
    model = build_model(spec, in_channels=shape[0], num_classes=7, input_size=shape[1:])
    model.eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and linears[-1].out_features == 7
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_macs(model, shape) > count_params(model) // 2


def test_default_family_params_build():
    for name in FAMILIES:
        model = build_model(ModelSpec(family=name), in_channels=1, num_classes=10, input_size=(8, 8))
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_resnet_depth_sets_block_count():
    def blocks(depth):
        m = build_model(
            ModelSpec(family="resnet", params={"depth": depth}), in_channels=1, num_classes=10, input_size=(8, 8)
        )
        return sum(1 for x in m.modules() if type(x).__name__ == "BasicBlock")

    assert blocks(8) == 3 and blocks(20) == 9 and blocks(32) == 15


def test_macs_scale_with_width():
    small = build_model(
        ModelSpec(family="cnn", params={"channels": [8, 16]}), in_channels=1, num_classes=10, input_size=(8, 8)
    )
    big = build_model(
        ModelSpec(family="cnn", params={"channels": [16, 32]}), in_channels=1, num_classes=10, input_size=(8, 8)
    )
    # conv MACs: 8*8*9*(1*c1 + c1*c2) (+ small head); doubling widths roughly quadruples the second conv
    expected_small = 8 * 8 * 9 * (1 * 8 + 8 * 16)
    assert abs(count_macs(small, (1, 8, 8)) - expected_small) / expected_small < 0.15
    assert count_macs(big, (1, 8, 8)) > 3 * count_macs(small, (1, 8, 8))


def test_spec_needs_exactly_one_source():
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSpec()
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSpec(family="cnn", factory="a.b:c")
    with pytest.raises(ValidationError, match="package.module:function"):
        ModelSpec(factory="not a factory")


def test_unknown_family_and_bad_params():
    with pytest.raises(ModelError, match="cnn, mlp, resnet"):
        build_model(ModelSpec(family="vgg"), in_channels=1, num_classes=10, input_size=(8, 8))
    with pytest.raises(ModelError, match="'depht'") as err:
        build_model(ModelSpec(family="resnet", params={"depht": 20}), in_channels=1, num_classes=10, input_size=(8, 8))
    assert "depth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="depth"):
        build_model(ModelSpec(family="resnet", params={"depth": 21}), in_channels=1, num_classes=10, input_size=(8, 8))
    with pytest.raises(ModelError, match="channels"):
        build_model(ModelSpec(family="cnn", params={"channels": []}), in_channels=1, num_classes=10, input_size=(8, 8))


def test_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "ec_test_factory_mod.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def tiny(num_classes, in_channels, hidden=4):
            return nn.Sequential(nn.Conv2d(in_channels, hidden, 3), nn.BatchNorm2d(hidden), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))

        def not_a_model(num_classes, in_channels):
            return 42
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(
        ModelSpec(factory="ec_test_factory_mod:tiny", params={"hidden": 6}),
        in_channels=3,
        num_classes=5,
        input_size=(8, 8),
    )
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5) and model[0].out_channels == 6
    with pytest.raises(ModelError, match="cannot import"):
        build_model(ModelSpec(factory="ec_no_such_module:fn"), in_channels=1, num_classes=2, input_size=(8, 8))
    with pytest.raises(ModelError, match="no function"):
        build_model(ModelSpec(factory="ec_test_factory_mod:nope"), in_channels=1, num_classes=2, input_size=(8, 8))
    with pytest.raises(ModelError, match="rejected its arguments"):
        build_model(
            ModelSpec(factory="ec_test_factory_mod:tiny", params={"bad": 1}),
            in_channels=1,
            num_classes=2,
            input_size=(8, 8),
        )
    with pytest.raises(ModelError, match="not an nn.Module"):
        build_model(
            ModelSpec(factory="ec_test_factory_mod:not_a_model"), in_channels=1, num_classes=2, input_size=(8, 8)
        )


def test_subpackages_import_light():
    import subprocess
    import sys

    code = (
        "import sys, edgecompress.models, edgecompress.data, edgecompress.models.config, edgecompress.data.config, "
        "edgecompress.data.preprocess; from edgecompress.models import ModelSpec; from edgecompress.data import "
        "DataConfig, Preprocess; heavy = {'torch', 'numpy', 'sklearn', 'PIL', 'torch_pruning'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()  # noqa: S603
    assert out == "[]"
