"""edgecompress.budget: compress to a budget — candidate students measured on the target before training.

Light at import: torch, the exporters and the runtimes load only when a public name is used.
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

_EXPORTS = {
    "TargetConfig": "edgecompress.budget.config",
    "Candidate": "edgecompress.budget.records",
    "Probe": "edgecompress.budget.records",
    "LatencyFit": "edgecompress.budget.records",
    "Choice": "edgecompress.budget.records",
    "Verdict": "edgecompress.budget.records",
    "LatencyCache": "edgecompress.budget.cache",
    "cut_candidates": "edgecompress.budget.candidates",
    "architecture_hash": "edgecompress.budget.candidates",
    "measure_candidates": "edgecompress.budget.measure",
    "ProbeSetup": "edgecompress.budget.measure",
    "fit_latency": "edgecompress.budget.choose",
    "choose": "edgecompress.budget.choose",
    "BudgetError": "edgecompress.budget.choose",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
