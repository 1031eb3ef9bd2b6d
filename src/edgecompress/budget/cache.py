"""The cross-run latency cache: one JSON file per (teacher architecture, candidate widths, format, device, batch).

A second run on the same device measures nothing: every probe is read back from here. The key holds what the
latency depends on — the architecture (teacher hash + the candidate's widths), the artifact (format, precision and
the export settings that shape the graph), where it runs (the device profile; for the local device also the host's
name, machine and runtime versions) and the batch size. Files are written atomically; an unreadable one is ignored.
"""

from __future__ import annotations

import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from edgecompress._io import atomic_write_json, sha256_json
from edgecompress.budget.records import Probe

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_RUNTIME_PACKAGES = ("onnxruntime", "openvino", "executorch", "tensorrt")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_identity(profile: dict[str, Any], threads: int | None) -> dict[str, Any]:
    """What a measurement on this device depends on: the profile (not its free text), threads, and for the local
    device the host and its runtime versions (cheap: package metadata, no import)."""
    ident = {k: v for k, v in profile.items() if k not in ("description", "benchmark_binary_local")}
    ident["threads"] = threads
    if profile.get("transport") == "local":
        ident["host"] = {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor()}
        ident["runtimes"] = {p: _version(p) for p in _RUNTIME_PACKAGES}
    return ident


class LatencyCache:
    """Probes on disk under ``root``, addressed by :meth:`key`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    @staticmethod
    def key(*, arch: str, widths: list[int], pair: str, device: dict[str, Any], batch: int, graph: dict) -> str:
        """The file name (a hash) of one probe."""
        return sha256_json(
            {
                "v": CACHE_VERSION,
                "arch": arch,
                "widths": widths,
                "pair": pair,
                "device": device,
                "batch": batch,
                "graph": graph,
            }  # fmt: skip
        )[:24]

    def get(self, key: str) -> Probe | None:
        path = self.root / f"{key}.json"
        if not path.is_file():
            return None
        try:
            return Probe.model_validate(json.loads(path.read_text())).model_copy(update={"cached": True})
        except (OSError, ValueError) as exc:
            log.warning("latency cache entry %s is unreadable (%s); measuring again", path, type(exc).__name__)
            return None

    def put(self, key: str, probe: Probe) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / f"{key}.json", probe.model_copy(update={"cached": False}).model_dump(mode="json"))
