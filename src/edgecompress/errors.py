"""The error types users see.

Every user-facing error carries a *problem* and a *fix*; ``str(err)`` is one line. The CLI prints that line and exits
with :attr:`EdgeCompressError.exit_code`, showing the traceback only under ``--debug``.
"""

from __future__ import annotations


class EdgeCompressError(Exception):
    """Base class: a problem the user can fix, reported in one line."""

    exit_code = 2
    kind = "error"

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem} — fix: {self.fix}" if self.fix else self.problem


class ConfigError(EdgeCompressError):
    kind = "config"


class DataError(EdgeCompressError):
    kind = "data"


class CheckpointError(EdgeCompressError):
    kind = "checkpoint"


class ModelError(EdgeCompressError):
    kind = "model"


class TrainingError(EdgeCompressError):
    """Training cannot go on (NaN/Inf loss, diverged); the last good checkpoint is kept."""

    kind = "training"
    exit_code = 3


class CalibrationError(EdgeCompressError):
    kind = "calibration"


class ExportError(EdgeCompressError):
    """An exporter failed: the message names the format, the step and the cause."""

    kind = "export"
    exit_code = 3


class QuantizationError(ExportError):
    kind = "quantization"


class DeviceError(EdgeCompressError):
    kind = "device"


class TransportError(DeviceError):
    kind = "transport"


class BundleError(EdgeCompressError):
    kind = "bundle"


class ResourceError(EdgeCompressError):
    """Disk full, directory not writable, out of memory known in advance."""

    kind = "resource"


class MissingExtraError(EdgeCompressError):
    """An optional backend is not installed; names the extra that installs it."""

    kind = "missing-extra"

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(
            f"the optional package '{package}' is not installed{what}",
            f"pip install 'edgecompress[{extra}]'",
        )
