"""Dataset indexing, the fixed train/val/test split, and decoded-image caches.

The split itself lives in marrowdx.evaluation.splits, shared with evaluation.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from marrowdx.domain.taxonomy import Taxonomy
from marrowdx.evaluation.splits import split_of
from marrowdx.imaging.crops import frame_dataset_crop, resize_crop

DEFAULT_DATA_ROOT = Path(os.environ.get("MARROWDX_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
# Crops are cached a little larger than the network input so random scale and
# rotation have real pixels to draw from (112 for a 96 px input).
CACHE_MARGIN = 112 / 96


def cache_size_for(crop_size: int) -> int:
    return round(crop_size * CACHE_MARGIN)


CROP_CACHE_SIZE = cache_size_for(96)  # the detector's pasted crops


@dataclass(frozen=True)
class CropItem:
    path: Path
    dataset: str
    folder: str
    targets: tuple[str, ...]
    split: str


def index_crops(root: Path, dataset: str, taxonomy: Taxonomy) -> list[CropItem]:
    """Every image under ``root/<folder>/`` with its taxonomy targets and split."""
    items = []
    for folder in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for path in sorted((root / folder).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = f"{folder}/{path.name}"
            targets = taxonomy.dataset_targets(dataset, folder, path.name)
            items.append(CropItem(path, dataset, folder, targets, split_of(rel)))
    return items


def trained_classes_of(target_sets: list[tuple[str, ...]], minimum: int = 1) -> list[str]:
    """Classes a training set teaches: those with at least ``minimum`` examples labelled that
    class alone, and those a set-valued label teaches because every other class of its set is
    taught alone (Matek's not-identifiable cells, uncountable or smudge, teach 'uncountable'). A
    class met only beside untrained alternatives, such as the possible lineages of a Matek blast,
    is not trained: the model never learnt to tell it from them."""
    single: dict[str, int] = {}
    for targets in target_sets:
        if len(targets) == 1:
            single[targets[0]] = single.get(targets[0], 0) + 1
    trained = {c for c, n in single.items() if n >= minimum}
    taught: dict[str, int] = {}
    for targets in target_sets:
        if len(targets) > 1:
            for c in targets:
                if all(o in trained for o in targets if o != c):
                    taught[c] = taught.get(c, 0) + 1
    return sorted(trained | {c for c, n in taught.items() if n >= minimum})


def rows_by_class(items: list[CropItem]) -> dict[tuple[str, str], list[int]]:
    """Row numbers of the crops of each (dataset, label folder), in listing order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for row, item in enumerate(items):
        groups.setdefault((item.dataset, item.folder), []).append(row)
    return groups


def folds_of(items: list[CropItem], folds: int) -> list[int]:
    """Stratified cross-validation folds: within each class of each dataset the
    crops, ordered by a hash of their name, are dealt to the folds in turn, so
    every fold holds its share of every class, and the same crops get the same
    folds in any order (the pack and the source images agree)."""
    if folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {folds}")

    def name_hash(row: int) -> str:
        item = items[row]
        return hashlib.sha1(f"{item.dataset}/{item.folder}/{item.path.name}".encode()).hexdigest()

    fold = [0] * len(items)
    for rows in rows_by_class(items).values():
        for position, row in enumerate(sorted(rows, key=name_hash)):
            fold[row] = position % folds
    return fold


def frame_crop(image: Image.Image, dataset: str, size: int = CROP_CACHE_SIZE) -> np.ndarray:
    return resize_crop(frame_dataset_crop(image.convert("RGB"), dataset), size)


def load_crop_cache(items: list[CropItem], size: int = CROP_CACHE_SIZE) -> np.ndarray:
    """Decoded, framed crops for these items (N x size x size x 3), cached as one .npy."""
    key = hashlib.sha1("\n".join(str(i.path) for i in items).encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"crops-{size}-{key}.npy"
    if cache.exists():
        return np.load(cache)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    array = np.stack([frame_crop(Image.open(i.path), i.dataset, size) for i in items])
    np.save(cache, array)
    return array


@dataclass(frozen=True)
class FieldItem:
    image_path: Path
    boxes: np.ndarray  # K x 4, x0 y0 x1 y1 in pixels
    classes: np.ndarray  # K, dataset class ids


def read_yolo_labels(label_path: Path, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    boxes, classes = [], []
    if label_path.exists():
        for line in label_path.read_text().splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue
            cls, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:])
            boxes.append([(cx - bw / 2) * width, (cy - bh / 2) * height, (cx + bw / 2) * width, (cy + bh / 2) * height])
            classes.append(cls)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def index_yolo_fields(root: Path, split: str) -> list[FieldItem]:
    items = []
    for path in sorted((root / "images" / split).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with Image.open(path) as im:
            w, h = im.size
        boxes, classes = read_yolo_labels(root / "labels" / split / f"{path.stem}.txt", w, h)
        items.append(FieldItem(path, boxes, classes))
    return items


def training_arguments(parser: argparse.ArgumentParser, out: str, epochs: int, batch: int, lr: float) -> None:
    """The flags both training commands share."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--out", default=out)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many items per dataset and split")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--quiet", action="store_true")
