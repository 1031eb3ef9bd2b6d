"""edgecompress.devices: runtimes behind one protocol, device profiles, transports, the agent, the benchmark harness.

Names load lazily (module ``__getattr__``) so ``import edgecompress.devices`` pulls in neither numpy-heavy runtimes
nor pydantic models until used.
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "Runtime": "edgecompress.devices.agent",
    "RUNTIMES": "edgecompress.devices.agent",
    "measure": "edgecompress.devices.agent",
    "summarize_times": "edgecompress.devices.agent",
    "classification_metrics": "edgecompress.devices.agent",
    "get_runtime": "edgecompress.devices.host_runtimes",
    "BenchmarkConfig": "edgecompress.devices.config",
    "DeviceProfile": "edgecompress.devices.config",
    "load_profile": "edgecompress.devices.profiles",
    "list_profiles": "edgecompress.devices.profiles",
    "benchmark_artifacts": "edgecompress.devices.bench",
    "LocalTransport": "edgecompress.devices.transports",
    "SSHTransport": "edgecompress.devices.transports",
    "ADBTransport": "edgecompress.devices.transports",
    "Transport": "edgecompress.devices.transports",
    "make_transport": "edgecompress.devices.transports",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
