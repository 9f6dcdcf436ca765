"""`marrowdx eval fields`: the served detector on whole fields with boxes
(YOLO txt or Pascal VOC xml), white cells, red cells and platelets at IoU 0.5."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from marrowdx.client import IMAGE_SUFFIXES, Client, image_message
from marrowdx.evaluation.detection import CategoryTally

# Dataset class names -> detector categories.
YOLO_CLASSES = {0: "nucleated", 1: "red_cell", 2: "platelet"}  # TXL-PBC labels/classes.txt
VOC_NAMES = {"wbc": "nucleated", "rbc": "red_cell", "platelets": "platelet", "platelet": "platelet"}
REPORT_NAMES = {"nucleated": "wbc", "red_cell": "rbc", "platelet": "platelets"}


def read_boxes(image_path: Path, label_root: Path, fmt: str) -> tuple[np.ndarray, list[str]]:
    if fmt == "yolo":
        with Image.open(image_path) as im:
            w, h = im.size
        label = label_root / f"{image_path.stem}.txt"
        boxes, names = [], []
        if label.exists():
            for line in label.read_text().split("\n"):
                parts = line.split()
                if len(parts) == 5 and int(parts[0]) in YOLO_CLASSES:
                    cx, cy, bw, bh = map(float, parts[1:])
                    boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
                    names.append(YOLO_CLASSES[int(parts[0])])
        return np.asarray(boxes, np.float32).reshape(-1, 4), names
    tree = ET.parse(label_root / f"{image_path.stem}.xml")
    boxes, names = [], []
    for obj in tree.findall("object"):
        name = VOC_NAMES.get(obj.findtext("name", "").strip().lower())
        bb = obj.find("bndbox")
        if name and bb is not None:
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            names.append(name)
    return np.asarray(boxes, np.float32).reshape(-1, 4), names


def locate(root: Path, fmt: str) -> tuple[Path, Path]:
    """Accept a YOLO split folder layout (images/, labels/ beside each other) or a flat folder."""
    if (root / "images").is_dir():
        labels = root / ("labels" if fmt == "yolo" else "annotations")
        return root / "images", labels if labels.is_dir() else root / "images"
    if root.parent.name == "images":  # .../images/val with .../labels/val
        return root, root.parent.parent / "labels" / root.name
    return root, root


def evaluate_fields(client: Client, root: Path, fmt: str, progress: bool = False) -> dict:
    image_dir, label_dir = locate(root, fmt)
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    # Recall and precision at the service's own score threshold (what a user gets).
    threshold = client.model_info().thresholds.detection_score
    tallies = {name: CategoryTally(score_threshold=threshold) for name in REPORT_NAMES}
    excluded_by_rule = 0
    for path in tqdm(images, desc="eval fields", disable=not progress, unit="field"):
        gt_boxes, gt_names = read_boxes(path, label_dir, fmt)
        response = client.analyze(image_message(path))
        for category, tally in tallies.items():
            cells = [c for c in response.cells if c.detector_category == category]
            pred = np.asarray([[c.box.x_min, c.box.y_min, c.box.x_max, c.box.y_max] for c in cells],
                              np.float32).reshape(-1, 4)
            scores = np.asarray([c.detection_score for c in cells], np.float32)
            truth = gt_boxes[[n == category for n in gt_names]]
            tally.add(pred, scores, truth)
        excluded_by_rule += sum(1 for c in response.cells if c.detector_category == "nucleated" and not c.countable)
    result = {"n_images": len(images), "iou_threshold": 0.5, "format": fmt,
              "nucleated_excluded_by_rules": excluded_by_rule}
    for category, tally in tallies.items():
        if tally.n_ground_truth:
            result[REPORT_NAMES[category]] = tally.summary()
    return result
