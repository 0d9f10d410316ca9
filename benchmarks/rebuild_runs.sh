#!/usr/bin/env bash
# Rebuild what the accuracy benchmarks read. runs/ is not in git, so a new machine starts without it:
#   - the cross-validation splits (runs/cv-davis) and their H.264 copy (runs/cv-davis-mp4, what
#     `cross_validate.py eval --root runs/cv-davis-mp4` scores);
#   - the shipped recipe's fold models of each seed (runs/cv/fN, runs/cv/fN-sS);
#   - the fold refiners (runs/cv/fN/refiner.pt: the learned refiner trained without the fold, for
#     `cross_validate.py eval --set 'refiner_file=runs/cv/{fold}/refiner.pt'`; the shipped refiner
#     saw every sequence);
#   - the six multi-object dev sets and their H.264 copies (runs/multi-dev*-h264).
# What is already there is kept. Jobs run two at a time, one thread each (about 10 minutes a fold
# model, 8-9 a fold refiner, on a 2-core machine). x264 does not encode the same frames twice
# alike, so rebuilt copies are not an earlier machine's: rerun every baseline on them.
#
#   bash benchmarks/rebuild_runs.sh                 # fold models of seeds 0 and 1
#   SEEDS="0 1 2" JOBS=2 bash benchmarks/rebuild_runs.sh
#   DRY_RUN=1 bash benchmarks/rebuild_runs.sh     # list what is missing, run nothing
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"0 1"}
JOBS=${JOBS:-2}
LOGS=runs/logs/rebuild
mkdir -p "$LOGS"
PY=${PYTHON:-python}
CV="$PY benchmarks/cross_validate.py"
MO="$PY benchmarks/multi_object_dev.py"

[ -d runs/cv-davis/ImageSets ] || [ -n "${DRY_RUN:-}" ] || $CV splits

jobs=()
[ -d runs/cv-davis-mp4 ] || jobs+=("$CV codec --crf 23 --out runs/cv-davis-mp4")
# name, options of `multi_object_dev.py make`
sets=("multi-dev|" "multi-dev-kind|--kind same-kind" "multi-dev-crowd|--kind crowd")
for s in 1 2 3; do sets+=("multi-dev-crowd$s|--kind crowd --seed $s --out runs/multi-dev-crowd$s"); done
for entry in "${sets[@]}"; do
  name=${entry%%|*}
  [ -d "runs/$name-h264" ] || jobs+=("$MO make ${entry#*|} && $MO codec --data runs/$name")
done
for seed in $SEEDS; do
  for fold in f0 f1 f2 f3 f4; do
    dir=runs/cv/$fold$([ "$seed" = 0 ] || echo "-s$seed")
    [ -f "$dir/model.pt" ] || jobs+=("$CV train --fold $fold --seed $seed --threads 1")
  done
done

for fold in f0 f1 f2 f3 f4; do
  [ -f "runs/cv/$fold/refiner.pt" ] || jobs+=("$CV train-refiner --fold $fold --threads 1")
done

if [ -n "${DRY_RUN:-}" ]; then printf '%s\n' "${jobs[@]}"; exit 0; fi
echo "${#jobs[@]} jobs, $JOBS at a time; logs in $LOGS"
for i in "${!jobs[@]}"; do printf '%s\0' "${jobs[$i]} > $LOGS/job$i.log 2>&1"; done |
  xargs -0 -P "$JOBS" -I{} bash -c '{} && echo "done: {}" || { echo "FAILED: {}"; exit 1; }'
