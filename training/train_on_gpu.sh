#!/usr/bin/env bash
# Train classifier candidates side by side on one GPU, from a crop pack
# (python -m training.crop_pack --crop-size 128 --out var/pack/crops-149.npz),
# each fitted to a wall-clock budget. Small networks leave a big GPU mostly
# idle between kernel launches, so several processes share it well.
#   bash training/train_on_gpu.sh PACK OUT_DIR [BUDGET_S]
# Each candidate ends as OUT_DIR/NAME.tar (best.pt, summary.json, metrics.jsonl,
# log), to be compared on val on this side with training.compare_classifiers.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=${1:?crop pack}
out=${2:?output folder}
budget=${3:-300}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu EXTRA="--limit 8" rehearses the script on a machine without one
export PYTHONPATH="$PWD/server:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out/runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import torch, PIL, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'pillow', PIL.__version__)"

# Loading, calibration and temperature fitting come on top of the budget; a run
# that finds the GPU busier than it measured stops at budget + 60 s and still saves.
stop_after=$((budget + 60))
hard_limit=$((budget + 150))
candidate() {
  local name=$1
  shift
  timeout "$hard_limit" $py -m training.train_classifier --pack "$pack" --crop-size 128 --device "$device" --amp \
    --quiet --time-budget "$budget" --stop-after "$stop_after" --epochs 400 --batch 128 --lr 4e-3 --ema 0.999 \
    --out "$out/runs/$name" ${EXTRA:-} "$@" >"$out/runs/$name.log" 2>&1
  echo "$name exited $?"
}
candidate w32 --width 32 &
candidate w44 --width 44 &
candidate w44-wd --width 44 --weight-decay 0.05 &
candidate w44-wd-mixup --width 44 --weight-decay 0.05 --mixup 0.2 &
wait

for log in "$out"/runs/*.log; do
  name=$(basename "$log" .log)
  echo "== $name"
  grep -E "ms a step|^train " "$log"
  tail -n 2 "$log"
  cp "$log" "$out/runs/$name/" 2>/dev/null
  tar -C "$out/runs" -cf "$out/$name.tar" "$name" 2>/dev/null
done
rm -rf "$out/runs"
ls -la "$out"
