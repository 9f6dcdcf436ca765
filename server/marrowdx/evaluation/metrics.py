"""Classification metrics at a dataset's own label granularity (no sklearn)."""

from __future__ import annotations

import numpy as np


def classification_report(true: list[str], pred: list[str], labels: list[str]) -> dict:
    """Accuracy, macro P/R/F1 over ``labels`` (the dataset's classes), per-class figures, confusion."""
    index = {label: i for i, label in enumerate(labels)}
    cols = labels + sorted({p for p in pred if p not in index})
    col_index = {label: i for i, label in enumerate(cols)}
    confusion = np.zeros((len(labels), len(cols)), dtype=np.int64)
    for t, p in zip(true, pred, strict=True):
        confusion[index[t], col_index[p]] += 1
    per_class = {}
    for label in labels:
        i, j = index[label], col_index[label]
        tp = confusion[i, j]
        support = confusion[i].sum()
        predicted = confusion[:, j].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(support)}
    n = len(true)
    return {
        "n": n,
        "accuracy": float(np.trace(confusion[:, : len(labels)]) / n) if n else 0.0,
        "macro_precision": float(np.mean([v["precision"] for v in per_class.values()])),
        "macro_recall": float(np.mean([v["recall"] for v in per_class.values()])),
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "per_class": per_class,
        "confusion": {"rows": labels, "cols": cols, "matrix": confusion.tolist()},
    }


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve (all-point interpolation, as VOC 2010+)."""
    if positives.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / positives.sum()
    return interpolated_ap(recall, precision)


def interpolated_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
