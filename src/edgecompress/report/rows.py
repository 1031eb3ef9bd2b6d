"""Reading device x artifact benchmark rows (plain dicts from ``devices.benchmark_artifacts``) tolerantly.

A row is expected to hold ``device``, ``artifact`` (or ``name``), ``format``, ``precision``, ``latency_ms``
(``{batch: {"p50", "p90", "p99", ...}}``, batch keys int or str), ``throughput`` (samples/s, a number or
``{batch: samples/s}``), ``accuracy``, ``ece``, ``energy_mj_per_inference`` (or ``energy_mj``), and ``ok``/``error``
for failed runs. A flat ``p50_ms``/``p90_ms``/``p99_ms`` with ``batch`` is accepted too.
"""

from __future__ import annotations

import math
from typing import Any


def num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, NaN, not a number)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def artifact_name(row: dict[str, Any]) -> str:
    return str(row.get("artifact") or row.get("name") or "?")


def device_name(row: dict[str, Any]) -> str:
    return str(row.get("device") or "local")


def latency_table(row: dict[str, Any]) -> dict[int, dict[str, float | None]]:
    """``{batch: {"p50", "p90", "p99"}}`` in ms, sorted by batch; empty when the row has no latency."""
    out: dict[int, dict[str, float | None]] = {}
    lat = row.get("latency_ms")
    if isinstance(lat, dict):
        for key, stats in lat.items():
            try:
                batch = int(key)
            except (TypeError, ValueError):
                continue
            if hasattr(stats, "model_dump"):
                stats = stats.model_dump()
            if isinstance(stats, dict) and num(stats.get("p50")) is not None:
                out[batch] = {q: num(stats.get(q)) for q in ("p50", "p90", "p99")}
    elif num(row.get("p50_ms")) is not None:
        batch = int(row.get("batch") or 1)
        out[batch] = {q: num(row.get(f"{q}_ms")) for q in ("p50", "p90", "p99")}
    return dict(sorted(out.items()))


def p50_at(row: dict[str, Any], batch: int) -> float | None:
    return latency_table(row).get(batch, {}).get("p50")


def largest_batch_p50(row: dict[str, Any]) -> tuple[int, float] | None:
    """(batch, p50 ms) at the largest batch measured, or None."""
    table = latency_table(row)
    if not table:
        return None
    batch = max(table)
    return batch, table[batch]["p50"]  # type: ignore[return-value]


def throughput_at(row: dict[str, Any], batch: int | None = None) -> float | None:
    """Samples per second at ``batch`` (default: the largest batch measured); a scalar applies to every batch."""
    tp = row.get("throughput")
    if not isinstance(tp, dict):
        return num(tp)
    table = {}
    for key, value in tp.items():
        try:
            table[int(key)] = num(value)
        except (TypeError, ValueError):
            continue
    table = {b: v for b, v in table.items() if v is not None}
    if not table:
        return None
    return table.get(batch) if batch is not None else table[max(table)]


def energy_mj(row: dict[str, Any]) -> float | None:
    """Energy per inference in millijoules, where measured."""
    return num(row.get("energy_mj_per_inference", row.get("energy_mj")))


def failure(row: dict[str, Any]) -> str | None:
    """The error of a failed benchmark run (``ok: false``), else None."""
    if row.get("ok") is False:
        return " ".join(str(row.get("error") or "failed").split())
    return None
