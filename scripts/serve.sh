#!/usr/bin/env bash
# Serve one variant:  scripts/serve.sh ma-offset [--size paper] [any sglang flag]
# Sets up .venv on first use. On a machine without a GPU it serves the tiny size on CPU.
# Listens on 127.0.0.1 unless HOST says otherwise (another address needs MIXKV_API_KEY).
set -euo pipefail
cd "$(dirname "$0")/.."
plan=${1:-ma}; shift || true
make -s setup
exec .venv/bin/python -m sglang_mixkv.serve --plan "$plan" --host "${HOST:-127.0.0.1}" --port "${PORT:-30000}" "$@"
