"""Reliability diagrams with confidence histograms (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgecompress._io import atomic_path
from edgecompress._lazy import require
from edgecompress.calibration.metrics import reliability_bins
from edgecompress.errors import CalibrationError

log = logging.getLogger(__name__)

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def reliability_diagram(
    entries: list[tuple[str, np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Draw one column per model: reliability bars (top) and the confidence histogram (bottom).

    Top: accuracy per equal-width confidence bin, the gap to the diagonal shaded, ECE (Guo et al., ICML 2017) in the
    panel title. Bottom: share of samples per confidence bin, with the overall accuracy and mean confidence as lines
    (confidence right of accuracy means over-confidence).

    Args:
        entries: ``(name, logits_or_probs [N, K], labels [N])`` per column, e.g. ``("student before TS", z, y)``;
            rows that lie in [0, 1] and sum to 1 are read as probabilities, anything else as logits.
        path: Output file (``.png``, ``.svg`` or ``.pdf``), written atomically.
        n_bins: Number of equal-width bins.
        title: Figure title.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        CalibrationError: No entries, a malformed entry, or an unsupported file suffix.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CalibrationError(f"cannot write a reliability diagram to '{path.name}'", "use a .png, .svg or .pdf path")
    if not entries:
        raise CalibrationError("reliability_diagram got no entries", "pass [(name, logits, labels), ...]")
    stats = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise CalibrationError(f"entry {i} is not (name, logits_or_probs, labels)", "pass 3-tuples")
        name, scores, labels = entry
        stats.append((str(name), reliability_bins(scores, labels, n_bins)))

    require("matplotlib", "reliability diagrams")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = len(stats)
    fig = Figure(figsize=(3.6 * cols, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, cols, squeeze=False, gridspec_kw={"height_ratios": [3, 2]}, sharex=True)
    for c, (name, s) in enumerate(stats):
        top, bottom = axes[0, c], axes[1, c]
        edges = s["edges"]
        width = np.diff(edges)
        centers = edges[:-1] + width / 2
        filled = s["counts"] > 0
        acc = np.where(filled, s["accuracy"], 0.0)
        conf = np.where(filled, s["confidence"], centers)
        top.bar(
            edges[:-1], acc, width=width, align="edge", color="#3b75af", edgecolor="#1f3f5f", lw=0.6, label="accuracy"
        )
        gap_lo = np.minimum(acc, conf)
        gap_hi = np.maximum(acc, conf)
        top.bar(
            edges[:-1][filled],
            (gap_hi - gap_lo)[filled],
            bottom=gap_lo[filled],
            width=width[filled],
            align="edge",
            color="#d62728",
            alpha=0.35,
            edgecolor="#d62728",
            hatch="//",
            lw=0.6,
            label="gap",
        )
        top.plot([0, 1], [0, 1], ls="--", color="0.3", lw=1.0, label="perfect")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_aspect("equal", adjustable="box")
        top.set_title(f"{name}\nECE {100 * s['ece']:.2f}%  MCE {100 * s['mce']:.1f}%", fontsize=10)
        if c == 0:
            top.set_ylabel("accuracy")
            top.legend(loc="upper left", fontsize=8, frameon=False)
        share = s["counts"] / max(int(s["counts"].sum()), 1)
        bottom.bar(edges[:-1], share, width=width, align="edge", color="0.6", edgecolor="0.3", lw=0.6)
        bottom.axvline(
            s["accuracy_mean"], color="#3b75af", lw=1.6, ls="-", label=f"accuracy {100 * s['accuracy_mean']:.1f}%"
        )
        bottom.axvline(
            s["confidence_mean"], color="#d62728", lw=1.6, ls="--", label=f"avg conf {100 * s['confidence_mean']:.1f}%"
        )
        bottom.set_xlim(0, 1)
        bottom.set_ylim(0, max(float(share.max()) * 1.15, 0.05))
        bottom.set_xlabel("confidence")
        bottom.legend(loc="upper left", fontsize=8, frameon=False)
        if c == 0:
            bottom.set_ylabel("share of samples")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    log.info("wrote reliability diagram %s", path)
    return path
