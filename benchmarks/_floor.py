"""The batch-1 floor of ``benchmarks.roofline``: each artifact beside an identity model of the same input.

An identity ONNX model costs a runtime one call's binding, bookkeeping and output copy and no compute: the per-call
floor. A model's floor is that plus its MACs at the runtime's measured peak (same precision class); both ratios are
per round (the artifact, its identity and its peak timed in the same round), median over rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._common import Entry, fmt, identity_model, load_everywhere, markdown_table, median_or_none, save_model

GOAL_FLOOR_RATIO = 2.0


def identity_entries(folder: Path, sample_shape: tuple[int, ...], *, threads: int | None) -> list[Entry]:
    """An identity model of one input (``[N, *sample_shape]``) loaded in every CPU runtime that takes it."""
    path = save_model(identity_model(sample_shape), folder / "identity.onnx")
    return [
        Entry(f"identity-{rt_name}", rt, "fp32", 0, {"runtime": rt_name, "file": str(path)})
        for rt_name, rt in load_everywhere(path, threads=threads, what="identity")
    ]


def floor_row(
    art: Entry, art_rounds: list[dict], id_rounds: list[dict], peak: Entry | None, peak_rounds: list[dict]
) -> dict[str, Any]:
    """Batch-1 p50 against the runtime's per-call floor (identity) and against that floor plus the MACs at peak.

    Ratios are per round (the artifact, its identity and its peak timed in the same round), median over rounds.
    """
    per_call, with_compute, compute_ms = [], [], []
    for i, a in enumerate(art_rounds):
        ident = id_rounds[i]["p50"] if i < len(id_rounds) else None
        if not ident:
            continue
        per_call.append(a["p50"] / ident)
        if peak is not None and i < len(peak_rounds) and art.macs:
            c = art.macs / (peak.macs / (peak_rounds[i]["p50"] / 1e3)) * 1e3  # ms at the peak rate
            compute_ms.append(c)
            with_compute.append(a["p50"] / (ident + c))
    return {
        "name": art.name,
        "runtime": art.meta["runtime"],
        "precision": art.precision,
        "p50_ms": median_or_none([r["p50"] for r in art_rounds]),
        "identity_ms": median_or_none([r["p50"] for r in id_rounds]),
        "compute_ms": median_or_none(compute_ms),
        "over_per_call": median_or_none(per_call),
        "over_floor": median_or_none(with_compute),
    }


def floor_goal(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per runtime: its best artifact's p50 over its floor (identity + compute); met when each is <= 2x."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["over_floor"] is not None and (
            r["runtime"] not in best or r["over_floor"] < best[r["runtime"]]["over_floor"]
        ):
            best[r["runtime"]] = r
    return {
        "met": bool(best) and all(r["over_floor"] <= GOAL_FLOOR_RATIO for r in best.values()),
        "best": {rt: {"name": r["name"], "over_floor": r["over_floor"]} for rt, r in best.items()},
    }


def floor_rows(
    arts: Sequence[Entry],
    ids: Sequence[Entry],
    results: Mapping[str, list[dict]],
    peaks_of: Mapping[str, tuple[Entry, list[dict]]],
) -> list[dict[str, Any]]:
    """:func:`floor_row` of every artifact whose runtime has an identity entry (``results``: rounds by entry name,
    ``peaks_of``: artifact name -> its peak entry and that peak's rounds)."""
    by_runtime = {e.meta["runtime"]: e for e in ids}
    rows = []
    for e in arts:
        ident = by_runtime.get(e.meta["runtime"])
        if ident is None:
            continue
        pk, pk_rounds = peaks_of.get(e.name, (None, []))
        rows.append(floor_row(e, results[e.name], results[ident.name], pk, pk_rounds))
    return rows


def render_floor(report: dict[str, Any]) -> list[str]:
    """The batch-1 table and its goal line (nothing when the report has no floors)."""
    if not report.get("floors"):
        return []
    lines = ["", "Batch 1 against the runtime's own floor (identity model of the same input, same rounds):", ""]
    lines.append(
        markdown_table(
            [
                "artifact",
                "runtime",
                "p50 ms b1",
                "identity p50 ms",
                "MACs at peak ms",
                "p50 / identity",
                "p50 / (identity + MACs at peak)",
            ],
            [
                [
                    r["name"],
                    r["runtime"],
                    fmt(r["p50_ms"], ".3f"),
                    fmt(r["identity_ms"], ".4f"),
                    fmt(r["compute_ms"], ".3f"),
                    fmt(r["over_per_call"], ".1f", suffix="×"),
                    fmt(r["over_floor"], ".2f", suffix="×"),
                ]
                for r in report["floors"]
            ],
        )
    )
    fg = report["floor_goal"]
    lines += [
        "",
        f"Goal (batch-1 p50 of each runtime's best artifact within {GOAL_FLOOR_RATIO:g}x its floor, identity + "
        "MACs at peak): "
        + ("MET" if fg["met"] else "NOT MET")
        + " — "
        + ", ".join(f"{rt}: {b['name']} {b['over_floor']:.2f}x" for rt, b in fg["best"].items()),
    ]
    return lines
