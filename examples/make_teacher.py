"""First step of ``examples/datafree.yaml``: stand in for a user who holds a trained teacher but not its data.

Trains the teacher of the package's recipe ``digits-datafree`` (the same run as
``python -m edgecompress.presets.train_teacher digits-datafree``: a 3-conv BN CNN on scikit-learn's 8x8 digits, seeded,
trained with the crop augmentation the synthesis applies; >= 99 % on the held-out digits), then writes what such a
user would have:

- ``teacher.pt``: the teacher's state dict (and ``teacher.pt.json``: the recipe's record, accuracy and SHA-256);
- ``val.npz``: a small labelled set, raw uint8 images ``[N, 8, 8]`` (``x_val``/``y_val`` and ``x_test``/``y_test``):
  the recipe's held-out val and test splits, never trained on, used only to calibrate and to measure.

The teacher is trained on ``(pixels / 255 - MEAN) / STD``: the same numbers are ``data.mean`` / ``data.std`` in
``datafree.yaml``, because a data-free run cannot compute them. Usage, from the repository root::

    python examples/make_teacher.py                       # writes examples/teacher.pt and examples/val.npz (~1 min)
    edgecompress run examples/datafree.yaml --out runs/datafree
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgecompress.presets.train_teacher import RECIPES

RECIPE = "digits-datafree"
MEAN, STD = RECIPES[RECIPE].data["mean"][0], RECIPES[RECIPE].data["std"][0]  # datafree.yaml repeats them
CHANNELS = RECIPES[RECIPE].model["params"]["channels"]  # datafree.yaml's teacher.model.params.channels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder (default: examples/)")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (a shorter try)")
    args = ap.parse_args(argv)

    from edgecompress._io import atomic_path
    from edgecompress.data import load_splits
    from edgecompress.data.config import DataConfig
    from edgecompress.presets.train_teacher import train_teacher

    rec = RECIPES[RECIPE]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="teacher-") as work:
        record = train_teacher(RECIPE, out=args.out / "teacher.pt", workdir=Path(work), epochs=args.epochs,
                               progress=False)  # fmt: skip
    splits = load_splits(DataConfig(**rec.data), seed=rec.seed)
    assert splits.val is not None and splits.test is not None
    arrays = {"x_val": splits.val.raw[:, 0], "y_val": splits.val.y, "x_test": splits.test.raw[:, 0],
              "y_test": splits.test.y}  # fmt: skip
    assert all(a.dtype in (np.uint8, np.int64) for a in arrays.values())
    with atomic_path(args.out / "val.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    print(
        f"teacher: test accuracy {record['test_accuracy']:.4f} ({record['train_seconds']:.0f} s); wrote "
        f"{args.out / 'teacher.pt'} and {args.out / 'val.npz'} ({len(splits.val.y)} val, {len(splits.test.y)} test)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
