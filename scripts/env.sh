# Sourced by scripts/run.sh and scripts/test.sh: creates .venv (once) and installs jaxsnn with every extra into it.
# A fresh machine needs nothing else: Python 3.11+ with venv, and access to PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON_BIN=${PYTHON_BIN:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON_BIN" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.jaxsnn-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[test,data,train,plot,docs]"
  touch "$stamp"
fi
