#!/usr/bin/env bash
# Executes the walkthrough notebook (experiments/notebooks/walkthrough.ipynb) top to bottom and writes
# it back with its outputs and a fingerprint of its code cells (docs/notebook_outputs.py): the docs site shows these
# outputs, and its build fails when they are missing or stale. Run it after changing the notebook's code; a few
# minutes on 2 CPU cores. Sets up .venv and Fashion-MNIST offline first, like scripts/test.sh.
set -euo pipefail
. "$(dirname "$0")/env.sh"
if ! log=$(PYTHON=python bash scripts/setup_offline_data.sh fashion_mnist 2>&1); then
  printf '%s\n' "$log" >&2
  echo "scripts/notebook.sh: could not prepare Fashion-MNIST (scripts/setup_offline_data.sh fashion_mnist)" >&2
  exit 1
fi
python docs/notebook_outputs.py "$@"
