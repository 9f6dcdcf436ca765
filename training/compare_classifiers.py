"""Compare classifier runs on the val split, as they would be served (mean
probability over the 8 rotations and flips), and their average: the choice
of the committed classifier is made here, never on test.

    python -m training.compare_classifiers training/runs/classifier training/runs/classifier-128 \
        --json docs/metrics/classifier_selection_val.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from marrowdx.domain.taxonomy import default_taxonomy
from training.augment import resize_nhwc
from training.data import DEFAULT_DATA_ROOT
from training.export import trained_crop_size
from training.models import CellClassifier, DihedralAverage
from training.train_classifier import dataset_reports, load_split


@torch.no_grad()
def served_probabilities(run: Path, crops: torch.Tensor, classes: int, batch: int = 128) -> torch.Tensor:
    """8-view mean probabilities of the run's best checkpoint, crops resized to its trained size."""
    model = CellClassifier(classes)
    model.load_state_dict(torch.load(run / "best.pt", map_location="cpu"))
    served = DihedralAverage(model.eval()).eval()
    size = trained_crop_size(run / "best.pt")
    out = [served(resize_nhwc(crops[i : i + batch], size).round().to(torch.uint8)) for i in range(0, len(crops), batch)]
    return torch.cat(out)


def summary(items, probs: torch.Tensor, taxonomy) -> dict:
    reports = dataset_reports(items, torch.log(probs.clamp_min(1e-12)), taxonomy)
    return {d: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for d, r in reports.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="training run folders (best.pt + summary.json)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    taxonomy = default_taxonomy()
    # One source size for all: the largest any run was trained at, downscaled per run.
    largest = max(trained_crop_size(r / "best.pt") for r in args.runs)
    items, crops = load_split(args.data, taxonomy, "val", crop_size=largest)
    results, all_probs = {}, []
    for run in args.runs:
        probs = served_probabilities(run, crops, len(taxonomy.codes))
        all_probs.append(probs)
        results[str(run)] = {"crop_size": trained_crop_size(run / "best.pt"), **summary(items, probs, taxonomy)}
        print(json.dumps({str(run): results[str(run)]}))
    if len(args.runs) > 1:
        results["mean_of_all"] = summary(items, torch.stack(all_probs).mean(0), taxonomy)
        print(json.dumps({"mean_of_all": results["mean_of_all"]}))
    report = {"split": "val", "views": 8, "n": len(items), "runs": results,
              "note": "model selection only; the reported figures are on the test split"}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
