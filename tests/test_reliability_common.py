"""Shared helpers of the reliability tests: tiny digits configs, the CLI as a subprocess, the one-line checks, and the
catalogue writer (``EDGECOMPRESS_WRITE_CATALOGUE=path`` appends every observed message to ``path`` as JSON lines)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DIGITS = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
FIX = " — fix: "


def tiny_config(**sections: Any) -> dict[str, Any]:
    """examples/digits.yaml made fast: 1 epoch of 2 steps per hop, ONNX FP32 only, one tiny benchmark."""
    cfg = copy.deepcopy(DIGITS)
    fast = {"epochs": 1, "max_steps_per_epoch": 2, "warmup_epochs": 0}
    cfg["teacher"]["train"].update(fast)
    cfg["distill"]["train"].update(fast)
    cfg["export"]["formats"] = ["onnx:fp32"]
    cfg["benchmark"].update({"batch_sizes": [1], "min_time_s": 0.0, "repeats": 1, "eval_samples": 64})
    for key, value in sections.items():
        cfg[key] = value
    return cfg


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m edgecompress ARGS`` in a subprocess (argument list, no shell)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "edgecompress", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def one_error_line(res: subprocess.CompletedProcess, code: int | None = None) -> str:
    """Assert the user-facing contract of a failed command; return its one stderr line."""
    assert res.returncode != 0, f"expected a failure, got 0; stdout={res.stdout[-500:]!r}"
    if code is not None:
        assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr[-3000:]}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert FIX in line and line.split(FIX, 1)[1].strip(), f"no fix in: {line}"
    return line


def one_line_message(exc: BaseException) -> str:
    """Assert that a library error is one line naming problem and fix; return it."""
    text = str(exc)
    assert "\n" not in text, text
    assert FIX in text and text.split(FIX, 1)[1].strip(), f"no fix in: {text}"
    return text


def record(group: str, case: str, given: str, how: str, outcome: str, message: str) -> None:
    """Append one observed catalogue entry to ``$EDGECOMPRESS_WRITE_CATALOGUE`` (when set)."""
    path = os.environ.get("EDGECOMPRESS_WRITE_CATALOGUE")
    if not path:
        return
    row = {"group": group, "case": case, "input": given, "how": how, "outcome": outcome, "message": message}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def render_catalogue(jsonl: Path) -> str:
    """The Markdown table of docs/reliability.md from a recorded catalogue (one row per observed case)."""
    order = ["config", "data", "checkpoint", "device", "export", "numerics", "bundle", "resource", "interrupt"]
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (order.index(r["group"]) if r["group"] in order else 99, r["case"]))
    out = [
        "| # | group | case | input | where | exit / outcome | message the user sees |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        msg = r["message"].replace("|", "\\|")
        given = r["input"].replace("|", "\\|")
        out.append(f"| {i} | {r['group']} | {r['case']} | {given} | {r['how']} | {r['outcome']} | {msg} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python tests/test_reliability_common.py catalogue.jsonl > table.md
    print(render_catalogue(Path(sys.argv[1])), end="")
