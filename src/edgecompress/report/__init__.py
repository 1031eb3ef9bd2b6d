"""edgecompress.report: the run report (schema, Markdown/HTML/JSON rendering, plots, recommendations).

Names load lazily so that ``import edgecompress.report`` stays light (no matplotlib).
"""

from __future__ import annotations

import importlib
from typing import Any

# imported eagerly (stdlib only) so the function, not the submodule of the same name, is ``report.recommend``
from edgecompress.report.recommend import recommend as recommend

_EXPORTS = {
    "LatencyStats": "edgecompress.report.schema",
    "ModelEntry": "edgecompress.report.schema",
    "Recommendation": "edgecompress.report.schema",
    "Report": "edgecompress.report.schema",
    "StageEntry": "edgecompress.report.schema",
    "latency_accuracy_plot": "edgecompress.report.plots",
    "chain_size_plot": "edgecompress.report.plots",
    "write_report": "edgecompress.report.render",
}
__all__ = sorted([*_EXPORTS, "recommend"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'edgecompress.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
