"""First step of ``examples/datafree.yaml``: stand in for a user who holds a trained teacher but not its data.

Trains the teacher that ``datafree.yaml`` names (``family: cnn, channels [16, 32, 64]``) on scikit-learn's bundled
digits with a plain PyTorch loop (a few seconds on a laptop CPU), then writes what such a user would have:

- ``teacher.pt``: the teacher's state dict;
- ``val.npz``: a small labelled set, raw uint8 images ``[N, 8, 8]`` (``x_val``/``y_val`` and ``x_test``/``y_test``),
  disjoint from the images the teacher was trained on, used only to calibrate and to measure.

The teacher is trained on ``(pixels / 255 - MEAN) / STD``: the same numbers are ``data.mean`` / ``data.std`` in
``datafree.yaml``, because a data-free run cannot compute them. Usage, from the repository root::

    python examples/make_teacher.py                       # writes examples/teacher.pt and examples/val.npz
    edgecompress run examples/datafree.yaml --out runs/datafree
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

MEAN, STD = 0.3038, 0.3773  # ≈ the digits' pixel mean / std in [0, 1]; datafree.yaml repeats them as data.mean / std
CHANNELS = [16, 32, 64]  # datafree.yaml's teacher.model.params.channels


def digits_uint8(seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's digits as uint8 images ``[N, 8, 8]`` (0..16 scaled to 0..255), cut 60/15/25 % train/val/test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images / 16.0 * 255.0).astype(np.uint8)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = int(0.25 * len(y)), int(0.15 * len(y))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    cut = {"train": train, "val": val, "test": test}
    return {f"{a}_{name}": arr[idx] for name, idx in cut.items() for a, arr in (("x", x), ("y", y))}


def train_teacher(x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int):  # noqa: ANN201 - returns nn.Module
    """Adam, cross-entropy, mini-batches of 64: the loop a user would write."""
    import torch

    from edgecompress.models import ModelSpec, build_model

    torch.manual_seed(seed)
    model = build_model(ModelSpec(family="cnn", params={"channels": CHANNELS}), in_channels=1, num_classes=10,
                        input_size=(8, 8))  # fmt: skip
    xt = torch.from_numpy(normalize(x))
    yt = torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(64):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def normalize(x: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W]`` -> float32 ``[N, 1, H, W]`` normalized with MEAN / STD."""
    return ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder (default: examples/)")
    ap.add_argument("--epochs", type=int, default=15, help="teacher epochs (default 15)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from edgecompress._io import atomic_path

    t0 = time.perf_counter()
    data = digits_uint8(args.seed)
    teacher = train_teacher(data["x_train"], data["y_train"], epochs=args.epochs, seed=args.seed)
    with torch.inference_mode():
        acc = float((teacher(torch.from_numpy(normalize(data["x_test"]))).argmax(1).numpy() == data["y_test"]).mean())
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "teacher.pt") as tmp:
        torch.save(teacher.state_dict(), tmp)
    with atomic_path(args.out / "val.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: v for k, v in data.items() if not k.endswith("_train")})
    print(
        f"teacher: test accuracy {acc:.3f} after {args.epochs} epochs ({time.perf_counter() - t0:.1f} s); wrote "
        f"{args.out / 'teacher.pt'} and {args.out / 'val.npz'} ({len(data['y_val'])} val, {len(data['y_test'])} test)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
