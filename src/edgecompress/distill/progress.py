"""A training progress bar: rich in a terminal (rank 0 only), nothing otherwise (epochs are logged)."""

from __future__ import annotations

import sys


class Progress:
    """A rich progress bar when stderr is a TTY (rank 0 only), else nothing (epochs are logged)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(transient=True)
            self.bar.start()
            self.task = self.bar.add_task("training", total=total, completed=done)

    def advance(self, text: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
