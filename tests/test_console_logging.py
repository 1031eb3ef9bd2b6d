"""Quiet by default: third-party warnings and INFO lines go to the run's log, not the console; own warnings stay, once.

Each case runs in a fresh interpreter (logging is process-wide) with the real libraries' own loggers: NNCF installs a
stdout handler when imported, torch a stderr handler; a Python ``FutureWarning`` stands for copyreg's.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    from pathlib import Path
    from edgecompress import _lazy
    from edgecompress.console import attach_run_log, setup_logging
    from edgecompress.pipeline.rundir import RunDir

    run = Path(sys.argv[1])
    setup_logging(debug=False, verbose=sys.argv[2] == "verbose")
    attach_run_log(run)
    own = logging.getLogger("edgecompress.pipeline.x")
    own.info("own-info before the run folder exists")
    RunDir(run).prepare()  # the run folder now exists: the log file is written from here on
    nncf = _lazy.require("nncf")  # prints through its own stdout handler unless re-routed
    logging.getLogger("nncf").info("nncf-probe")
    import torch  # noqa: F401  (its loggers print through their own stderr handler)
    logging.getLogger("torch.onnx._internal.exporter._registration").warning("torch-probe")
    warnings.warn("warn-probe", FutureWarning)
    own.warning("epoch 2: own-probe exploded")
    own.warning("epoch 2: own-probe exploded")
    own.warning("student training: epoch 2: own-probe exploded")
    own.warning("another own warning")
    """
)
THIRD_PARTY = ("nncf-probe", "torch-probe", "warn-probe")


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "run"), mode], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_quiet_console_and_everything_in_the_run_log(tmp_path: Path) -> None:
    res = _run(tmp_path, "quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    console = res.stdout + res.stderr
    for probe in THIRD_PARTY:
        assert probe not in console, (probe, console)
    assert "own-info" not in console
    assert console.count("own-probe") == 1 and "another own warning" in console  # own warnings stay, once each
    log = (tmp_path / "run" / "run.log").read_text()
    for line in (*THIRD_PARTY, "own-info before the run folder exists", "student training: epoch 2: own-probe"):
        assert line in log, (line, log)
    assert "WARNING torch.onnx._internal.exporter._registration: torch-probe" in log


def test_verbose_shows_third_party_messages(tmp_path: Path) -> None:
    res = _run(tmp_path, "verbose")
    assert res.returncode == 0, res.stderr[-2000:]
    for probe in (*THIRD_PARTY, "own-info"):
        assert probe in res.stderr, (probe, res.stderr)
    assert "nncf-probe" not in res.stdout  # NNCF's own stdout handler is gone: one place, one format


@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links")
def test_a_link_in_place_of_the_run_log_is_not_followed(tmp_path: Path) -> None:
    made = "import sys; from edgecompress.pipeline.rundir import RunDir; RunDir(sys.argv[1]).prepare()"
    subprocess.run([sys.executable, "-c", made, str(tmp_path / "run")], check=True, timeout=120)  # a run folder
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    (tmp_path / "run" / "run.log").symlink_to(outside)
    res = _run(tmp_path, "quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert outside.read_text() == "keep\n"
    assert "run log" in res.stderr and "not written" in res.stderr
