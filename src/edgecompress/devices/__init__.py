"""edgecompress.devices: runtimes behind one protocol, device profiles, transports, the agent, the benchmark harness.

Names load lazily (module ``__getattr__``) so ``import edgecompress.devices`` pulls in neither numpy-heavy runtimes
nor pydantic models until used.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Runtime": "edgecompress.devices.agent",
    "RUNTIMES": "edgecompress.devices.agent",
    "measure": "edgecompress.devices.agent",
    "summarize_times": "edgecompress.devices.agent",
    "classification_metrics": "edgecompress.devices.agent",
    "get_runtime": "edgecompress.devices.runtimes",
    "BenchmarkConfig": "edgecompress.devices.config",
    "DeviceProfile": "edgecompress.devices.config",
    "load_profile": "edgecompress.devices.profiles",
    "list_profiles": "edgecompress.devices.profiles",
    "benchmark_artifacts": "edgecompress.devices.bench",
    "LocalTransport": "edgecompress.devices.transports",
    "SSHTransport": "edgecompress.devices.transports",
    "ADBTransport": "edgecompress.devices.transports",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecompress.devices' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
