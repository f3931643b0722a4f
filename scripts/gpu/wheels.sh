#!/usr/bin/env bash
# Everything an air-gapped GPU host (CPython 3.12, torch 2.11+cu130, triton 3.6,
# transformers 5.17, no package index) needs for `make gpu-check`, in one folder:
# SGLang 0.5.17 and its missing dependencies (make-wheelhouse.sh beside this file:
# 52 wheels trimmed for sm_90 and the triton backend), what this project imports that
# such an image lacks (tenacity, for the harness's retries), and the project's own wheel
# (its dist-info carries the `sglang.srt.plugins` entry point SGLang loads it by; the code
# itself runs from the checkout). Run where PyPI is reachable; the folder and the
# checkout must travel together in 64 MiB.
#
# usage: scripts/gpu/wheels.sh OUT_DIR       (OUT_DIR must not contain wheels yet)
# env:   LIMIT_MIB (default 62: the checkout takes the rest of 64), PYTHON (python3)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=${PYTHON:-python3}
OUT=$1
LIMIT_MIB=${LIMIT_MIB:-62}

LIMIT_MIB=60 PYTHON="$PY" bash "$HERE/make-wheelhouse.sh" "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "== the project's extras: tenacity, and the project's own wheel"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    -d "$OUT" tenacity==9.2.1
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$build" "$REPO"
cp "$build"/sglang_mixkv-*.whl "$OUT"/
total=$(find "$OUT" -maxdepth 1 -name '*.whl' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
echo "TOTAL: $(ls "$OUT"/*.whl | wc -l) wheels, $((total / 1048576)) MiB (limit $LIMIT_MIB MiB)"
[ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "error: over $LIMIT_MIB MiB" >&2; exit 1; }
