"""Transports: how the agent reaches a device (this machine, SSH, adb, or one of your own) and how its JSON comes back.

One file per transport; each registers itself in :data:`edgecompress._registry.TRANSPORTS` and implements
:class:`~edgecompress.devices.transports.base.Transport`. A device profile names its transport; :func:`make_transport`
looks it up.
"""

from __future__ import annotations

from typing import Any

from edgecompress._lazy import lazy_exports
from edgecompress._registry import TRANSPORTS
from edgecompress.devices.config import DeviceProfile
from edgecompress.devices.transports.base import (
    AGENT_PATH,
    LOGITS_NAME,
    RESULT_NAME,
    AgentJob,
    Outcome,
    TransientTransportError,
    Transport,
    agent_argv,
    local_command,
    with_retries,
)

# the built-in transports load on first use (the registry imports them in its order: local, ssh, adb)
_LAZY = {"LocalTransport": "local", "SSHTransport": "ssh", "ADBTransport": "adb", "parse_benchmark_output": "adb"}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
__all__ = [
    "AGENT_PATH",
    "LOGITS_NAME",
    "RESULT_NAME",
    "AgentJob",
    "Outcome",
    "TransientTransportError",
    "Transport",
    "agent_argv",
    "local_command",
    "make_transport",
    "with_retries",
    *sorted(_LAZY),
]


def make_transport(profile: DeviceProfile, **options: Any) -> Transport:
    """The transport a profile names (``local``, ``ssh``, ``adb`` or one a plugin module registered).

    Raises:
        ConfigError: no transport of that name is registered (the message lists the registered ones).
    """
    transport = TRANSPORTS.get(profile.transport).obj(profile, **options)
    if not isinstance(transport, Transport):
        from edgecompress.errors import ConfigError

        raise ConfigError(
            f"the transport {profile.transport!r} ({type(transport).__name__}) is not a Transport",
            "subclass edgecompress.devices.transports.Transport and implement push, execute and pull",
        )
    return transport
