"""Matching detections to ground-truth boxes at an IoU threshold."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from marrowdx.evaluation.metrics import interpolated_ap


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class CategoryTally:
    """Greedy score-ordered matching, accumulated over images (VOC/COCO style)."""

    iou_threshold: float = 0.5
    score_threshold: float = 0.3
    n_ground_truth: int = 0
    scores: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)

    def add(self, pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray) -> None:
        self.n_ground_truth += len(gt_boxes)
        order = np.argsort(-pred_scores, kind="stable")
        ious = iou_matrix(pred_boxes[order], gt_boxes)
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for row, p in enumerate(order):
            hit = False
            if len(gt_boxes):
                candidates = np.where(~taken, ious[row], -1.0)
                best = int(np.argmax(candidates))
                if candidates[best] >= self.iou_threshold:
                    taken[best] = True
                    hit = True
            self.scores.append(float(pred_scores[p]))
            self.hits.append(hit)

    def summary(self) -> dict:
        scores = np.asarray(self.scores)
        hits = np.asarray(self.hits, dtype=bool)
        kept = scores >= self.score_threshold
        tp = int(hits[kept].sum())
        n_pred = int(kept.sum())
        # AP over all predictions; recall is relative to every ground-truth box.
        ap = float("nan")
        if self.n_ground_truth:
            order = np.argsort(-scores, kind="stable")
            cum_tp = np.cumsum(hits[order])
            precision = cum_tp / np.arange(1, len(order) + 1)
            recall = cum_tp / self.n_ground_truth
            ap = interpolated_ap(recall, precision) if len(order) else 0.0
        return {
            "n_ground_truth": self.n_ground_truth,
            "n_predicted": n_pred,
            "recall": tp / self.n_ground_truth if self.n_ground_truth else float("nan"),
            "precision": tp / n_pred if n_pred else float("nan"),
            "ap50": ap,
            "score_threshold": self.score_threshold,
        }

