#!/usr/bin/env bash
# Quality of the default model (I-MedSAM on LiteMedSAM) on the held-out sets built by
# src_train.lite_recipe, next to zero-shot LiteMedSAM (the backbone's own mask decoder), the box itself
# and GrabCut, all measured by the same `imedsam evaluate --baselines` run on the same tight boxes; then
# the old from-scratch `demo` model, the default model with zoom (box-crop encoding) instead of one
# whole-slice embedding per slice, and the cross-resolution check on the polyps.
#   bash benchmarks/eval_lite.sh [MODEL] [WORK]     (defaults: lite, artifacts/lite_recipe)
# Per-image rows and the means go to WORK/eval/*.jsonl; the last line of each is the summary.
set -euo pipefail
MODEL=${1:-lite}
WORK=${2:-artifacts/lite_recipe}
IMEDSAM=${IMEDSAM:-.venv/bin/imedsam}
DATA=$WORK/data
OUT=$WORK/eval
mkdir -p "$OUT"
run() {  # run NAME ARGS...: one evaluate call, rows to OUT/NAME.jsonl, summary printed
  local name=$1
  shift
  $IMEDSAM evaluate "$@" --json > "$OUT/$name.jsonl"
  echo "$name: $(tail -n 1 "$OUT/$name.jsonl")"
}
for set in eval_kvasir eval_mr eval_ct; do
  run "${MODEL}_$set" --model "$MODEL" --images "$DATA/$set/images" --masks "$DATA/$set/masks" --baselines
done
for set in eval_kvasir eval_mr eval_ct; do
  run "demo_$set" --model demo --images "$DATA/$set/images" --masks "$DATA/$set/masks"
done
for set in eval_kvasir eval_mr eval_ct; do
  run "${MODEL}_zoom_$set" --model "$MODEL" --zoom --images "$DATA/$set/images" --masks "$DATA/$set/masks"
done
run "${MODEL}_eval_kvasir_128" --model "$MODEL" --images "$DATA/eval_kvasir/images" \
  --masks "$DATA/eval_kvasir/masks" --size 128,128
run "${MODEL}_eval_kvasir_512" --model "$MODEL" --images "$DATA/eval_kvasir/images" \
  --masks "$DATA/eval_kvasir/masks" --size 512,512
