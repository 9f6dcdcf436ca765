#!/usr/bin/env bash
# Train classifier candidates side by side on one GPU, from a crop pack
# (python -m training.crop_pack --crop-size 128 --out var/pack/crops-149.npz,
# which travels where ../shared/data cannot). Small networks leave a big GPU
# mostly idle between kernel launches, so three processes share one well: on
# one H100 the three below took 5.6 min together.
#   bash training/train_on_gpu.sh PACK OUT_DIR
# Each candidate ends as OUT_DIR/NAME.tar (best.pt, summary.json, metrics.jsonl,
# log); choose among them on val, as served, with training.compare_classifiers.
# DEVICE=cpu EXTRA="--limit 8 --batch 8 --epochs 1" rehearses it without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=${1:?crop pack}
out=${2:?output folder}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONPATH="$PWD/server:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out/runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$py -c "import torch, PIL, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'pillow', PIL.__version__)"

candidate() {
  local name=$1
  shift
  # --stop-after: a GPU busier than expected ends a run early, saved, instead of
  # the lease's time limit ending it with nothing.
  timeout 440 $py -m training.train_classifier --pack "$pack" --crop-size 128 --device "$device" --amp --quiet \
    --stop-after 380 --batch 128 --lr 4e-3 --ema 0.999 --weight-decay 0.05 \
    --out "$out/runs/$name" "$@" ${EXTRA:-} >"$out/runs/$name.log" 2>&1
  echo "$name exited $?"
  tail -n 2 "$out/runs/$name.log" | cut -c1-400
}
candidate w32-wd-e200 --width 32 --epochs 200 &
candidate w44-wd-e150 --width 44 --epochs 150 &
candidate w44-wd-e150-matek2 --width 44 --epochs 150 --dataset-weights matek=2 &
wait

for log in "$out"/runs/*.log; do
  name=$(basename "$log" .log)
  cp "$log" "$out/runs/$name/" 2>/dev/null
  tar -C "$out/runs" -cf "$out/$name.tar" "$name" 2>/dev/null
done
rm -rf "$out/runs"
ls -la "$out"
