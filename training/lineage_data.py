"""Every labelled cell the classifier can learn from, one list across sources.

Matek (marrow) and PBC (blood) are crop folders indexed by ``training.data``.
Three sources added for lineage and plasma cells need more than a folder:

- ``deepapl`` (AML and APL patients' blood, Sidhom et al. 2021): the lineage of a
  cell follows from its patient's diagnosis (``manifest.csv``). A blast of an AML
  patient is a myeloblast; a promyelocyte of an APL patient is an abnormal
  (leukaemic) promyelocyte; a blast of an APL patient is myeloid, either a
  myeloblast or a hypogranular abnormal promyelocyte, so it keeps both targets.
  Splits are by patient, never by cell.
- ``aria`` (B-ALL and benign blood fields, Aria et al. 2021): one label a field,
  no boxes. White cells are found by their stain (:func:`find_white_cells`); a
  cell of an ALL field is a lymphoblast, a cell of a benign field is some
  non-blast white cell (hematogones and lymphocytes mostly, but neutrophils and
  monocytes occur), so it keeps every non-blast target rather than a guess.
- ``segpc`` (myeloma marrow fields, Gupta et al. 2021): each blob of the
  plasma-cell mask that has the size and shape of one cell is a plasma cell.
  Other nuclei of those fields are unlabelled and never used as negatives.

A cell of a field is cropped like a detection crop (``square_crop``), so these
crops are framed as the service frames the detector's boxes.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from marrowdx.domain.taxonomy import Taxonomy
from marrowdx.evaluation.splits import split_of
from marrowdx.imaging.crops import square_crop
from marrowdx.imaging.framing import otsu_threshold
from training.data import DEFAULT_DATA_ROOT, frame_crop, index_crops

# deepapl folders -> taxonomy targets; 'blast' and 'promyelocyte' depend on the patient.
DEEPAPL_CLASSES = {
    "basophil": ("basophil",), "eosinophil": ("eosinophil",), "erythroblast": ("erythroblast",),
    "giant_platelet": ("platelet",), "lymphocyte": ("lymphocyte",), "lymphocyte_variant": ("reactive_lymphocyte",),
    "metamyelocyte": ("metamyelocyte",), "monocyte": ("monocyte",), "myelocyte": ("myelocyte",),
    "neutrophil_band": ("band_neutrophil",), "neutrophil_segmented": ("segmented_neutrophil",),
    "plasma_cell": ("plasma_cell",), "promonocyte": ("promonocyte",), "smudge": ("smudge",),
}
# A white cell of a benign Aria field: any white cell of normal blood except a blast.
NON_BLAST_WHITE_CELLS = ("lymphocyte", "reactive_lymphocyte", "segmented_neutrophil", "band_neutrophil",
                         "monocyte", "eosinophil", "basophil", "erythroblast")
ARIA_FOLDERS = {"benign": NON_BLAST_WHITE_CELLS, "early": ("lymphoblast",), "pre": ("lymphoblast",),
                "pro": ("lymphoblast",)}


@dataclass(frozen=True)
class Cell:
    """One labelled cell: a whole crop file, or a box in a field image."""

    dataset: str
    path: Path
    label: str  # the source's own label (folder)
    targets: tuple[str, ...]
    split: str  # train / val / test (by patient for deepapl, by field for aria and segpc)
    group: str  # patient (deepapl) or field (aria, segpc); the file for crop folders
    diagnosis: str = ""  # deepapl: AML / APL; aria: benign / early / pre / pro
    box: tuple[int, int, int, int] | None = None

    @property
    def key(self) -> str:
        box = "" if self.box is None else ":" + ",".join(map(str, self.box))
        return f"{self.dataset}/{self.label}/{self.path.name}{box}"


def _bucket_split(name: str) -> str:
    return split_of(name)


def deepapl_cells(root: Path) -> list[Cell]:
    cells = []
    with (root / "manifest.csv").open() as handle:
        for row in csv.DictReader(handle):
            folder, patient, diagnosis = row["cell_class"], row["patient"], row["diagnosis"]
            if folder == "blast":
                targets = ("myeloblast",) if diagnosis == "AML" else ("myeloblast", "abnormal_promyelocyte")
            elif folder == "promyelocyte":
                targets = ("abnormal_promyelocyte",) if diagnosis == "APL" else ("promyelocyte",)
            else:
                targets = DEEPAPL_CLASSES[folder]
            cells.append(Cell("deepapl", root / row["file"], folder, targets, _bucket_split(patient), patient, diagnosis))
    return cells


def find_white_cells(image: Image.Image, min_area: int = 180, max_area: int = 1400,
                     floor: float = 25.0) -> list[tuple[int, int, int, int]]:
    """Boxes of single white-cell nuclei in a Romanowsky-stained field, by colour.

    Nuclei are violet: green is absorbed far more than red and blue, so
    (R + B) / 2 - G separates them from red cells and background (Otsu's
    threshold, never below ``floor``). Blobs of one cell's size and a compact
    shape are kept; merged clumps, fragments and cells cut by the edge are not,
    so every box is one countable cell. Areas are for Aria's 224 px fields.
    """
    from scipy import ndimage

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    violet = (rgb[..., 0] + rgb[..., 2]) / 2 - rgb[..., 1]
    mask = violet > max(otsu_threshold(violet), floor)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=1))
    labels, _ = ndimage.label(mask)
    height, width = mask.shape
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        y0, y1, x0, x1 = region[0].start, region[0].stop, region[1].start, region[1].stop
        area = int((labels[region] == index).sum())
        h, w = y1 - y0, x1 - x0
        if not min_area <= area <= max_area:
            continue
        if max(h, w) > 1.5 * min(h, w) or area < 0.6 * h * w:
            continue  # two cells touching, or a fragment
        if x0 <= 1 or y0 <= 1 or x1 >= width - 1 or y1 >= height - 1:
            continue  # cut by the field's edge
        boxes.append((x0, y0, x1, y1))
    return boxes


def aria_cells(root: Path) -> list[Cell]:
    cells = []
    for folder, targets in ARIA_FOLDERS.items():
        for path in sorted((root / folder).glob("*.jp*g")):
            split = _bucket_split(f"{folder}/{path.name}")
            for box in find_white_cells(Image.open(path)):
                cells.append(Cell("aria", path, folder, targets, split, f"{folder}/{path.name}", folder, box))
    return cells


def segpc_cells(root: Path, min_side: int = 40, max_side: int = 130) -> list[Cell]:
    """Plasma cells: mask blobs the size and shape of one cell (merged blobs are left out)."""
    from scipy import ndimage

    cells = []
    for mask_path in sorted((root / "masks").glob("*.png")):
        image_path = root / "images" / (mask_path.stem + ".jpg")
        if not image_path.exists():
            continue
        labels, _ = ndimage.label(np.asarray(Image.open(mask_path)) > 0)
        split = _bucket_split(f"images/{image_path.name}")
        for region in ndimage.find_objects(labels):
            y0, y1, x0, x1 = region[0].start, region[0].stop, region[1].start, region[1].stop
            h, w = y1 - y0, x1 - x0
            if not (min_side <= min(h, w) and max(h, w) <= max_side and max(h, w) <= 1.4 * min(h, w)):
                continue
            cells.append(Cell("segpc", image_path, "plasma_cell", ("plasma_cell",), split, image_path.name, "",
                              (x0, y0, x1, y1)))
    return cells


def crop_folder_cells(root: Path, dataset: str, taxonomy: Taxonomy) -> list[Cell]:
    return [Cell(dataset, item.path, item.folder, item.targets, item.split, item.path.name)
            for item in index_crops(root, dataset, taxonomy)]


SOURCES = ("matek", "pbc", "deepapl", "aria", "segpc")
FOLDERS = {"matek": "matek_bm", "pbc": "pbc", "deepapl": "deepapl", "aria": "aria_all", "segpc": "segpc_bm"}


def all_cells(taxonomy: Taxonomy, data: Path = DEFAULT_DATA_ROOT, sources: tuple[str, ...] = SOURCES) -> list[Cell]:
    """Cells of every source present under ``data`` (a missing folder is skipped)."""
    cells: list[Cell] = []
    for source in sources:
        root = data / FOLDERS[source]
        if not root.is_dir():
            continue
        if source in ("matek", "pbc"):
            cells += crop_folder_cells(root, source, taxonomy)
        elif source == "deepapl":
            cells += deepapl_cells(root)
        elif source == "aria":
            cells += aria_cells(root)
        else:
            cells += segpc_cells(root)
    unknown = {t for c in cells for t in c.targets} - set(taxonomy.codes)
    if unknown:
        raise ValueError(f"targets missing from taxonomy {taxonomy.version}: {sorted(unknown)}")
    return cells


def load_crops(cells: list[Cell], size: int) -> np.ndarray:
    """N x size x size x 3 uint8, each framed as the service frames it; fields are opened once."""
    out = np.empty((len(cells), size, size, 3), dtype=np.uint8)
    by_image: dict[Path, list[int]] = defaultdict(list)
    for row, cell in enumerate(cells):
        by_image[cell.path].append(row)
    for path, rows in by_image.items():
        image = Image.open(path).convert("RGB")
        for row in rows:
            cell = cells[row]
            if cell.box is None:
                out[row] = frame_crop(image, cell.dataset, size)
            else:
                out[row] = square_crop(image, np.asarray(cell.box, dtype=np.float32), size)
    return out


def patient_folds(cells: list[Cell], folds: int, seed: str = "deepapl") -> dict[str, int]:
    """Patients of ``deepapl`` dealt to folds within each diagnosis (APL patients spread evenly),
    in an order fixed by a hash of the patient id, so any machine gets the same folds."""
    by_diagnosis: dict[str, set[str]] = defaultdict(set)
    for cell in cells:
        if cell.dataset == "deepapl":
            by_diagnosis[cell.diagnosis].add(cell.group)
    fold_of: dict[str, int] = {}
    offset = 0
    for diagnosis in sorted(by_diagnosis):
        patients = sorted(by_diagnosis[diagnosis], key=lambda p: hashlib.sha1(f"{seed}/{p}".encode()).hexdigest())
        for position, patient in enumerate(patients):
            fold_of[patient] = (position + offset) % folds
        offset += len(patients)
    return fold_of
