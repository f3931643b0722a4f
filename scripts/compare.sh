#!/usr/bin/env bash
# Compare result folders side by side (one table, one plot):
#   scripts/compare.sh results/bench-A/ma/harness results/bench-B/ma/harness [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
exec .venv/bin/python -m harness report --print "$@"
