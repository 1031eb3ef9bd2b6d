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


def test_every_family_is_tested() -> None:
    from edgecompress.models.imagenet import IMAGENET_FAMILIES  # built at 224x224 in test_models_imagenet.py

    assert set(FAMILIES) == set(SPECS) | set(IMAGENET_FAMILIES)


@pytest.mark.parametrize("family", sorted(SPECS))
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


def test_resnet_stem_stride_halves_the_resolution():
    def resnet(**params):
        spec = ModelSpec(family="resnet", params={"depth": 8, **params})
        return build_model(spec, in_channels=3, num_classes=10, input_size=(64, 64))

    full, strided = resnet(), resnet(stem_stride=2)
    assert strided(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    # every conv after the stem sees a quarter of the pixels; the stem itself too
    assert count_macs(strided, (3, 64, 64)) == pytest.approx(count_macs(full, (3, 64, 64)) / 4, rel=0.02)
    with pytest.raises(ModelError, match="stem_stride"):
        resnet(stem_stride=3)


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
    known = "cnn, efficientnet_b0, mlp, mobilenet_v2, mobilenet_v3_small, resnet, resnet18"
    with pytest.raises(ModelError, match=f"use one of: {known}, or a factory"):
        build_model(ModelSpec(family="vgg"), in_channels=1, num_classes=10, input_size=(8, 8))
    with pytest.raises(ModelError, match="'depht'") as err:
        build_model(ModelSpec(family="resnet", params={"depht": 20}), in_channels=1, num_classes=10, input_size=(8, 8))
    assert "depth" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelError, match="depth"):
        build_model(ModelSpec(family="resnet", params={"depth": 21}), in_channels=1, num_classes=10, input_size=(8, 8))
    with pytest.raises(ModelError, match="channels"):
        build_model(ModelSpec(family="cnn", params={"channels": []}), in_channels=1, num_classes=10, input_size=(8, 8))


FACTORY_MODULE = textwrap.dedent("""
    from torch import nn

    def tiny(num_classes, in_channels, hidden=4):
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 3), nn.BatchNorm2d(hidden), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, num_classes))

    def rgb_only(num_classes=1000, pretrained=False):  # torchvision-style: no in_channels
        return tiny(num_classes=num_classes, in_channels=3)

    def anything(**kwargs):
        seen.append(sorted(kwargs))
        return tiny(num_classes=kwargs["num_classes"], in_channels=kwargs["in_channels"])

    def not_a_model(num_classes, in_channels):
        return 42

    seen = []
""")


@pytest.fixture
def factory_mod(tmp_path, monkeypatch):
    pkg = tmp_path / "ec_test_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY_MODULE)
    (tmp_path / "ec_test_factory_mod.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ec_test_factory_mod"


def _factory(name, trusted=("ec_test_factory_mod",), in_channels=1, num_classes=2, **params):
    return build_model(
        ModelSpec(factory=name, params=params),
        in_channels=in_channels,
        num_classes=num_classes,
        input_size=(8, 8),
        trusted_modules=trusted,
    )


def test_factory_spec(factory_mod):
    model = _factory("ec_test_factory_mod:tiny", in_channels=3, num_classes=5, hidden=6)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5) and model[0].out_channels == 6
    with pytest.raises(ModelError, match="cannot import"):
        _factory("ec_no_such_module:fn", trusted=("ec_no_such_module",))
    with pytest.raises(ModelError, match="no function"):
        _factory("ec_test_factory_mod:nope")
    with pytest.raises(ModelError, match="rejected its arguments"):
        _factory("ec_test_factory_mod:tiny", bad=1)
    with pytest.raises(ModelError, match="not an nn.Module"):
        _factory("ec_test_factory_mod:not_a_model")


def test_factory_gets_only_the_arguments_its_signature_accepts(factory_mod):
    import ec_test_factory_mod

    model = _factory("ec_test_factory_mod:rgb_only", in_channels=3, num_classes=7)  # no in_channels parameter
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 7)
    _factory("ec_test_factory_mod:anything", in_channels=1, num_classes=4, extra=1)  # **kwargs: offered everything
    assert ec_test_factory_mod.seen[-1] == ["extra", "in_channels", "input_size", "num_classes"]


def test_factory_is_imported_only_from_trusted_modules(factory_mod):
    import sys

    sys.modules.pop("ec_test_pkg.nets", None)
    with pytest.raises(ModelError) as err:
        _factory("ec_test_pkg.nets:tiny", trusted=())
    text = str(err.value)
    assert "'ec_test_pkg.nets' is not trusted" in text and "--trust-factory ec_test_pkg.nets" in text
    assert "trust_factories" in text and "\n" not in text
    assert "ec_test_pkg.nets" not in sys.modules  # refused before any import: its code never ran
    with pytest.raises(ModelError, match="not trusted"):  # a sibling or a prefix that is not a package parent
        _factory("ec_test_pkg.nets:tiny", trusted=("ec_test_pkg.other", "ec_test_pk"))
    assert _factory("ec_test_pkg.nets:tiny", trusted=("ec_test_pkg",))(torch.zeros(1, 1, 8, 8)).shape == (1, 2)
    assert _factory("ec_test_pkg.nets:tiny", trusted=["ec_test_pkg.nets"])(torch.zeros(1, 1, 8, 8)).shape == (1, 2)
    assert _factory("ec_test_pkg.nets:tiny", trusted=["ec_test_pkg.nets:tiny"]).training  # the full name works too


@pytest.mark.parametrize(
    "factory",
    ["torch.hub:load", "os:system", "builtins:exec", "subprocess:run", "importlib:import_module", "sys:exit",
     "shutil:rmtree", "runpy:run_path", "pickle:loads", "code:interact", "ctypes:CDLL", "torch.hub.sub:x"],
)  # fmt: skip
def test_code_running_modules_are_refused_even_when_trusted(factory):
    mod = factory.partition(":")[0]
    with pytest.raises(ModelError, match="never imported as a factory") as err:
        build_model(
            ModelSpec(factory=factory, params={"repo_or_dir": ".", "model": "x", "source": "local"}),
            in_channels=1,
            num_classes=2,
            input_size=(8, 8),
            trusted_modules=(mod, "torch", "os", "builtins"),
        )
    assert "\n" not in str(err.value)


def test_output_selection_wraps_a_tuple_model(factory_mod, tmp_path):
    (tmp_path / "ec_test_tuple_mod.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes):\n"
        "        super().__init__(); self.fc = nn.Linear(64, num_classes)\n"
        "    def forward(self, x):\n"
        "        f = x.flatten(1); return {'logits': self.fc(f), 'features': f}\n"
        "def net(num_classes): return Net(num_classes)\n"
    )
    spec = ModelSpec(factory="ec_test_tuple_mod:net", output="logits")
    model = build_model(spec, in_channels=1, num_classes=3, input_size=(8, 8), trusted_modules=["ec_test_tuple_mod"])
    out = model(torch.zeros(2, 1, 8, 8))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    assert set(model.state_dict()) == {"model.fc.weight", "model.fc.bias"}  # a pruned copy rebuilds from the spec


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
