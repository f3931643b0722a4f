#!/usr/bin/env bash
# The paper's serving test against a server that is already running (ours, stock SGLang
# or vLLM with --api openai):
#   scripts/bench-server.sh http://127.0.0.1:30000 [LABEL] [harness run flags]
# Default: 300 prompts x 31K in / 1K out at concurrency 1,8,32,64,128,300.
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:?usage: bench-server.sh URL [LABEL] [harness flags]}; label=${2:-server}; shift $(( $# < 2 ? $# : 2 ))
make -s setup
exec .venv/bin/python -m harness run --url "$url" --profile paper --label "$label" \
  --out "results/$label-$(date +%Y%m%d-%H%M%S)" "$@"
