"""Matching detections to ground-truth boxes at an IoU threshold."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from marrowdx.domain.cells import iou_matrix
from marrowdx.evaluation.metrics import interpolated_ap


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

