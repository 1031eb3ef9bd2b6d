"""Report figures: latency–accuracy–ECE scatter per device, and model size / MACs vs accuracy along the chain.

matplotlib (Agg backend) is imported inside the functions; every PNG is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgecompress._io import atomic_path
from edgecompress.measurements import BenchRow
from edgecompress.report.schema import ModelEntry

log = logging.getLogger(__name__)

_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]
_CHAIN_ORDER = {"teacher": 0, "assistant": 1, "student": 2}


def _pyplot() -> Any:
    from edgecompress._lazy import require

    mpl = require("matplotlib", "report plots")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _log_x(ax: Any, *, engineering: bool = False, span: float | None = None) -> None:
    """Log x axis with readable ticks at 1-2-5 steps (plain numbers or k/M/G), no crowded minor labels.

    ``span`` (largest / smallest x) under 10 adds ticks at every integer mantissa, so a range within one decade
    still has labelled ticks.
    """
    from matplotlib import ticker

    ax.set_xscale("log")
    subs = (1.0, 2.0, 5.0) if span is None or span >= 10 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if engineering:
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    else:
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.margins(x=0.2, y=0.12)


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def latency_accuracy_plot(rows: list[BenchRow], path: Path, *, batch: int | None = None) -> Path:
    """Scatter of p50 latency (log x) against accuracy, coloured and sized by ECE, one marker style per device.

    Args:
        rows: device x artifact benchmark rows.
        path: PNG to write.
        batch: batch size whose p50 to plot; default: each row's largest measured batch (stated in the axis label).
    """
    plt = _pyplot()
    import numpy as np

    points = []
    samples: set[Any] = set()
    b: int | None
    p50: float | None
    for row in rows:
        if batch is not None:
            b, p50 = batch, row.p50_at(batch)
        else:
            got = row.largest_batch_p50()
            b, p50 = got if got else (None, None)
        if not row.ok or b is None or p50 is None or row.accuracy is None or p50 <= 0:
            continue
        points.append((row.device, row.artifact, b, p50, 100 * row.accuracy, row.ece))
        samples.add(row.eval_samples)

    fig, ax = plt.subplots(figsize=(7.5, 5))
    if not points:
        ax.text(0.5, 0.5, "no artifact has both latency and accuracy measured", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    eces = [p[5] for p in points if p[5] is not None]
    vmin, vmax = (min(eces), max(eces)) if eces else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1e-3
    cmap = plt.get_cmap("viridis_r")
    devices = list(dict.fromkeys(p[0] for p in points))
    for i, device in enumerate(devices):
        pts = [p for p in points if p[0] == device]
        xs = np.array([p[3] for p in pts])
        ys = np.array([p[4] for p in pts])
        measured = [p[5] is not None for p in pts]
        colors = [cmap((p[5] - vmin) / (vmax - vmin)) if p[5] is not None else "lightgrey" for p in pts]
        sizes = [40 + 260 * (p[5] - vmin) / (vmax - vmin) if p[5] is not None else 60 for p in pts]
        ax.scatter(
            xs,
            ys,
            c=colors,
            s=sizes,
            marker=_MARKERS[i % len(_MARKERS)],
            edgecolors="black",
            linewidths=0.6,
            label=device,
            zorder=3,
        )
        for p, has_ece in zip(pts, measured, strict=True):
            label = p[1] if batch is not None or len({q[2] for q in points}) == 1 else f"{p[1]} (b{p[2]})"
            if not has_ece:
                label += " [no ECE]"
            ax.annotate(label, (p[3], p[4]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    latencies = [p[3] for p in points]
    _log_x(ax, span=max(latencies) / min(latencies))
    bsizes = sorted({p[2] for p in points})
    which = f"batch {bsizes[0]}" if len(bsizes) == 1 else "largest batch measured per artifact"
    ax.set_xlabel(f"p50 latency (ms, log scale; {which})")
    counts = sorted(n for n in samples if isinstance(n, int))
    on = f", on the device: {counts[0]} test images" if len(counts) == 1 else ", on the device"
    ax.set_ylabel(f"accuracy (%{on})")
    ax.set_title("Latency vs accuracy (colour and size: ECE)")
    ax.grid(True, which="both", alpha=0.3)
    legend = ax.legend(title="device", loc="best", fontsize=8)
    for handle in legend.legend_handles:
        handle.set_color("white")
        handle.set_edgecolor("black")
        handle.set_sizes([60])
    if eces:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(100 * vmin, 100 * vmax))
        fig.colorbar(sm, ax=ax, label="ECE (%)")
    return _save(fig, path)


def chain_size_plot(models: list[ModelEntry], path: Path) -> Path:
    """Accuracy against parameters and against MACs (log x) for the chain members, in chain order."""
    plt = _pyplot()
    chain = [m for m in models if m.role in _CHAIN_ORDER and m.accuracy is not None]
    chain.sort(key=lambda m: _CHAIN_ORDER[m.role])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, attr, xlabel in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per sample")):
        pts = [(getattr(m, attr), 100 * acc, m) for m in chain if getattr(m, attr) and (acc := m.accuracy) is not None]
        if not pts:
            ax.text(0.5, 0.5, f"{xlabel} not measured", ha="center", va="center")
            ax.set_axis_off()
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="grey", alpha=0.6, zorder=1)
        for x, y, m in pts:
            ax.scatter([x], [y], s=70, marker=_MARKERS[_CHAIN_ORDER[m.role]], zorder=3, label=m.role)
            ece = f", ECE {100 * m.ece:.1f}%" if m.ece is not None else ""
            ax.annotate(f"{m.name}{ece}", (x, y), textcoords="offset points", xytext=(6, 5), fontsize=8)
        _log_x(ax, engineering=True)
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=True))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="best")
    fig.suptitle("Distillation chain: size vs accuracy")
    return _save(fig, path)
