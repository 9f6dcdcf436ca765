#!/usr/bin/env bash
# Train classifier candidates side by side on one GPU, from a crop pack
# (python -m training.crop_pack --crop-size 192 --quality 85 --out PACK, which
# travels where ../shared/data cannot; a pack also serves smaller crop sizes).
# Small networks leave a big GPU mostly idle between kernel launches, so the
# candidates share one: on one H100 round 2's three took 5.6 min together.
#   bash training/train_on_gpu.sh PACK OUT_DIR [CANDIDATES]
# CANDIDATES (default training/gpu_rounds/round3.txt) has one candidate a line:
# a name, then its train_classifier flags. Each ends as OUT_DIR/NAME.tar
# (best.pt, summary.json, metrics.jsonl, log); choose among them on val, as
# served, with training.compare_classifiers.
# DEVICE=cpu EXTRA="--limit 8 --batch 8 --epochs 1" rehearses it without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
pack=${1:?crop pack}
out=${2:?output folder}
candidates=${3:-training/gpu_rounds/round3.txt}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
stop_after=${STOP_AFTER:-380}
export PYTHONPATH="$PWD/server:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out/runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
# How busy the GPU is, every 10 s: tells whether more candidates would fit beside these.
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 10 >"$out/gpu_use.csv" &
  monitor=$!
fi
$py -c "import torch, PIL, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'pillow', PIL.__version__)"

candidate() {
  local name=$1
  shift
  # --stop-after: a GPU busier than expected ends a run early, saved, instead of
  # the lease's time limit ending it with nothing.
  timeout $((stop_after + 60)) $py -m training.train_classifier --pack "$pack" --device "$device" --amp --quiet \
    --stop-after "$stop_after" --batch 128 --lr 4e-3 --ema 0.999 --weight-decay 0.05 \
    --out "$out/runs/$name" "$@" ${EXTRA:-} >"$out/runs/$name.log" 2>&1
  echo "$name exited $?"
  tail -n 2 "$out/runs/$name.log" | cut -c1-400
}
runs=()
while read -r name flags; do
  [[ -z $name || $name == \#* ]] && continue
  # shellcheck disable=SC2086 # the flags are words
  candidate "$name" $flags &
  runs+=($!)
done <"$candidates"
wait "${runs[@]}"
[[ -n ${monitor:-} ]] && kill "$monitor"

for log in "$out"/runs/*.log; do
  name=$(basename "$log" .log)
  cp "$log" "$out/runs/$name/" 2>/dev/null
  tar -C "$out/runs" -cf "$out/$name.tar" "$name" 2>/dev/null
done
rm -rf "$out/runs"
ls -la "$out"
