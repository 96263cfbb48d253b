#!/usr/bin/env bash
# The test command of the README: sets up .venv (first time) and runs the whole test suite.
set -euo pipefail
. "$(dirname "$0")/env.sh"
# tests/test_notebook.py runs the walkthrough notebook on the real Fashion-MNIST: prepare it offline (a few seconds
# when it is already there); its log is shown only if that fails.
if ! log=$(PYTHON=python bash scripts/setup_offline_data.sh fashion_mnist 2>&1); then
  printf '%s\n' "$log" >&2
  echo "scripts/test.sh: could not prepare Fashion-MNIST (scripts/setup_offline_data.sh fashion_mnist)" >&2
  exit 1
fi
python -m pytest -q tests "$@"
