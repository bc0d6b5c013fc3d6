#!/usr/bin/env bash
# The bundled `demo` model next to zero-shot LiteMedSAM (`litemedsam`: the backbone's own mask decoder
# is the `sam_dice` baseline of the same run) on the held-out sets the recipes build (every 6th Kvasir
# image, BraTS FLAIR of unseen patient 6, the CT structures), one tight box per image, box-as-mask and
# GrabCut measured by the same `imedsam evaluate --baselines` call.
#   bash benchmarks/eval_backbones.sh DATA [OUT]   (DATA holds eval_kvasir, eval_mr, eval_ct: images/ + masks/)
# Per-image rows and the means go to OUT/*.jsonl (default artifacts/eval_backbones); the last line of
# each file is the summary.
set -euo pipefail
DATA=${1:?usage: eval_backbones.sh DATA [OUT]}
OUT=${2:-artifacts/eval_backbones}
IMEDSAM=${IMEDSAM:-.venv/bin/imedsam}
mkdir -p "$OUT"
for model in demo litemedsam; do
  for set in eval_kvasir eval_mr eval_ct; do
    $IMEDSAM evaluate --model "$model" --images "$DATA/$set/images" --masks "$DATA/$set/masks" --baselines \
      --json > "$OUT/${model}_$set.jsonl"
    echo "$model $set: $(tail -n 1 "$OUT/${model}_$set.jsonl")"
  done
done
