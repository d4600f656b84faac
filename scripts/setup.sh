#!/usr/bin/env bash
# Install everything this project needs: the Debian dataset package and a
# Python 3.11-3.13 virtual environment (.venv) with pinned dependencies.
# Idempotent: a second run only checks.
# The interpreter: $PYTHON if set, else the newest of python3.13, python3.12,
# python3.11 on PATH. `setup.sh --print-python` prints it and does nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

DATASET_PKG=dataset-fashion-mnist

if [ -n "${PYTHON:-}" ]; then
  if ! "$PYTHON" --version >/dev/null 2>&1; then
    echo "setup: PYTHON=$PYTHON does not run; set PYTHON=/path/to/python (3.11-3.13)" >&2
    exit 1
  fi
else
  for candidate in python3.13 python3.12 python3.11; do
    # run it rather than `command -v`: pyenv has a shim for every installed version, and
    # the shims of versions that are not selected are found but fail
    if "$candidate" --version >/dev/null 2>&1; then
      PYTHON=$candidate
      break
    fi
  done
  if [ -z "${PYTHON:-}" ]; then
    echo "setup: no supported Python (3.11-3.13: python3.13, python3.12 or python3.11) on PATH;" \
      "install one or set PYTHON=/path/to/python" >&2
    exit 1
  fi
fi
if [ "${1:-}" = --print-python ]; then
  echo "$PYTHON"
  exit 0
fi

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

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
else
  minor='import sys; print("%d.%d" % sys.version_info[:2])'
  have=$(.venv/bin/python -c "$minor")
  want=$("$PYTHON" -c "$minor")
  if [ "$have" != "$want" ]; then
    # keep it: every supported version works, and rebuilding means downloading torch again;
    # whoever wants the other version removes .venv themselves
    echo "setup: keeping .venv (Python $have) although $PYTHON is Python $want;" \
      "to rebuild with it: rm -rf .venv && bash scripts/setup.sh"
  fi
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python dependencies (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
echo "setup: ready (.venv/bin/python: $(.venv/bin/python --version))"
