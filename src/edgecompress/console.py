"""What the command line shows: a quiet console, the run's log file, and the headline at the end of a run.

Quiet by default. The console shows edgecompress's own warnings, each once, and its progress lines; everything else
— third-party warnings and INFO logs (the torch exporter, NNCF, OpenVINO, Python warnings such as copyreg's
``FutureWarning``) and edgecompress's own INFO lines — goes to the run's log file, ``RUN/run.log``. ``--verbose``
shows them on the console too. Libraries that print through handlers of their own (NNCF to stdout, torch to stderr)
are re-routed into the root logger once they are imported, so their records follow the same rules.

This module belongs to the command line (it uses ``rich``); the library only logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

OWN = "edgecompress"
LOG_FILE = "run.log"
_TAG = "edgecompress-console"  # the name of every handler this module installs on the root logger
_BUFFER = 10_000  # records kept in memory until the run folder exists (then written to its log)
_STREAMS = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


def _ours(record: logging.LogRecord) -> bool:
    return record.name == OWN or record.name.startswith(OWN + ".")


def adopt_library_loggers(_module: str | None = None) -> list[str]:
    """Route loggers that print on their own (a ``StreamHandler`` to stdout/stderr, ``propagate`` off) through the
    root logger instead, so the console and log-file handlers decide where their records go.

    Args:
        _module: the module just imported (the ``_lazy`` hook passes it; every logger is looked at anyway).

    Returns:
        The names of the loggers re-routed now.
    """
    adopted = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or name == OWN or name.startswith(OWN + "."):
            continue
        own = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)
               and not isinstance(h, logging.FileHandler) and getattr(h, "stream", None) in _STREAMS]  # fmt: skip
        if own:
            for handler in own:
                logger.removeHandler(handler)
            logger.propagate = True
            adopted.append(name)
    return adopted


class _Adopt(logging.Filter):
    """Before a record is handled, re-route any library imported since (cheap: a scan of the logger table)."""

    def filter(self, record: logging.LogRecord) -> bool:
        adopt_library_loggers()
        return True


class OnceEach(logging.Filter):
    """A warning shown once on the console: the same text again is dropped, and so is the same text repeated with a
    context prefix ("student training: <text>" after "<text>"). The log file keeps every record."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = " ".join(record.getMessage().split())
        parts = text.split(": ")
        suffixes = {": ".join(parts[i:]) for i in range(1, len(parts))}
        if text in self.seen or suffixes & self.seen or any(s.endswith(": " + text) for s in self.seen):
            return False
        self.seen.add(text)
        return True


class RunLog(logging.Handler):
    """Every record into ``RUN/run.log``; kept in memory until the run folder is a run directory (so a folder that
    ``--out`` names but the run refuses is never written), then appended. A link in its place is never followed."""

    def __init__(self, path: Path, ready: Callable[[], bool], level: int) -> None:
        super().__init__(level)
        self.path, self.ready = path, ready
        self.pending: list[logging.LogRecord] = []
        self.stream: IO[str] | None = None
        self.failed: str | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        self.set_name(_TAG)

    def _open(self) -> bool:
        if self.stream is not None:
            return True
        if self.failed is not None or not self.ready():
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
            self.stream = os.fdopen(fd, "a", encoding="utf-8")
        except OSError as exc:
            self.failed = f"{self.path}: {exc.strerror}"
            self.pending.clear()
            print(f"warning: the run log {self.failed} is not written (a link or an unwritable file)", file=sys.stderr)
            return False
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if not self._open():
                if self.failed is None and len(self.pending) < _BUFFER:
                    self.pending.append(record)
                return
            assert self.stream is not None
            for item in [*self.pending, record]:
                self.stream.write(self.format(item) + "\n")
            self.pending.clear()
            self.stream.flush()
        except Exception:  # noqa: BLE001 — logging must never stop the run
            self.handleError(record)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        super().close()


def setup_logging(*, debug: bool, verbose: bool, filters: Sequence[Callable[[logging.LogRecord], bool]] = ()) -> None:
    """The console's handlers: own warnings once each (quiet), everything from INFO with ``--verbose``, DEBUG with
    ``--debug``. Python warnings become log records; library loggers are re-routed as they are imported. ``filters``
    run last on the console's records (the CLI escapes control characters there)."""
    from rich.console import Console
    from rich.logging import RichHandler

    from edgecompress import _lazy

    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _TAG]:  # a second call (tests) replaces, not adds
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    console = RichHandler(console=Console(stderr=True), show_path=False)
    console.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(_Adopt())
    if not (debug or verbose):
        console.addFilter(_ours)
        console.addFilter(OnceEach())
    for record_filter in filters:
        console.addFilter(record_filter)
    console.set_name(_TAG)
    root.addHandler(console)
    logging.captureWarnings(True)
    if adopt_library_loggers not in _lazy.AFTER_IMPORT:
        _lazy.AFTER_IMPORT.append(adopt_library_loggers)
    adopt_library_loggers()


def attach_run_log(run_dir: Path, *, debug: bool = False) -> RunLog:
    """Send every record from now on (and the few since start-up) to ``run_dir/run.log`` once the run folder exists."""
    from edgecompress.pipeline.rundir import RunDir

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, RunLog)]:
        root.removeHandler(handler)
        handler.close()
    handler = RunLog(Path(run_dir) / LOG_FILE, RunDir(run_dir).is_run_dir, logging.DEBUG if debug else logging.INFO)
    handler.addFilter(_Adopt())
    root.addHandler(handler)
    return handler


def print_headline(report_json: Path, *, log_file: Path | None = None) -> None:
    """The run's headline on stdout: rich tables on a terminal, plain text otherwise (CI, a redirected log)."""
    from edgecompress.report.headline import headline_text, headline_view
    from edgecompress.report.schema import Report

    report = Report.model_validate_json(Path(report_json).read_text(encoding="utf-8"))
    if report.headline is None:
        return
    extra = [f"Everything else (third-party messages, INFO lines): {log_file}"] if log_file else []
    if not sys.stdout.isatty():
        sys.stdout.write(headline_text(report.headline) + "".join(f"{line}\n" for line in extra))
        sys.stdout.flush()
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console(highlight=False)
    view = headline_view(report.headline)
    out.rule(Text("Headline", style="bold"))
    for line in view.lead:
        out.print(line, markup=False)
    for t in view.tables:
        table = Table(title=Text(t.title), title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
        for i, header in enumerate(t.headers):
            style = "bold green" if i == len(t.headers) - 1 else None  # the change column
            table.add_column(Text(header), justify="left" if i == 0 else "right", style=style)
        for row in t.rows:
            table.add_row(*(Text(c) for c in row))
        out.print(table)
        for note in t.notes:
            out.print(note, style="yellow", markup=False)
    for line in [*view.tail, *extra]:
        out.print(line, markup=False)
