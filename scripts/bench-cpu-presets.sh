#!/usr/bin/env bash
# Every preset on the tiny model on CPU at one fixed KV budget: the token capacity SGLang
# allocated and the decode throughput (8 concurrent requests, 64 new tokens each).
# Writes results/cpu-presets-<time>/report.md.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s setup
plans=$(.venv/bin/python -c 'from sglang_mixkv.plan import PRESET_NAMES; print(",".join(PRESET_NAMES))')
exec .venv/bin/python -m sglang_mixkv.bench --plans "$plans" --size tiny --kv-budget 64MiB \
  --num-prompts 16 --input-len 256 --output-len 64 --concurrency 8 --warmup 1 \
  --out "results/cpu-presets-$(date +%Y%m%d-%H%M%S)" "$@"
