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


def describe_failure(exc: BaseException | None) -> EdgeCompressError | None:
    """A one-line error naming what went wrong for the OS and library failures a bad input can still cause where no
    stage caught it (a file that cannot be read, a document nested too deeply, a file that ends early, a pixel bomb,
    a NUL byte in a path); None for anything else (a bug: the CLI says "unexpected" and asks for ``--debug``)."""
    if exc is None:
        return None
    text = " ".join(str(exc).split())[:200]
    if isinstance(exc, OSError) and getattr(exc, "filename", None) is not None:
        return ResourceError(
            f"cannot use {exc.filename}: {exc.strerror or text}", "check that the path exists and can be read/written"
        )
    if isinstance(exc, RecursionError):
        return DataError(
            "an input file is nested too deeply to read (a hostile or corrupt JSON/YAML document?)",
            "use the file edgecompress wrote, or rerun the step that writes it",
        )
    if isinstance(exc, EOFError):
        return DataError(f"an input file ends before its end ({text or 'EOFError'})", "use a complete copy of the file")
    if type(exc).__name__ == "DecompressionBombError":  # PIL.Image.DecompressionBombError (PIL stays lazy)
        return DataError(f"an image has more pixels than allowed ({text})", "downscale the image first")
    if isinstance(exc, ValueError) and "null byte" in text:
        return ConfigError(f"a path holds a NUL byte ({text})", "remove the \\0 from the path (config or arguments)")
    if type(exc).__name__ == "BadZipFile":
        return DataError(f"a zip-based file (.npz, .pt, bundle) is damaged ({text})", "use a complete copy of the file")
    return None
