"""Package-side access to the agent's runtimes, with agent errors mapped to :mod:`edgecompress.errors`.

The runtimes themselves live in :mod:`edgecompress.devices.agent` (self-contained, copied to devices); this module
only translates their exceptions so library users see ``MissingExtraError`` / ``DeviceError`` with a fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.devices import agent
from edgecompress.devices.agent import RUNTIMES, Runtime, classification_metrics, evaluate, measure, summarize_times
from edgecompress.errors import DeviceError, MissingExtraError

# runtime name -> (pip package, edgecompress extra)
RUNTIME_EXTRAS: dict[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime", "all"),
    "openvino": ("openvino", "all"),
    "tensorrt": ("tensorrt", "tensorrt"),
    "executorch": ("executorch", "mobile"),
}

__all__ = [
    "RUNTIMES",
    "RUNTIME_EXTRAS",
    "Runtime",
    "classification_metrics",
    "evaluate",
    "get_runtime",
    "measure",
    "summarize_times",
]


def _translate(exc: agent.AgentError, name: str) -> Exception:
    if isinstance(exc, agent.RuntimeMissingError):
        package, extra = RUNTIME_EXTRAS.get(name, (exc.package, "all"))
        return MissingExtraError(package, extra, f"the '{name}' runtime")
    return DeviceError(exc.problem, exc.fix)


class PackageRuntime:
    """A :class:`Runtime` whose errors are ``edgecompress.errors`` types; delegates everything else."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.name: str = inner.name

    def load(self, path: Path, *, threads: int | None = None) -> None:
        try:
            self._inner.load(Path(path), threads=threads)
        except agent.AgentError as exc:
            raise _translate(exc, self.name) from exc

    def run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._inner.run(x)
        except agent.AgentError as exc:
            raise _translate(exc, self.name) from exc

    def info(self) -> dict:
        return self._inner.info()

    def __getattr__(self, item: str) -> Any:  # input_shape() and runtime-specific extras
        return getattr(self._inner, item)


def get_runtime(name: str, **options: Any) -> Runtime:
    """Return a runtime by name (``onnxruntime``, ``openvino``, ``tensorrt``, ``executorch``).

    Args:
        name: key of :data:`RUNTIMES`.
        **options: constructor options, e.g. ``providers=["cuda"]`` (onnxruntime), ``precision="f32"`` (openvino),
            ``recipe=path`` (tensorrt).

    Raises:
        MissingExtraError: the runtime's package is not installed (names the extra to install).
        DeviceError: unknown runtime name or invalid option.
    """
    try:
        return PackageRuntime(agent.get_runtime(name, **options))
    except agent.AgentError as exc:
        raise _translate(exc, name) from exc
    except TypeError as exc:
        raise DeviceError(f"runtime '{name}' does not take options {sorted(options)}: {exc}", "drop them") from exc
