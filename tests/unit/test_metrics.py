"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from marrowdx.domain.cells import iou_matrix
from marrowdx.evaluation.detection import CategoryTally
from marrowdx.evaluation.metrics import average_precision, classification_report


def test_classification_report_by_hand():
    true = ["a", "a", "b", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "other", "c"]
    r = classification_report(true, pred, ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert "other" in r["confusion"]["cols"]


def test_average_precision_perfect_and_worst():
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == pytest.approx(1.0)
    assert average_precision(np.array([0.9, 0.1]), np.array([False, True])) == pytest.approx(0.5)


def test_iou():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0.0]])


def test_tally_counts_each_ground_truth_once():
    t = CategoryTally(score_threshold=0.3)
    gt = np.array([[0, 0, 10, 10]], np.float32)
    preds = np.array([[0, 0, 10, 10], [1, 0, 10, 10]], np.float32)  # a duplicate
    t.add(preds, np.array([0.9, 0.8], np.float32), gt)
    s = t.summary()
    assert s["recall"] == 1.0 and s["precision"] == 0.5
    assert s["ap50"] == pytest.approx(1.0)
