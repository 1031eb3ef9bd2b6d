"""Pruning to a MAC budget with torch-pruning, and state-dict save/load with weights_only and resizing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgecompress.errors import CheckpointError, ModelError
from edgecompress.models import ModelSpec, build_model, count_macs, load_state, prune_to_ratio, save_state

torch.set_num_threads(1)

CNN = ModelSpec(family="cnn", params={"channels": [16, 32, 64]})
RESNET = ModelSpec(family="resnet", params={"depth": 8, "width": 16})


def _build(spec, shape=(1, 8, 8), seed=0):
    torch.manual_seed(seed)
    return build_model(spec, in_channels=shape[0], num_classes=10, input_size=shape[1:])


@pytest.mark.parametrize("spec", [CNN, RESNET], ids=["cnn", "resnet"])
@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_prune_hits_mac_ratio(spec, ratio):
    shape = (1, 8, 8)
    model = _build(spec, shape)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = count_macs(model, shape)
    pruned = prune_to_ratio(model, shape, ratio)
    macs = count_macs(pruned, shape)
    assert macs <= ratio * base
    assert macs >= 0.75 * ratio * base  # close to the budget, not collapsed
    pruned.eval()
    assert pruned(torch.randn(4, *shape)).shape == (4, 10)
    # the original is untouched (weights and BN statistics)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count_macs(model, shape) == base


def test_prune_keeps_classes_and_bn_stats_are_copied():
    model = _build(CNN)
    model.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        model(torch.randn(32, 1, 8, 8) * 3 + 1)
    model.eval()
    pruned = prune_to_ratio(model, (1, 8, 8), 0.5)
    assert not pruned.training
    assert [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1].out_features == 10
    bn0, pbn0 = model[0][1], pruned[0][1]
    assert pbn0.num_features < bn0.num_features
    # kept channels carry the teacher's statistics: each pruned running_mean value is one of the original ones
    assert all(bool((bn0.running_mean == v).any()) for v in pbn0.running_mean)


def test_prune_round_to_and_errors():
    model = _build(CNN)
    pruned = prune_to_ratio(model, (1, 8, 8), 0.5, round_to=4)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths)
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ModelError, match="mac_ratio"):
            prune_to_ratio(model, (1, 8, 8), bad)
    with pytest.raises(ModelError, match="cannot reach"):
        prune_to_ratio(model, (1, 8, 8), 0.0001)
    with pytest.raises(ModelError, match="importance"):
        prune_to_ratio(model, (1, 8, 8), 0.5, importance="taylor")
    same = prune_to_ratio(model, (1, 8, 8), 1.0)
    assert same is not model and count_macs(same, (1, 8, 8)) == count_macs(model, (1, 8, 8))


def test_pruned_save_load_roundtrip_via_family_spec(tmp_path):
    shape = (1, 8, 8)
    for spec in (CNN, RESNET):
        pruned = prune_to_ratio(_build(spec, shape), shape, 0.3).eval()
        path = tmp_path / f"{spec.family}.pt"
        save_state(pruned, path)
        assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file
        fresh = _build(spec, shape, seed=123)  # default (unpruned) widths, other random weights
        loaded = load_state(fresh, path).eval()
        assert count_macs(loaded, shape) == count_macs(pruned, shape)
        x = torch.randn(5, *shape)
        torch.testing.assert_close(loaded(x), pruned(x))


def test_load_wrapped_and_dataparallel_checkpoints(tmp_path):
    model = _build(CNN).eval()
    x = torch.randn(2, 1, 8, 8)
    for i, obj in enumerate(
        [
            {"state_dict": model.state_dict()},
            {"model": model.state_dict(), "epoch": 3},
            {f"module.{k}": v for k, v in model.state_dict().items()},
        ]
    ):
        path = tmp_path / f"w{i}.pt"
        torch.save(obj, path)
        torch.testing.assert_close(load_state(_build(CNN, seed=9), path).eval()(x), model(x))


class Evil:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _build(CNN).state_dict(), "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only") as err:
        load_state(_build(CNN), path)
    assert "\n" not in str(err.value)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state(_build(CNN), tmp_path / "none.pt")
    good = tmp_path / "good.pt"
    save_state(_build(CNN), good)
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state(_build(CNN), trunc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or not"):
        load_state(_build(CNN), junk)
    with pytest.raises(CheckpointError, match="does not match the model architecture") as err:
        load_state(_build(RESNET), good)
    assert "missing" in str(err.value) and "unexpected" in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), other)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state(_build(CNN), other)


def test_load_into_non_resizable_layer_mismatch(tmp_path):
    class WithEmbedding(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.emb = nn.Embedding(n, 4)
            self.fc = nn.Linear(4, 2)

    path = tmp_path / "emb.pt"
    save_state(WithEmbedding(5), path)
    with pytest.raises(CheckpointError, match="cannot be resized"):
        load_state(WithEmbedding(7), path)


def test_state_hash_follows_weights_dtypes_and_names() -> None:
    import torch

    from edgecompress.models.checkpoint import state_hash

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    b = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    b.load_state_dict(a.state_dict())
    assert state_hash(a) == state_hash(b)
    with torch.no_grad():
        b[0].weight[0, 0, 0, 0] += 0.5
    assert state_hash(a) != state_hash(b)
    assert state_hash(a.to(torch.bfloat16)) != state_hash(b.to(torch.bfloat16))  # bf16 has no numpy dtype: bytes
