#!/usr/bin/env bash
# After training: export the weights into model_repository/ and measure them on
# held-out data through the real service. Writes docs/metrics/*.json and the PR plot.
#   bash training/finalize.sh VERSION [CLASSIFIER_RUN[,CLASSIFIER_RUN...]] [DETECTOR_RUN]
# Several classifier runs are exported as one ensemble (mean probability).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?weights version, e.g. 2026.11.27}
cls=${2:-training/runs/classifier}
det=${3:-training/runs/detector}
py=.venv/bin/python
IFS=, read -r -a cls_runs <<< "$cls"
checkpoints=()
for run in "${cls_runs[@]}"; do checkpoints+=("$run/best.pt"); done
$py -m training.export --classifier "${checkpoints[@]}" --detector "$det/best.pt" --version "$version" --tta
mkdir -p docs/metrics
data=../shared/data
.venv/bin/marrowdx --log-level warning eval crops $data/matek_bm --labels matek --split test \
  --json docs/metrics/matek_test.json --pr-png docs/metrics/matek_test_pr.png
.venv/bin/marrowdx --log-level warning eval crops $data/pbc --labels pbc --split test \
  --json docs/metrics/pbc_test.json --pr-png docs/metrics/pbc_test_pr.png
.venv/bin/marrowdx --log-level warning eval fields $data/txl_pbc/images/val --format yolo --json docs/metrics/txl_val.json
# Training logs are named after their runs (classifier-128, detector-ft, ...).
for run in "${cls_runs[@]}" "$det"; do cp "$run/metrics.jsonl" "docs/metrics/$(basename "$run")_training_log.jsonl"; done
$py -m training.model_card_metrics
