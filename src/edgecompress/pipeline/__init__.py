"""Stage protocol, content-addressed run directory, resume, and the orchestration of all stages."""

from __future__ import annotations

from typing import Any

__all__ = ["bench_run", "preset_path", "run_pipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgecompress.pipeline import run

        return getattr(run, name)
    raise AttributeError(name)
