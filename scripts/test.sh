#!/usr/bin/env bash
# The test command of the README: sets up .venv (first time) and runs the whole test suite.
set -euo pipefail
. "$(dirname "$0")/env.sh"
python -m pytest -q tests "$@"
