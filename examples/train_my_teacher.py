"""First step of ``examples/bring_your_own.yaml``: stand in for a user who trained their own network elsewhere.

Trains ``my_models.PlainCNN`` on scikit-learn's digits with a plain PyTorch loop and saves it the way the PyTorch
tutorial does — ``{"epoch", "model_state_dict", "optimizer_state_dict"}`` — with pixels scaled to [0, 1] and no
mean/std normalization (so ``bring_your_own.yaml`` states ``data.mean: [0.0]`` and ``data.std: [1.0]``). Usage, from
the repository root::

    python examples/train_my_teacher.py                  # writes examples/my_teacher.pt, prints its accuracy
    PYTHONPATH=examples edgecompress run examples/bring_your_own.yaml --out runs/byo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    import torch
    from sklearn.datasets import load_digits

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # my_models, beside this script
    from my_models import plain_cnn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for my_teacher.pt")
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.float32) / 255.0)[:, None]  # 8-bit, then /255
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, held = order[:1400], order[1400:]
    model = plain_cnn(num_classes=10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(args.epochs):
        model.train()
        for idx in train[torch.randperm(len(train))].split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x[held]).argmax(1) == y[held]).float().mean())
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "my_teacher.pt"
    torch.save({"epoch": args.epochs, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict()},
               path)  # fmt: skip
    print(f"wrote {path}: held-out accuracy {100 * acc:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
