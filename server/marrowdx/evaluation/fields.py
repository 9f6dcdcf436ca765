"""`marrowdx eval fields`: the served detector on whole fields with boxes
(YOLO txt or Pascal VOC xml), white cells, red cells and platelets at IoU 0.5.

Layouts a lab's own labelled fields come in:

- Pascal VOC: ``ROOT/JPEGImages/*.jpg`` and ``ROOT/Annotations/*.xml`` (the
  standard layout), or images and xml side by side in one folder;
- YOLO: ``ROOT/images`` and ``ROOT/labels`` (or ``images/<split>`` with
  ``labels/<split>``), or images and txt side by side; class ids 0 WBC, 1 RBC,
  2 platelets (TXL-PBC's ``classes.txt``).

VOC object names are matched in any case and in the usual spellings (WBC,
leukocyte, neutrophil, lymphocyte, ... are white cells). A folder with no
image, or a VOC folder with no annotation at all, is an error, not a report
of zero images.
"""

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
VOC_NAMES = {"wbc": "nucleated", "rbc": "red_cell", "platelets": "platelet", "platelet": "platelet",
             "white_blood_cell": "nucleated", "leukocyte": "nucleated", "leucocyte": "nucleated",
             "red_blood_cell": "red_cell", "erythrocyte": "red_cell", "thrombocyte": "platelet", "plt": "platelet"}


def voc_category(name: str) -> str | None:
    """A VOC object name -> detector category: the names above, or any white-cell class
    name the crop evaluation knows (a lab that boxed neutrophils and lymphocytes)."""
    from marrowdx.evaluation.crops import normalised_name, white_cell_codes

    key = normalised_name(name)
    if key in VOC_NAMES:
        return VOC_NAMES[key]
    codes = white_cell_codes(key)
    return "nucleated" if codes else None
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
    xml = label_root / f"{image_path.stem}.xml"
    boxes, names = [], []
    if not xml.exists():
        return np.zeros((0, 4), np.float32), names
    tree = ET.parse(xml)
    for obj in tree.findall("object"):
        name = voc_category(obj.findtext("name", ""))
        bb = obj.find("bndbox")
        if name and bb is not None:
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
            names.append(name)
    return np.asarray(boxes, np.float32).reshape(-1, 4), names


def locate(root: Path, fmt: str) -> tuple[Path, Path]:
    """Accept the VOC layout (JPEGImages/, Annotations/), a YOLO split folder layout
    (images/, labels/ beside each other) or a flat folder."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if fmt == "voc" and (root / "JPEGImages").is_dir():
        return root / "JPEGImages", root / "Annotations"
    if (root / "images").is_dir():
        labels = root / ("labels" if fmt == "yolo" else "annotations")
        return root / "images", labels if labels.is_dir() else root / "images"
    if root.parent.name == "images":  # .../images/val with .../labels/val
        return root, root.parent.parent / "labels" / root.name
    return root, root


def evaluate_fields(client: Client, root: Path, fmt: str, progress: bool = False) -> dict:
    image_dir, label_dir = locate(root, fmt)
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}; a {fmt.upper()} folder "
                         + ("has JPEGImages/ and Annotations/" if fmt == "voc" else "has images/ and labels/"))
    suffix = ".txt" if fmt == "yolo" else ".xml"
    labelled = sum((label_dir / f"{p.stem}{suffix}").exists() for p in images)
    if not labelled:
        raise ValueError(f"none of the {len(images)} images in {image_dir} has a {suffix} label of the same "
                         f"name in {label_dir}")
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
    result = {"n_images": len(images), "n_unlabelled": len(images) - labelled, "iou_threshold": 0.5, "format": fmt,
              "nucleated_excluded_by_rules": excluded_by_rule}
    for category, tally in tallies.items():
        if tally.n_ground_truth:
            result[REPORT_NAMES[category]] = tally.summary()
    return result
