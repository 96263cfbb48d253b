#!/usr/bin/env bash
# Installs SpikingJelly (the peer library of benchmarks/peers.py) into its own venv, benchmarks/.venv-peers.
#
#   bash benchmarks/setup_peers.sh            # idempotent: a working venv is left as it is
#   bash benchmarks/setup_peers.sh --force    # reinstall the packages into the venv
#
# A plain `pip install spikingjelly` pulls torchvision, torchaudio, tensorboard, matplotlib, ... and, through an
# unpinned torch, the CUDA build (over 5 GB). So: the CPU wheel of torch first (pinned), then spikingjelly with
# --no-deps, then only the small pure-Python modules that `spikingjelly.activation_based.ann2snn` imports
# (numpy, tqdm, loguru, requests). About 1 GB in all.
#
# Environment: PYTHON (default python3, 3.10+), TORCH_VERSION (default 2.13.0), TORCH_INDEX_URL (an index with CPU
# wheels of torch, where pip's configured indexes hold only the CUDA build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/benchmarks/.venv-peers"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
SPIKINGJELLY_VERSION="2.0.0"
ANN2SNN_IMPORTS=(numpy tqdm loguru requests)
CHECK="import torch, spikingjelly.activation_based.ann2snn; from importlib.metadata import version; \
print('torch', torch.__version__, '(CUDA:', str(torch.version.cuda) + '),', 'spikingjelly', version('spikingjelly'))"

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "setup_peers.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [[ $force == 0 && -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "setup_peers.sh: $VENV is ready ($(du -sh "$VENV" | cut -f1)); --force reinstalls."
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "setup_peers.sh: $PYTHON is older than 3.10" >&2; exit 1; }
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet)

echo "setup_peers.sh: torch==$TORCH_VERSION (CPU) ..."
"${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==$TORCH_VERSION"
if [[ "$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')" != "None" ]]; then
  echo "setup_peers.sh: warning: pip installed a CUDA build of torch (several GB); set TORCH_INDEX_URL to an index" \
       "with CPU wheels to avoid it." >&2
fi
echo "setup_peers.sh: spikingjelly==$SPIKINGJELLY_VERSION --no-deps, and ${ANN2SNN_IMPORTS[*]} ..."
"${PIP[@]}" --no-deps "spikingjelly==$SPIKINGJELLY_VERSION"
# pip then says that spikingjelly requires torchvision, torchaudio, tensorboard, ...: expected, ann2snn needs none.
"${PIP[@]}" "${ANN2SNN_IMPORTS[@]}"

if ! "$VENV/bin/python" -c "$CHECK"; then
  echo "setup_peers.sh: spikingjelly's ann2snn still fails to import (above); a new module it needs is missing." >&2
  exit 1
fi
echo "setup_peers.sh: done, $VENV ($(du -sh "$VENV" | cut -f1))."
