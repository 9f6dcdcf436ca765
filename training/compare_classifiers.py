"""Compare classifier runs on the val split, as they would be served (mean
probability over the 8 rotations and flips), and their average: the choice
of the committed classifier is made here, never on test. Also prints what
each costs to serve (crops/s on one thread, batch 64, as ratios to the first
run measured in the same process).

    python -m training.compare_classifiers training/runs/classifier training/runs/classifier-128 \
        --json docs/metrics/classifier_selection_val.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from marrowdx.domain.taxonomy import default_taxonomy
from training.augment import served_batches
from training.data import DEFAULT_DATA_ROOT
from training.export import trained_crop_size
from training.models import CellClassifier, ClassifierEnsemble, DihedralAverage, load_classifier
from training.train_classifier import dataset_reports, load_split


def load_run(run: Path, classes: int) -> CellClassifier:
    return load_classifier(torch.load(run / "best.pt", map_location="cpu"), classes).eval()


@torch.no_grad()
def served_probabilities(model: torch.nn.Module, size: int, crops: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """Probabilities of a served model, crops resized to its input size."""
    out = [model(b) for b in served_batches(crops, size, batch)]
    return torch.cat(out)


@torch.no_grad()
def crops_per_second(model: torch.nn.Module, size: int, crops: torch.Tensor, repeats: int = 3) -> float:
    batch = next(served_batches(crops, size, 64))
    model(batch)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(batch)
        best = min(best, time.perf_counter() - start)
    return len(batch) / best


def summary(items, probs: torch.Tensor, taxonomy) -> dict:
    reports = dataset_reports(items, torch.log(probs.clamp_min(1e-12)), taxonomy)
    return {d: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for d, r in reports.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="training run folders (best.pt + summary.json)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--limit", type=int, help="at most this many crops per dataset (smoke tests)")
    p.add_argument("--no-ensemble", action="store_true", help="score the runs alone (an ensemble costs their sum)")
    p.add_argument("--single-view", action="store_true",
                   help="score each run on the crop alone, as export without --tta serves it (8x cheaper)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    taxonomy = default_taxonomy()
    # One source size for all: the largest any run was trained at, downscaled per run.
    sizes = [trained_crop_size(r / "best.pt") for r in args.runs]
    items, crops = load_split(args.data, taxonomy, "val", args.limit, crop_size=max(sizes))
    members = [load_run(r, len(taxonomy.codes)) for r in args.runs]
    served = (lambda m: m) if args.single_view else (lambda m: DihedralAverage(m).eval())
    candidates = {str(r): (served(m), s) for r, m, s in zip(args.runs, members, sizes, strict=True)}
    if len(args.runs) > 1 and not args.no_ensemble and not args.single_view:
        candidates["ensemble_of_all"] = (ClassifierEnsemble(members, sizes).eval(), max(sizes))
    results = {}
    torch.set_num_threads(1)
    speeds = {name: crops_per_second(model, size, crops) for name, (model, size) in candidates.items()}
    torch.set_num_threads(args.threads)
    first = speeds[str(args.runs[0])]
    for name, (model, size) in candidates.items():
        probs = served_probabilities(model, size, crops)
        results[name] = {"crop_size": size, **summary(items, probs, taxonomy),
                         "crops_per_s_1_thread": round(speeds[name], 1), "speed_vs_first": round(speeds[name] / first, 3)}
        print(json.dumps({name: results[name]}))
    report = {"split": "val", "views": 1 if args.single_view else 8, "n": len(items), "runs": results,
              "note": "model selection only; the reported figures are on the test split"}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}))


if __name__ == "__main__":
    main()
