"""Which detected objects may be counted, and the call for each cell.

Plain functions over boxes and probabilities: the rules a morphologist
applies before counting (skip smudged, cut-off, overlapping and
unidentifiable cells), made explicit and testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from marrowdx.domain.taxonomy import UNCOUNTABLE, Taxonomy


class Exclusion(StrEnum):
    NONE = "none"
    SMUDGE = "smudge"
    CUT_BY_EDGE = "cut_by_edge"
    OVERLAPPING = "overlapping"
    NOT_IDENTIFIABLE = "not_identifiable"
    LOW_CONFIDENCE = "low_confidence"
    RED_CELL = "red_cell"
    PLATELET = "platelet"
    ARTEFACT = "artefact"


DETECTOR_EXCLUSIONS = {"red_cell": Exclusion.RED_CELL, "platelet": Exclusion.PLATELET, "smudge": Exclusion.SMUDGE,
                       "artefact": Exclusion.ARTEFACT}


@dataclass(frozen=True)
class Thresholds:
    detection_score: float = 0.36
    reject_probability: float = 0.5
    overlap_iou: float = 0.25
    duplicate_iou: float = 0.5
    edge_margin_px: float = 2.0
    minimum_count: int = 300
    target_count: int = 500


@dataclass(frozen=True)
class CellCall:
    source_index: int
    image_id: str
    box: tuple[float, float, float, float] | None
    detection_score: float
    detector_category: str
    exclusion: Exclusion
    cell_class: str
    top_k: tuple[tuple[str, float], ...]

    @property
    def countable(self) -> bool:
        return self.exclusion is Exclusion.NONE


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two K x 4 box arrays (x0, y0, x1, y1)."""
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


def suppress_duplicates(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices to keep, best first: a centre-point detector can put two peaks on one
    large cell (a lobed nucleus); boxes overlapping a better one by more than
    ``iou_threshold`` are the same object, whatever category each peak chose."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    iou = iou_matrix(boxes[order], boxes[order])
    keep: list[int] = []
    for rank in range(len(order)):
        if all(iou[rank, k] <= iou_threshold for k in keep):
            keep.append(rank)
    return order[keep]


def kept_detections(boxes: np.ndarray, scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Indices of the detections that are objects: scoring at least the threshold, duplicates dropped."""
    keep = np.flatnonzero(scores >= thresholds.detection_score)
    return keep[suppress_duplicates(boxes[keep], scores[keep], thresholds.duplicate_iou)]


def geometric_exclusions(boxes: np.ndarray, nucleated: np.ndarray, width: int, height: int,
                         thresholds: Thresholds) -> list[Exclusion]:
    """Edge and overlap exclusions for nucleated cells (others get NONE here)."""
    out = [Exclusion.NONE] * len(boxes)
    idx = np.where(nucleated)[0]
    m = thresholds.edge_margin_px
    for i in idx:
        x0, y0, x1, y1 = boxes[i]
        if x0 <= m or y0 <= m or x1 >= width - m or y1 >= height - m:
            out[i] = Exclusion.CUT_BY_EDGE
    if len(idx) > 1:
        iou = iou_matrix(boxes[idx], boxes[idx])
        np.fill_diagonal(iou, 0)
        for row, i in enumerate(idx):
            if out[i] is Exclusion.NONE and iou[row].max() > thresholds.overlap_iou:
                out[i] = Exclusion.OVERLAPPING
    return out


def call_from_probabilities(probs: np.ndarray, taxonomy: Taxonomy, thresholds: Thresholds,
                            top_k: int) -> tuple[str, Exclusion, tuple[tuple[str, float], ...]]:
    """Class call for one crop with the reject path: 'uncountable' or a low top
    probability exclude the cell instead of guessing a class.

    Blasts are judged as one group first: a cell is a blast when the blast-equivalent
    classes together are its most probable choice and clear the reject threshold, and it
    is then called the most probable lineage among them. Without this, a blast whose
    lineage the model splits (say 0.45 myeloblast, 0.40 lymphoblast) would be rejected as
    low-confidence although the model is sure it is a blast; which lineage it is stays
    as uncertain as the probabilities say, and the rules bound that with the measured
    confusion of the lineage calls."""
    order = np.argsort(-probs)
    ranked = tuple((taxonomy.codes[i], float(probs[i])) for i in order[: max(1, top_k)])
    best_code, best_p = ranked[0]
    blast_rows = [i for i, c in enumerate(taxonomy.classes) if c.blast_equivalent]
    if blast_rows:
        blast_mass = float(probs[blast_rows].sum())
        if blast_mass > best_p or best_code in {taxonomy.codes[i] for i in blast_rows}:
            best_code = taxonomy.codes[blast_rows[int(np.argmax(probs[blast_rows]))]]
            best_p = blast_mass
            if blast_mass < float(np.max(np.delete(probs, blast_rows), initial=0.0)):
                best_code, best_p = ranked[0]  # another class beats every blast together
    if best_code == UNCOUNTABLE:
        return best_code, Exclusion.NOT_IDENTIFIABLE, ranked
    if not taxonomy.by_code(best_code).countable:
        return best_code, DETECTOR_EXCLUSIONS.get(best_code, Exclusion.ARTEFACT), ranked
    if best_p < thresholds.reject_probability:
        return best_code, Exclusion.LOW_CONFIDENCE, ranked
    return best_code, Exclusion.NONE, ranked
