"""One object per cell across overlapping tiles (box geometry, plain numpy).

Tiles overlap (``imaging.tiling``), so a cell near a tile border is seen by
two or four tiles: whole in at least one of them when it is no wider than
the overlap, cut by the border in the others. The merge keeps one detection
per cell: the whole views first (then by score); any view from another tile
that is the same box (IoU above ``same_iou``, or each centre inside the
other box) or a part of it (lies mostly inside the kept one) is the same cell. A cell wider than the
overlap is cut in every tile; its parts merge into one box spanning them.
Views from the same tile are never merged here: the detector's own
duplicates are dropped per tile before (``cells.kept_detections``), and two
touching cells in one tile are two cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAME_IOU = 0.5
# A part of a cell cut by a tile edge lies at least this much inside the whole view.
PART_INSIDE = 0.6


@dataclass(frozen=True)
class Merged:
    index: np.ndarray  # the detection kept for each cell (its score and category)
    boxes: np.ndarray  # K x 4: its box, or the union of the parts when every view was cut


def _overlaps(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IoU, share of ``box`` inside each other box, share of each other box inside ``box``,
    and whether each centre lies inside the other box (both ways)."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    areas = np.maximum((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]), 1e-6)
    iou = inter / np.maximum(area + areas - inter, 1e-6)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    ocx, ocy = (others[:, 0] + others[:, 2]) / 2, (others[:, 1] + others[:, 3]) / 2
    mutual = ((cx >= others[:, 0]) & (cx <= others[:, 2]) & (cy >= others[:, 1]) & (cy <= others[:, 3])
              & (ocx >= box[0]) & (ocx <= box[2]) & (ocy >= box[1]) & (ocy <= box[3]))
    return iou, inter / area, inter / areas, mutual


def merge_tiles(boxes: np.ndarray, scores: np.ndarray, tiles: np.ndarray, cut: np.ndarray,
                same_iou: float = SAME_IOU, part_inside: float = PART_INSIDE) -> Merged:
    """Detections of all tiles (boxes in field pixels) -> one per object."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return Merged(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))
    scores, tiles, cut = np.asarray(scores), np.asarray(tiles), np.asarray(cut, bool)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Whole views first, then the larger part of a cut cell, then the score.
    order = np.lexsort((-scores, -area, cut))
    heads: list[int] = []
    group_boxes = np.zeros((0, 4), np.float32)  # the head's box; for a cut head, the union of the parts
    group_cut: list[bool] = []
    group_tiles: list[set[int]] = []
    for i in order:
        match = -1
        if len(heads):
            iou, in_group, group_in, mutual = _overlaps(boxes[i], group_boxes)
            gcut = np.asarray(group_cut)
            same = (iou > same_iou) | mutual | (cut[i] & (in_group > part_inside)) | (gcut & (group_in > part_inside))
            for g in np.flatnonzero(same):
                if int(tiles[i]) not in group_tiles[g]:
                    match = int(g)
                    break
        if match < 0:
            heads.append(int(i))
            group_boxes = np.vstack([group_boxes, boxes[i][None]])
            group_cut.append(bool(cut[i]))
            group_tiles.append({int(tiles[i])})
            continue
        group_tiles[match].add(int(tiles[i]))
        if group_cut[match]:  # no tile saw it whole: the union of its parts
            b = group_boxes[match]
            group_boxes[match] = [min(b[0], boxes[i, 0]), min(b[1], boxes[i, 1]),
                                  max(b[2], boxes[i, 2]), max(b[3], boxes[i, 3])]
    return Merged(np.asarray(heads, np.int64), group_boxes)
