"""Choose the detector's score threshold on TXL-PBC *train* fields (never val):
run the served detector with a very low threshold, match white cells at IoU
0.5, and print precision/recall per threshold; the chosen one is the lowest
whose train precision is at least --min-precision.

    .venv/bin/python -m training.choose_threshold --min-precision 0.97
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from marrowdx.client import IMAGE_SUFFIXES, Client, image_message
from marrowdx.embedded import embedded_service
from marrowdx.evaluation.detection import CategoryTally
from marrowdx.evaluation.fields import locate, read_boxes
from marrowdx.settings import PROJECT_ROOT, Settings

DEFAULT_TRAIN = PROJECT_ROOT.parent / "shared" / "data" / "txl_pbc" / "images" / "train"
THRESHOLDS = [round(t, 2) for t in np.arange(0.05, 0.51, 0.01)]


def sweep(client: Client, root: Path, progress: bool) -> CategoryTally:
    image_dir, label_dir = locate(root, "yolo")
    tally = CategoryTally(score_threshold=0.0)
    for path in tqdm(sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                     desc="fields", disable=not progress, unit="field"):
        gt_boxes, names = read_boxes(path, label_dir, "yolo")
        cells = [c for c in client.analyze(image_message(path)).cells if c.detector_category == "nucleated"]
        pred = np.asarray([[c.box.x_min, c.box.y_min, c.box.x_max, c.box.y_max] for c in cells], np.float32).reshape(-1, 4)
        tally.add(pred, np.asarray([c.detection_score for c in cells], np.float32),
                  gt_boxes[[n == "nucleated" for n in names]])
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=Path, default=DEFAULT_TRAIN, help="a TXL-PBC images/train folder")
    parser.add_argument("--min-precision", type=float, default=0.97)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    settings = Settings.from_env(state_dir=PROJECT_ROOT / "var" / "threshold", detection_score=THRESHOLDS[0])
    with embedded_service(settings) as address, Client(address) as client:
        tally = sweep(client, args.fields, sys.stderr.isatty())
    rows = []
    for t in THRESHOLDS:
        tally.score_threshold = t
        s = tally.summary()
        rows.append({"threshold": t, "precision": s["precision"], "recall": s["recall"], "n_predicted": s["n_predicted"]})
    chosen = next((r for r in rows if r["precision"] >= args.min_precision), rows[-1])
    print("threshold precision recall")
    for r in rows:
        mark = "  <- chosen" if r is chosen else ""
        print(f"{r['threshold']:.2f}      {r['precision']:.4f}    {r['recall']:.4f}{mark}")
    print(f"lowest threshold with train precision >= {args.min_precision}: {chosen['threshold']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"fields": str(args.fields), "n_ground_truth": tally.n_ground_truth,
                                         "min_precision": args.min_precision, "chosen": chosen, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
