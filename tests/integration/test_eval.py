"""`marrowdx eval` through the real service, on the committed samples."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from marrowdx.evaluation.crops import evaluate_crops, plot_curves
from marrowdx.evaluation.fields import evaluate_fields

pytestmark = pytest.mark.integration
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def test_eval_crops_scores_at_the_dataset_granularity(client, tmp_path):
    rows = list(csv.DictReader((SAMPLES / "demo-case" / "labels.csv").open()))[::8]
    for row in rows:
        (tmp_path / row["matek_label"]).mkdir(exist_ok=True)
        shutil.copy(SAMPLES / "demo-case" / "crops" / row["file"], tmp_path / row["matek_label"] / row["file"])
    report, curves = evaluate_crops(client, tmp_path, "matek")
    assert report["n"] == len(rows)
    assert set(report["per_class"]) == {r["matek_label"] for r in rows}
    assert 0.5 < report["accuracy"] <= 1.0 and 0 < report["coverage"] <= 1.0
    # Classes no real data trains stay listed as untrained (megakaryocytic and tumour cells, for one).
    assert "megakaryoblast" in report["untrained_classes"] and "lymphoblast" not in report["untrained_classes"]
    plot_curves(curves, tmp_path / "pr.png", "test")
    assert (tmp_path / "pr.png").stat().st_size > 1000


def test_eval_fields_reports_white_cell_recall_and_precision(client):
    report = evaluate_fields(client, SAMPLES / "fields", "yolo")
    assert report["n_images"] == 3
    assert report["wbc"]["recall"] == 1.0 and report["wbc"]["precision"] > 0.5
    assert report["wbc"]["score_threshold"] == client.model_info().thresholds.detection_score
