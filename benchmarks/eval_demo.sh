#!/usr/bin/env bash
# Quality of a demo-model checkpoint on the held-out sets built by src_train.demo_recipe, each next
# to the box-as-mask and GrabCut baselines measured by the same command in the same run, plus the
# cross-resolution check (output at half and double the input size) on the polyps.
#   bash benchmarks/eval_demo.sh [MODEL] [WORK]     (defaults: demo, artifacts/demo_recipe)
set -euo pipefail
MODEL=${1:-demo}
WORK=${2:-artifacts/demo_recipe}
IMEDSAM=${IMEDSAM:-.venv/bin/imedsam}
for set in eval_kvasir eval_mr eval_ct; do
  echo "== $set"
  $IMEDSAM evaluate --model "$MODEL" --images "$WORK/$set/images" --masks "$WORK/$set/masks" --baselines
done
echo "== eval_kvasir at half (128x128) and double (512x512) the 256x256 input"
$IMEDSAM evaluate --model "$MODEL" --images "$WORK/eval_kvasir/images" --masks "$WORK/eval_kvasir/masks" --size 128,128
$IMEDSAM evaluate --model "$MODEL" --images "$WORK/eval_kvasir/images" --masks "$WORK/eval_kvasir/masks" --size 512,512
echo "== uncertainty: the paper's MC variance alone (epistemic) instead of the predictive variance"
for set in eval_kvasir eval_mr eval_ct; do
  $IMEDSAM evaluate --model "$MODEL" --images "$WORK/$set/images" --masks "$WORK/$set/masks" --uncertainty epistemic
done
