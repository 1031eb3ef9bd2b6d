"""Train a converged teacher from a named recipe: ``python -m edgecompress.presets.train_teacher NAME``.

A user compresses a model that is already trained; the demo does the same, starting from a teacher made once by this
command and shipped with the package (``pipeline/presets/<file>``). Every recipe is seeded and uses exactly the data
section of the config that will distill it, so the teacher is trained on that config's train split only: its val,
calib and test splits stay held out (temperature scaling and the quality gates judge the teacher on data it never
saw). The command writes the state dict atomically and a record beside it (``<file>.json``: recipe, command, val and
test accuracy, SHA-256, seconds, versions); ``docs/results.md`` quotes that record.

Training resumes after a kill (``train_model`` checkpoints each epoch in ``--workdir``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgecompress._io import atomic_write_json, sha256_file
from edgecompress.errors import ConfigError, EdgeCompressError


@dataclass(frozen=True)
class Recipe:
    """How one teacher is made: the data section (identical to its consumer's), the architecture, the training."""

    description: str
    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    file: str  # file name under edgecompress/pipeline/presets/
    seed: int = 0
    min_test_accuracy: float = 0.0  # the recipe's promise; the command fails loudly when the run falls short
    consumers: tuple[str, ...] = field(default_factory=tuple)  # preset configs whose data section must equal `data`


# The demo's data section (pipeline/presets/fashion_mnist.yaml): the full 60k training images, 10 % val, 512 calib.
FASHION_DATA: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "val_fraction": 0.1,
    "calib_size": 512,
    "augment": {"crop_pad": 2, "hflip": True},
}

# The data-free example's digits (examples/datafree.yaml): 20 % held out for test, the normalization fixed.
DIGITS_DATAFREE: dict[str, Any] = {
    "dataset": "digits",
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "calib_size": 0,
    "mean": [0.3038],
    "std": [0.3773],
    "augment": {"crop_pad": "auto", "hflip": False},
}

RECIPES: dict[str, Recipe] = {
    "fashion-mnist": Recipe(
        description="The demo's teacher: a 6-conv VGG-style CNN (117 M MACs, 1.15 M parameters), 24 epochs of SGD "
        "with crop/flip augmentation on the demo's 53,488-image train split",
        data=FASHION_DATA,
        model={"family": "cnn", "params": {"channels": [64, 64, 128, 128, 256, 256]}},
        train={"epochs": 24, "batch_size": 128, "lr": 0.05, "warmup_epochs": 1, "weight_decay": 5e-4},
        file="fashion_mnist_teacher.pt",
        min_test_accuracy=0.93,
        consumers=("fashion_mnist",),
    ),
    # Data-free distillation (issue 28): teachers small enough that synthesis (a teacher forward and backward per
    # synthesis step) fits a 2-core CPU, trained with the augmentation the synthesis applies (crop with the same
    # zero padding, flip where the data allows it).
    "digits-datafree": Recipe(
        description="The data-free example's teacher (examples/datafree.yaml): a 5-conv BN CNN (1.8 M MACs) on "
        "scikit-learn's 8x8 digits, 60 epochs of SGD (batch 32) with crop (pad 1) augmentation, no flip; fixed "
        "normalization (the example states it: a data-free run cannot compute it)",
        data=DIGITS_DATAFREE,
        model={"family": "cnn", "params": {"channels": [32, 32, 64, 64, 128]}},
        train={"epochs": 60, "batch_size": 32, "lr": 0.05, "warmup_epochs": 1, "weight_decay": 5e-4},
        file="digits_datafree_teacher.pt",
        min_test_accuracy=0.99,
    ),
    "fashion-mnist-datafree": Recipe(
        description="The data-free benchmark's teacher: a 6-conv VGG-style BN CNN (7.5 M MACs, 66 k parameters), "
        "30 epochs of SGD with crop (pad 2) / flip augmentation, the synthesis' augmentation",
        data=FASHION_DATA,
        model={"family": "cnn", "params": {"channels": [16, 16, 32, 32, 64, 64]}},
        train={"epochs": 30, "batch_size": 128, "lr": 0.05, "warmup_epochs": 1, "weight_decay": 5e-4},
        file="fashion_mnist_datafree_teacher.pt",
        min_test_accuracy=0.92,
    ),
}


def preset_file(name: str) -> Path:
    """Where the packaged file ``name`` lives (``edgecompress/pipeline/presets/``)."""
    return Path(str(resources.files("edgecompress.pipeline").joinpath("presets", name)))


def recipe(name: str) -> Recipe:
    """The recipe called ``name``, or :class:`ConfigError` listing the known ones."""
    if name not in RECIPES:
        raise ConfigError(f"no teacher recipe named {name!r}", f"use one of: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def train_teacher(
    name: str | Recipe,
    *,
    out: Path | None = None,
    workdir: Path | None = None,
    epochs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the teacher of recipe ``name``; write its state dict to ``out`` and the record to ``out`` + ``.json``.

    Args:
        name: a key of :data:`RECIPES`, or a :class:`Recipe` (a benchmark's own teacher).
        out: the state-dict file (default: the packaged preset file of the recipe).
        workdir: the training folder (checkpoints; a rerun resumes). Default: ``runs/teacher-<name>``.
        epochs: override the recipe's epochs (a shorter try; the record says so).
        progress: show a progress bar.

    Returns:
        The record written beside the state dict.
    """
    import torch

    from edgecompress.data import load_splits
    from edgecompress.data.config import DataConfig
    from edgecompress.distill import train_model
    from edgecompress.distill.config import LossConfig, TrainConfig
    from edgecompress.distill.evaluate import predict_logits
    from edgecompress.models import ModelSpec, build_model, count_macs, count_params, save_state

    rec = name if isinstance(name, Recipe) else recipe(name)
    label = Path(rec.file).stem if isinstance(name, Recipe) else name
    out = Path(out) if out is not None else preset_file(rec.file)
    workdir = Path(workdir) if workdir is not None else Path("runs") / f"teacher-{label}"
    data_cfg = DataConfig(**rec.data)
    train_cfg = TrainConfig(**{**rec.train, **({"epochs": epochs} if epochs else {})})
    splits = load_splits(data_cfg, seed=rec.seed)
    c, h, w = splits.input_shape
    torch.manual_seed(rec.seed)
    model = build_model(ModelSpec(**rec.model), in_channels=c, num_classes=splits.num_classes, input_size=(h, w))
    started = time.perf_counter()
    result = train_model(
        model,
        splits,
        train_cfg,
        workdir=workdir,
        seed=rec.seed,
        loss=LossConfig(kind="ce"),
        augment_cfg=data_cfg.augment,
        progress=progress,
    )
    model = result.model.eval()
    test_acc = None
    if splits.test is not None:
        logits = predict_logits(model, splits.test.x)
        test_acc = float((logits.argmax(1).numpy() == splits.test.y).mean())
    save_state(model, out)
    record = {
        "recipe": label,
        "description": rec.description,
        "command": _command(),
        "data": rec.data,
        "model": rec.model,
        "train": train_cfg.model_dump(mode="json"),
        "seed": rec.seed,
        "val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "test_accuracy": test_acc,
        "test_images": 0 if splits.test is None else len(splits.test.y),
        "params": int(count_params(model)),
        "macs": int(count_macs(model, splits.input_shape)),
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "train_seconds": round(time.perf_counter() - started, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "history": result.history,
    }
    atomic_write_json(out.with_suffix(out.suffix + ".json"), record)
    return record


def _command() -> str:
    """The command line that made this record (``python -m MODULE ARGS`` when run as a module)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([head, *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecompress.presets.train_teacher", description=__doc__)
    parser.add_argument("name", choices=sorted(RECIPES), help="the recipe")
    parser.add_argument("--out", type=Path, help="state-dict file (default: the packaged preset file)")
    parser.add_argument("--workdir", type=Path, help="training folder; a rerun resumes (default runs/teacher-NAME)")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs (a shorter try)")
    args = parser.parse_args(argv)
    try:
        record = train_teacher(args.name, out=args.out, workdir=args.workdir, epochs=args.epochs)
    except EdgeCompressError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    floor = recipe(args.name).min_test_accuracy
    print(json.dumps({k: record[k] for k in ("recipe", "val_accuracy", "test_accuracy", "sha256", "train_seconds")}))
    if record["test_accuracy"] is not None and record["test_accuracy"] < floor and not args.epochs:
        print(f"error: test accuracy {record['test_accuracy']:.4f} is below the recipe's {floor:.2f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
