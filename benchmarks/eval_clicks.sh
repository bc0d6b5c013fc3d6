#!/usr/bin/env bash
# The README's interactive table: bench_clicks.py on the held-out sets the recipes build (the first 60
# Kvasir images, BraTS FLAIR of unseen patient 6, the CT structures), up to 5 clicks after one tight box;
# with the model's click refiner, the walker alone is measured in the same run (`walker_` keys).
#   bash benchmarks/eval_clicks.sh DATA [bench_clicks options, e.g. --mirror or --click-refiner none]
# (DATA holds eval_kvasir, eval_mr, eval_ct: images/ + masks/)
set -euo pipefail
DATA=${1:?usage: eval_clicks.sh DATA [bench_clicks options]}
shift
PYTHON=${PYTHON:-.venv/bin/python}
for set in eval_kvasir eval_mr eval_ct; do
  limit=(); [ "$set" = eval_kvasir ] && limit=(--limit 60)
  echo "$set $($PYTHON benchmarks/bench_clicks.py --images "$DATA/$set/images" --masks "$DATA/$set/masks" \
    --max-clicks 5 "${limit[@]}" --json "$@")"
done
