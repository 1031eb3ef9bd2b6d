"""Figures of a data-free run: a grid of synthesized samples (one row per class) and the accuracy-vs-rounds curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress._io import atomic_path
from edgecompress._lazy import require


def sample_grid(
    images: Any,
    labels: Any,
    num_classes: int,
    path: str | Path,
    *,
    per_class: int = 8,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write a grid (rows = classes, ``per_class`` columns) of NCHW ``images`` de-normalized as x·std + mean.

    Args:
        images: [N, C, H, W] array or tensor in the teacher's normalized input space (C = 1 or 3).
        labels: [N] class indices.
        num_classes: number of rows.
        path: the PNG to write (atomically).
        per_class: columns; classes with fewer samples leave blank cells.
        mean, std: the normalization to undo (default 0 and 1).
        class_names: row labels (default the class indices).

    Returns:
        ``path``.
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    x = np.asarray(images, dtype=np.float32)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if x.ndim != 4 or x.shape[0] != y.shape[0] or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1|3, H, W] with one label each; got {x.shape} and {y.shape[0]} labels")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes")
    c = x.shape[1]
    m = np.asarray([0.0] * c if mean is None else mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray([1.0] * c if std is None else std, dtype=np.float32).reshape(1, -1, 1, 1)
    x = np.clip(x * s + m, 0.0, 1.0)
    mpl = require("matplotlib", "sample grids")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    names = list(class_names) if class_names is not None else [str(k) for k in range(num_classes)]
    fig, axes = plt.subplots(num_classes, per_class, figsize=(per_class * 0.9 + 1.0, num_classes * 0.9), squeeze=False)
    try:
        for k in range(num_classes):
            idx = np.flatnonzero(y == k)[:per_class]
            for j in range(per_class):
                ax = axes[k, j]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if j < len(idx):
                    img = x[idx[j]]
                    if c == 1:
                        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
                    else:
                        ax.imshow(np.transpose(img, (1, 2, 0)))
            axes[k, 0].set_ylabel(names[k], rotation=0, ha="right", va="center", fontsize=8)
        fig.tight_layout(pad=0.2)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)


def accuracy_curve(
    curves: dict[str, Sequence[Sequence[float]]],
    path: str | Path,
    *,
    teacher: float | None = None,
    title: str = "Student accuracy against synthesis rounds",
) -> Path:
    """Write a PNG of accuracy (percent) against rounds, one line per run, with the teacher's as a dashed line.

    Args:
        curves: run label → [(rounds done, accuracy as a fraction), ...].
        path: the PNG to write (atomically).
        teacher: the teacher's accuracy on the same set (a fraction), drawn for reference.
        title: the figure's title.

    Returns:
        ``path``.
    """
    mpl = require("matplotlib", "accuracy curves")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    try:
        for label, pts in curves.items():
            if len(pts):
                xs, ys = zip(*[(float(p[0]), 100.0 * float(p[1])) for p in pts], strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=label)
        if teacher is not None:
            ax.axhline(100.0 * teacher, linestyle="--", color="gray", label=f"teacher {100 * teacher:.2f} %")
        ax.set_xlabel("synthesis rounds")
        ax.set_ylabel("student accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(path)
