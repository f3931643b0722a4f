#!/usr/bin/env bash
# The GPU check (mixkv_bench/gpu_check.py) on a bare GPU host without a package index:
# install from a wheel folder made beforehand (scripts/gpu/wheels.sh, where PyPI is
# reachable), check that SGLang finds our plugin, run the parts, pack the results.
#
#   WHEELS=.whl OUT=results/gpu-check PART=all scripts/gpu_check.sh   (make gpu-check)
#   DRY_RUN=1 scripts/gpu_check.sh     print every command it would run; no GPU needed
#
# PART: all, or any of correctness,paper,peer,metadata (comma-separated). One H200 ran
# all of it in about 8 minutes (README, "GPU check"). MIXKV_COMMIT names the commit the
# results come from when the copy that runs has no git metadata.
# Exit: 0 every step passed; 1 a step failed (its error is in OUT/report.md); 3 the
# install failed; 4 the plugin did not load.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-results/gpu-check}
PART=${PART:-all}
if [ -n "${DRY_RUN:-}" ]; then
  exec "$PY" -m mixkv_bench.gpu_check --dry-run --part "$PART" --out "$OUT"
fi
SITE=${SITE:-/tmp/mixkv-site}
t0=$(date +%s)
timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl || { echo "gpu-check: install failed" >&2; exit 3; }
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/mixkv-triton-cache} PYTHONUNBUFFERED=1
echo "gpu-check: installed in $(( $(date +%s) - t0 )) s"
timeout 180 "$PY" - <<'PLUGIN' || { echo "gpu-check: the plugin did not load" >&2; exit 4; }
from importlib.metadata import entry_points

eps = [e for e in entry_points(group="sglang.srt.plugins") if e.name == "mixkv"]
assert eps, "no sglang.srt.plugins entry point 'mixkv': the project's wheel is not installed"
eps[0].load()()
import sglang, torch

print("gpu-check: plugin loaded; sglang", sglang.__version__, "torch", torch.__version__,
      torch.cuda.get_device_name(0))
PLUGIN
"$PY" -m mixkv_bench.gpu_check --part "$PART" --out "$OUT"
rc=$?
# What comes back from such a host: a few files. check.json and report.md stay as they
# are; everything else (server logs, harness runs) goes into one archive.
tar -czf "$OUT/logs.tar.gz" -C "$OUT" --exclude=models --exclude=logs.tar.gz \
  --exclude=check.json --exclude=report.md . 2>/dev/null
echo "gpu-check: done in $(( $(date +%s) - t0 )) s, exit $rc"
exit $rc
