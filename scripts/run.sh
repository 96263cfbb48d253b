#!/usr/bin/env bash
# The main job of the README: set up .venv and the offline Fashion-MNIST data (first time), then convert the committed
# Fashion-MNIST CNN to an SNN, simulate it and report accuracy vs time steps (see experiments/main.py for flags).
set -euo pipefail
. "$(dirname "$0")/env.sh"
PYTHON=python bash scripts/setup_offline_data.sh fashion_mnist
python experiments/main.py "$@"
