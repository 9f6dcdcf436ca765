"""`marrowdx eval blobs`: the whole service on fields whose cells of one class are outlined.

A lab that has outlined, say, the plasma cells of its own marrow fields (one
binary mask a field, touching cells may merge into one blob) runs the same
check as we do on SegPC:

- found: a nucleated detection is centred inside the blob;
- counted: found, and that cell was counted (not excluded as overlapping, cut by
  the edge, smudged or of low confidence);
- called: counted, and named as the outlined class.

Each detection serves one blob at most; a blob of several touching cells
counts once, so the figures are per blob. Every other cell of the field is
unlabelled: nothing here reads as a false positive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from marrowdx.client import IMAGE_SUFFIXES, Client, image_message
from marrowdx.domain.counting import wilson_interval
from marrowdx.evaluation.splits import split_of
from marrowdx.imaging.framing import label_components

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def label_blobs(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a binary mask (0 = background), numbered from 1."""
    return label_components(mask, eight=False)[0]


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        mask = im.convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.NEAREST)
        return np.asarray(mask) > 0


def find_mask(masks: Path, image: Path) -> Path | None:
    for suffix in MASK_SUFFIXES:
        candidate = masks / f"{image.stem}{suffix}"
        if candidate.exists():
            return candidate
    return None


def match_blobs(labels: np.ndarray, cells, cell_class: str) -> dict[int, str]:
    """Blob number -> 'called', 'counted' or 'found' (the best that any detection centred in it got)."""
    rank = {"found": 0, "counted": 1, "called": 2}
    best: dict[int, str] = {}
    height, width = labels.shape
    for cell in cells:
        if cell.detector_category != "nucleated":
            continue
        x = int(round((cell.box.x_min + cell.box.x_max) / 2))
        y = int(round((cell.box.y_min + cell.box.y_max) / 2))
        if not (0 <= x < width and 0 <= y < height) or not labels[y, x]:
            continue
        blob = int(labels[y, x])
        outcome = "called" if cell.countable and cell.cell_class == cell_class else (
            "counted" if cell.countable else "found")
        if blob not in best or rank[outcome] > rank[best[blob]]:
            best[blob] = outcome
    return best


def _rate(k: int, n: int) -> dict:
    low, high = wilson_interval(k, n)
    return {"n": k, "rate": round(k / n, 4) if n else None, "ci95": [round(low, 4), round(high, 4)]}


def evaluate_blobs(client: Client, images: Path, masks: Path, cell_class: str, split: str | None = None,
                   progress: bool = False, pixel_spacing_um: float = 0.0) -> dict:
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images.is_dir() else []
    if split:
        # The project's fixed split of a field folder (marrowdx.evaluation.splits), by file name.
        paths = [p for p in paths if split_of(f"images/{p.name}") == split]
    pairs = [(p, find_mask(masks, p)) for p in paths]
    pairs = [(p, m) for p, m in pairs if m is not None]
    if not pairs:
        raise ValueError(f"no image in {images} has a mask of the same name in {masks}"
                         + (f" (split {split})" if split else ""))
    blobs = found = counted = called = 0
    for image_path, mask_path in tqdm(pairs, desc="eval blobs", disable=not progress, unit="field"):
        with Image.open(image_path) as im:
            size = im.size
        labels = label_blobs(read_mask(mask_path, size))
        message = image_message(image_path)
        if pixel_spacing_um:  # the fields' scale, when the lab knows it (else the service estimates it)
            message.pixel_spacing_um = pixel_spacing_um
        response = client.analyze(message)
        outcome = match_blobs(labels, response.cells, cell_class)
        blobs += int(labels.max())
        found += len(outcome)
        counted += sum(o in ("counted", "called") for o in outcome.values())
        called += sum(o == "called" for o in outcome.values())
    return {"fields": len(pairs), "blobs": blobs, "cell_class": cell_class, "split": split or "all",
            "pixel_spacing_um": pixel_spacing_um or "estimated by the service",
            "found": _rate(found, blobs), "counted": _rate(counted, blobs),
            "called_of_counted": _rate(called, counted)}


def main(argv: list[str] | None = None) -> int:
    """python -m marrowdx.evaluation.blobs IMAGES MASKS [--split test] [--server HOST:PORT] [--json OUT]"""
    import argparse
    import json
    import sys

    from marrowdx.embedded import given_or_embedded
    from marrowdx.settings import Settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", type=Path)
    p.add_argument("masks", type=Path)
    p.add_argument("--cell-class", default="plasma_cell")
    p.add_argument("--split", choices=("train", "val", "test"))
    p.add_argument("--pixel-spacing", type=float, default=0.0, help="micrometres per pixel of every field")
    p.add_argument("--server")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    with given_or_embedded(args.server, Settings.from_env()) as address, Client(address) as client:
        try:
            result = evaluate_blobs(client, args.images, args.masks, args.cell_class, args.split,
                                    progress=sys.stderr.isatty(), pixel_spacing_um=args.pixel_spacing)
        except ValueError as exc:
            print(f"eval blobs: {exc}", file=sys.stderr)
            return 2
        result["models"] = {"detector": client.model_info().models.detector,
                            "classifier": client.model_info().models.classifier}
    result["note"] = "Research use only; figures per outlined blob on the split named."
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
