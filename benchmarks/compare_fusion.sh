#!/usr/bin/env bash
# SF-RecSAM's spatial-frequency fusion adapter next to I-MedSAM's spectrum stream alone: the same
# training run (same data, seed, wall time, learning rates) without and with --sf-fusion, side by side
# (one thread each), then both results (and, for `adapters`, their common base) evaluated on the
# held-out sets built by src_train.demo_recipe, in the same run.
#   bash benchmarks/compare_fusion.sh [SETTING] [MINUTES] [WORK] [OUT]
# SETTING `scratch` (default): the demo recipe's first stage, every weight of the tiny backbone from
# scratch (`full` mode, adapters at the encoder's learning rate); `adapters`: continue the bundled demo
# model in `adapters` mode (its frozen encoder plus LoRA, adapters and decoder).
set -euo pipefail
SETTING=${1:-scratch}
MINUTES=${2:-30}
WORK=${3:-artifacts/demo_recipe}
OUT=${4:-artifacts/compare_fusion_$SETTING}
IMEDSAM=${IMEDSAM:-.venv/bin/imedsam}
mkdir -p "$OUT"
case $SETTING in
  scratch) common=(--model tiny --mode full --zoom --lr-adapters 3e-4 --val-fraction 0.1) ;;
  adapters) common=(--model demo --mode adapters --lr-adapters 5e-4 --val-fraction 0.05) ;;
  *) echo "setting must be scratch or adapters" >&2; exit 2 ;;
esac
common+=(--data "$WORK/train" --out "$OUT" --max-seconds $((MINUTES * 60)) --epochs 100000 --batch-size 8
         --augment --seed 0)
OMP_NUM_THREADS=1 IMEDSAM_THREADS=1 $IMEDSAM train "${common[@]}" --name stream > "$OUT/stream.log" 2>&1 &
OMP_NUM_THREADS=1 IMEDSAM_THREADS=1 $IMEDSAM train "${common[@]}" --name fusion --sf-fusion > "$OUT/fusion.log" 2>&1 &
wait
stream=$(sed -n 's/^saved //p' "$OUT/stream.log")
fusion=$(sed -n 's/^saved //p' "$OUT/fusion.log")
grep -h "held-back\|steps in" "$OUT/stream.log" "$OUT/fusion.log"
variants=(stream fusion)
[ "$SETTING" = adapters ] && variants=(base stream fusion)
for set in eval_kvasir eval_mr eval_ct; do
  for variant in "${variants[@]}"; do
    case $variant in
      base) model=(--model demo) ;;
      stream) model=(--model "$stream") ;;
      fusion) model=(--model "$fusion") ;;
    esac
    [ "$SETTING" = adapters ] && [ "$variant" != base ] && model=(--model demo --adapters "${model[1]}")
    echo "== $set $variant"
    $IMEDSAM evaluate "${model[@]}" --images "$WORK/$set/images" --masks "$WORK/$set/masks" | tail -n 3
  done
done
