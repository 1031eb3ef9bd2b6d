"""Stage type, content-addressed run directory, resume, and the orchestration of all stages."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "bench_run": "edgecompress.pipeline.run",
    "preset_path": "edgecompress.pipeline.run",
    "run_pipeline": "edgecompress.pipeline.run",
    "STAGE_NAMES": "edgecompress.pipeline.run",
    "load_run": "edgecompress.pipeline.loaded",
    "LoadedRun": "edgecompress.pipeline.loaded",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
