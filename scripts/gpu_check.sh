#!/usr/bin/env bash
# The GPU check (mixkv_bench/gpu_check.py) on a bare GPU host without a package index:
# install from a wheel folder made beforehand (scripts/gpu/wheels.sh, where PyPI is
# reachable), check that SGLang finds our plugin, run the parts, pack the results.
#
#   WHEELS=.whl OUT=results/gpu-check PART=all DEADLINE=570 scripts/gpu_check.sh
#   (make gpu-check WHEELS=.whl DEADLINE=570: the same)
#   DRY_RUN=1 scripts/gpu_check.sh     print every command it would run; no GPU needed
#
# PART: all, or any of correctness,paper,metadata,peer (comma-separated), run in that
# order; the whole is planned at about 11 minutes (the first H200 run's start-up and run
# times), more than one call of a lent GPU (README, "GPU check").
# DEADLINE: seconds for the whole script (install and packing included): steps that no
# longer fit are skipped and named in the report. GPU: H100|H200|A100 for the roofline's
# bounds (default: GPU 0's name). MIXKV_COMMIT names the commit the results come from
# when the copy that runs has no git metadata. PACK_TO: a folder to copy the three result
# files into (a lent GPU's $OUT brings back at most 8 files). REHEARSE=1: the same on a
# CPU at the tiny size (gpu_check --rehearse; the wheel folder then needs only the
# project's wheel and tenacity), how a machine without a GPU runs this script end to end.
# Exit: 0 every step passed; 1 a step failed (its error is in OUT/report.md); 2 none
# failed but the deadline skipped some; 3 the install failed; 4 the plugin did not load.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-results/gpu-check}
PART=${PART:-all}
if [ -n "${DRY_RUN:-}" ]; then
  exec "$PY" -m mixkv_bench.gpu_check --dry-run --part "$PART" --out "$OUT" ${GPU:+--gpu "$GPU"}
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
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU)")
PLUGIN
deadline=()
if [ -n "${DEADLINE:-}" ]; then  # what is left, less 20 s to pack the results
  deadline=(--deadline-s $(( DEADLINE - ($(date +%s) - t0) - 20 )))
fi
"$PY" -m mixkv_bench.gpu_check --part "$PART" --out "$OUT" ${GPU:+--gpu "$GPU"} "${deadline[@]}" \
  ${REHEARSE:+--rehearse}
rc=$?
# What comes back from such a host: a few files. check.json and report.md stay as they
# are; everything else (server logs, harness runs) goes into one archive.
tar -czf "$OUT/logs.tar.gz" -C "$OUT" --exclude=models --exclude=logs.tar.gz \
  --exclude=check.json --exclude=report.md . 2>/dev/null
if [ -n "${PACK_TO:-}" ]; then
  mkdir -p "$PACK_TO" && cp "$OUT/check.json" "$OUT/report.md" "$OUT/logs.tar.gz" "$PACK_TO"/
fi
echo "gpu-check: done in $(( $(date +%s) - t0 )) s, exit $rc"
exit $rc
