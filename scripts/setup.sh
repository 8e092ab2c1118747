#!/usr/bin/env bash
# Idempotent set-up: a Python >= 3.11 venv in .venv with condex installed (dev + export extras), and
# Fashion-MNIST available offline. A second run only checks and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.condex-installed"

log() { printf '[setup] %s\n' "$*"; }

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"; return 0
    fi
  done
  echo "condex needs Python >= 3.11 (flwr 1.4x requires it); install python3.11 and re-run" >&2
  return 1
}

fashion_mnist() {
  local dir=/usr/share/datasets/fashion-mnist
  if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then log "Fashion-MNIST: $dir"; return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian package dataset-fashion-mnist"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    log "Fashion-MNIST not in $dir and not root: torchvision will download it on first use"
    "$VENV/bin/python" -c "from shared.data import load_dataset; load_dataset('fashion_mnist'); load_dataset('fashion_mnist', 'test')"
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python)
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

# Reinstall only when the dependency list changed.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
  log "installing condex and its dependencies into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first, pinned to the newest release this project supports (<= 2.14.1).
  "$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$VENV/bin/python" -m pip install -q -e ".[dev,export]"
  echo "$want" > "$STAMP"
else
  log "venv up to date ($VENV)"
fi

fashion_mnist

if [ ! -f assets/teachers/fashion_mnist/card.json ]; then
  log "no default teacher checkpoint: training it (about 4 minutes on 2 idle CPU cores)"
  "$VENV/bin/condex" teacher train --out assets/teachers/fashion_mnist
fi
log "ready"
