#!/usr/bin/env bash
# Install everything this project needs: the Debian dataset package and a
# Python 3.11 virtual environment (.venv) with pinned dependencies.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
DATASET_PKG=dataset-fashion-mnist

if ! dpkg -s "$DATASET_PKG" >/dev/null 2>&1; then
  echo "setup: installing Debian package $DATASET_PKG"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$DATASET_PKG"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$DATASET_PKG"
  else
    echo "setup: cannot install $DATASET_PKG (not root, no password-less sudo). Run:" >&2
    echo "    sudo apt-get install $DATASET_PKG" >&2
    echo "then run this command again." >&2
    exit 1
  fi
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "setup: $PYTHON not found; install Python 3.11 (or set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python dependencies (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
echo "setup: ready (.venv/bin/python: $(.venv/bin/python --version))"
