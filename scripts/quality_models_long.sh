#!/usr/bin/env bash
# Recall checkpoints at a longer context (results/quality/models/long<CONTEXT>/<plan>), so
# that an Ada-KV budget can be a paper-like share of the prompt: `standard` uptrained
# from the mixed checkpoint (results/quality/models/mixed/standard, both layouts, both
# regimes) at CONTEXT tokens (256: 32 windows of the recall size's 8), then `ma-offset`
# uptrained from it, the way scripts/quality_models_mixed.sh does at 64.
#
#   bash scripts/quality_models_long.sh                 # CONTEXT=256
#   CONTEXT=128 bash scripts/quality_models_long.sh     # the fallback: 16 windows
#
# A run that stops (its --minutes) resumes where it stopped when this is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONTEXT=${CONTEXT:-256}
OUT=${OUT:-results/quality/models/long$CONTEXT}
TASK=${TASK:-"--task-layout mixed --task-regime mixed --task-context $CONTEXT --task-pairs 16 --task-queries 16"}
UPTRAIN=${UPTRAIN:-"--lr 0.001 --warmup 50 --weight-decay 0 --repeat-mix 0.5"}
STANDARD_STEPS=${STANDARD_STEPS:-1500}
UPTRAIN_STEPS=${UPTRAIN_STEPS:-400}
STANDARD_MINUTES=${STANDARD_MINUTES:-45}
export OMP_NUM_THREADS=1

$PY -m mixkv_bench.train --plan standard --out "$OUT/standard" \
    --init results/quality/models/mixed/standard --steps "$STANDARD_STEPS" \
    --minutes "$STANDARD_MINUTES" --eval-every 250 $TASK $UPTRAIN
$PY -m mixkv_bench.train --plan ma-offset --out "$OUT/ma-offset" --init "$OUT/standard" \
    --steps "$UPTRAIN_STEPS" --minutes 30 --eval-every 200 $TASK $UPTRAIN
echo "models in $OUT"
