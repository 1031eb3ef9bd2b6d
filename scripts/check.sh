#!/usr/bin/env bash
# The checks CI runs (.ci/run = scripts/bootstrap.sh, then this), in order, stopping at the first that fails:
# lint, format, type check of src/, the fast tests, then the slow (end-to-end) tests, each with its 15 slowest.
# Run from anywhere; PYTHON overrides the interpreter (default: the repository's .venv made by bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

step() { echo "== check: $*" >&2; }

step "ruff check"
"$PY" -m ruff check .
step "ruff format --check"
"$PY" -m ruff format --check .
step "mypy (src/, configured in pyproject.toml)"
"$PY" -m mypy
step "fast tests"
"$PY" -m pytest -m "not slow" --durations=15
step "slow tests"
rc=0
"$PY" -m pytest -m slow --durations=15 || rc=$?
if [ "$rc" -eq 5 ]; then  # pytest's "no tests collected": no slow tests is not a failure
  echo "check: no slow tests collected" >&2
  rc=0
fi
exit "$rc"
