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
# One pytest worker per core (at most 4: XLA uses every core within a worker too); on one core, no workers. A test
# runs in whichever worker is free (--dist worksteal); `-n 0` after the command runs everything in this process.
cores=$(nproc)
workers=$(( cores > 4 ? 4 : (cores > 1 ? cores : 0) ))
python -m pytest -q -n "$workers" --dist worksteal tests "$@"
