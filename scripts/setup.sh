#!/usr/bin/env bash
# Create .venv with everything sglang-mixkv needs. Idempotent: a stamp holding the hash
# of this script and its requirement files makes a second run a no-op.
#
#   GPU (nvidia-smi works): sglang==0.5.17 with its own dependencies (CUDA torch 2.11).
#   CPU: docs/design.md §9 - CPU torch 2.13.0 first, sglang without its CUDA deps,
#        the pure-Python list under a constraint that pins torch, and a torchvision
#        schema shim as the venv's sitecustomize.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if [ -n "${MIXKV_DEVICE:-}" ]; then device=$MIXKV_DEVICE
elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then device=gpu
else device=cpu; fi

# sglang 0.5.17 pins torch 2.11, a CUDA 13 build: it needs NVIDIA driver 580 or newer.
# With an older driver torch.cuda.is_available() is simply False; say so here instead.
if [ "$device" = gpu ]; then
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ' || true)
  major=${driver%%.*}
  if ! [[ "$major" =~ ^[0-9]+$ ]] || [ "$major" -lt 580 ]; then
    echo "error: NVIDIA driver ${driver:-not found}: sglang 0.5.17 runs on torch 2.11 (CUDA 13)," \
         "which needs driver 580 or newer. Upgrade the driver, or run MIXKV_DEVICE=cpu make setup" \
         "for the CPU path." >&2
    exit 1
  fi
  echo "setup: NVIDIA driver $driver"
fi
if [ -n "${MIXKV_SETUP_CHECK_ONLY:-}" ]; then echo "setup: checks passed ($device)"; exit 0; fi

stamp="$VENV/.mixkv-setup"
want=$(cat scripts/setup.sh scripts/sitecustomize.py scripts/requirements-*.txt pyproject.toml \
       | sha256sum | cut -c1-16)-$device
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: $VENV is up to date ($device)"; exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pipi() { "$VENV/bin/python" -m pip install --disable-pip-version-check --no-warn-conflicts -q "$@"; }
pipi --upgrade pip

if [ "$device" = gpu ]; then
  pipi "sglang==0.5.17"
else
  pipi "torch==2.13.0"
  torch_version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  cons="$VENV/constraints.txt"
  echo "torch==$torch_version" > "$cons"
  pipi --no-deps "sglang==0.5.17" "torchvision==0.28.0" "triton==3.9.0"
  pipi -c "$cons" -r scripts/requirements-cpu.txt
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp scripts/sitecustomize.py "$site/sitecustomize.py"
fi
cons_arg=()
[ -f "$VENV/constraints.txt" ] && cons_arg=(-c "$VENV/constraints.txt")
pipi "${cons_arg[@]}" -r scripts/requirements-dev.txt
pipi "${cons_arg[@]}" --no-deps -e .

"$VENV/bin/python" -c 'import sglang, torch, sglang_mixkv, harness; print("setup: sglang", sglang.__version__, "torch", torch.__version__)'
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start ))s, venv $(du -sh "$VENV" | cut -f1)"
