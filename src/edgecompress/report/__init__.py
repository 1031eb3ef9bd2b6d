"""edgecompress.report: the run report (schema, Markdown/HTML/JSON rendering, plots, recommendations).

Names load lazily so that ``import edgecompress.report`` stays light (no matplotlib).
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
