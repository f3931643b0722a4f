#!/usr/bin/env bash
# The layout- and question-mixed recall checkpoints (results/quality/models/mixed/<plan>):
# `standard` uptrained from results/quality/models/standard on sequences whose pairs sit
# first (zoology) or anywhere (scattered), half the batches with the question block in the
# prompt (the aware regime), then `ma-offset` uptrained from it the way
# scripts/quality_models.sh uptrains every plan, on the same mix.
#
#   bash scripts/quality_models_mixed.sh     # measured on 2 cores: see results/quality-budgets
#
# A run that stops (its --minutes) resumes where it stopped when this is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/quality/models/mixed}
TASK=${TASK:-"--task-layout mixed --task-regime mixed --task-context 64 --task-pairs 16 --task-queries 16"}
UPTRAIN=${UPTRAIN:-"--lr 0.001 --warmup 50 --weight-decay 0 --repeat-mix 0.5"}
STANDARD_STEPS=${STANDARD_STEPS:-2000}
UPTRAIN_STEPS=${UPTRAIN_STEPS:-400}
export OMP_NUM_THREADS=1

$PY -m mixkv_bench.train --plan standard --out "$OUT/standard" --init results/quality/models/standard \
    --steps "$STANDARD_STEPS" --minutes 60 --eval-every 250 $TASK $UPTRAIN
$PY -m mixkv_bench.train --plan ma-offset --out "$OUT/ma-offset" --init "$OUT/standard" \
    --steps "$UPTRAIN_STEPS" --minutes 30 --eval-every 200 $TASK $UPTRAIN
echo "models in $OUT"
