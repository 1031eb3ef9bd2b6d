"""The demo starts from a shipped, converged teacher made by a committed command (issue 25 item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgecompress._io import sha256_file
from edgecompress.presets.train_teacher import RECIPES, preset_file, recipe

PRESETS = Path(__file__).resolve().parents[1] / "src" / "edgecompress" / "pipeline" / "presets"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_recipe_uses_its_consumers_data_section(name: str) -> None:
    """The teacher trains on exactly the split its config distills from: val, calib and test stay held out."""
    rec = recipe(name)
    for consumer in rec.consumers:
        cfg = yaml.safe_load((PRESETS / f"{consumer}.yaml").read_text())
        data = {k: v for k, v in cfg["data"].items() if k != "split_seed"}
        assert data == rec.data, f"{consumer}.yaml's data section differs from recipe {name!r}"
        assert cfg["data"]["split_seed"] == rec.seed, f"{consumer}.yaml must pin the cuts its teacher was trained on"
        assert cfg["seed"] == rec.seed
        assert cfg["teacher"]["model"] == rec.model and cfg["teacher"]["checkpoint"] == rec.file


def test_the_shipped_teacher_matches_its_record() -> None:
    """The file the demo loads is the one the record describes: SHA-256, the command, the accuracy promised."""
    rec = recipe("fashion-mnist")
    weights = preset_file(rec.file)
    record = json.loads(Path(f"{weights}.json").read_text())
    assert record["sha256"] == sha256_file(weights)
    assert record["command"].startswith("python -m edgecompress.presets.train_teacher fashion-mnist")
    assert record["test_accuracy"] >= rec.min_test_accuracy and record["test_images"] == 10000
    assert record["data"] == rec.data and record["model"] == rec.model


def test_the_shipped_teacher_loads_without_pickle() -> None:
    import torch

    from edgecompress.models import ModelSpec, build_model, load_state

    rec = recipe("fashion-mnist")
    model = build_model(ModelSpec(**rec.model), in_channels=1, num_classes=10, input_size=(28, 28))
    load_state(model, preset_file(rec.file))  # weights_only=True inside
    assert sum(p.numel() for p in model.parameters()) == 1147722
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_an_unknown_recipe_lists_the_known_ones() -> None:
    from edgecompress.errors import ConfigError

    with pytest.raises(ConfigError, match="no teacher recipe named 'cifar'.*fashion-mnist"):
        recipe("cifar")
