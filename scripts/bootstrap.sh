#!/usr/bin/env bash
# Set up a fresh Linux x86-64 machine for edgecompress: system packages (Fashion-MNIST, OpenSSH server for the SSH
# transport tests, Chromium for the report's headless-browser test), a virtual environment in .venv with the CPU build of torch, and the package with its dev extra.
# Idempotent: a second run only checks. Never pulls CUDA wheels: torch is pinned to the CPU build first.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

if command -v apt-get >/dev/null 2>&1; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the browser test renders report.html (headless)
  if [ ${#need[@]} -gt 0 ]; then
    echo "bootstrap: apt-get install ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
else
  echo "bootstrap: no apt-get here; get Fashion-MNIST's IDX files yourself and set EDGECOMPRESS_DATA" >&2
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# The CPU wheel of torch first, so that resolving the package's torch range installs nothing more.
.venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || "${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install -e ".[dev,mobile]"
.venv/bin/python -c "import torch; assert '+cu' not in torch.__version__, torch.__version__; print('bootstrap: torch', torch.__version__)"
