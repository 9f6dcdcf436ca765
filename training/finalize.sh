#!/usr/bin/env bash
# After training: export the weights into model_repository/ and measure them on
# held-out data through the real service. Writes docs/metrics/*.json and the PR plot.
#   bash training/finalize.sh VERSION [CLASSIFIER_RUN] [DETECTOR_RUN]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?weights version, e.g. 2026.11.27}
cls=${2:-training/runs/classifier}
det=${3:-training/runs/detector}
py=.venv/bin/python
$py -m training.export --classifier "$cls/best.pt" --detector "$det/best.pt" --version "$version" --tta
mkdir -p docs/metrics
data=../shared/data
.venv/bin/marrowdx --log-level warning eval crops $data/matek_bm --labels matek --split test \
  --json docs/metrics/matek_test.json --pr-png docs/metrics/matek_test_pr.png
.venv/bin/marrowdx --log-level warning eval crops $data/pbc --labels pbc --split test \
  --json docs/metrics/pbc_test.json --pr-png docs/metrics/pbc_test_pr.png
.venv/bin/marrowdx --log-level warning eval fields $data/txl_pbc/images/val --format yolo --json docs/metrics/txl_val.json
cp "$cls/metrics.jsonl" docs/metrics/classifier_training_log.jsonl
# The detector's log is named after its run (detector, or detector-ft for the fine-tuning stage).
cp "$det/metrics.jsonl" "docs/metrics/$(basename "$det")_training_log.jsonl"
$py -m training.model_card_metrics
