"""Cross-fitting: score each fold run on the crops it held out, as served (mean
probability over the 8 rotations and flips, the source images framed and
scaled as the service does), fit one temperature on all of them, and write it
into the run trained on every train and val crop.

    python -m training.crossfit training/runs/classifier-gpu5-f-fold0 training/runs/classifier-gpu5-f-fold1 \
        training/runs/classifier-gpu5-f-fold2 --full training/runs/classifier-gpu5-f-all \
        --json docs/metrics/classifier_crossfit.json

The pooled held-out crops are every train and val crop, each scored by a model
that never saw it and that was not chosen on it (fold runs keep their last
epoch): an estimate of the recipe with about 5x the crops of the val split
alone. The test split is not touched. The report also splits the estimate by
the crops' original split, which says whether val was easier than the rest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from marrowdx.domain.taxonomy import default_taxonomy
from training.augment import served_batches
from training.data import DEFAULT_DATA_ROOT, folds_of
from training.models import DihedralAverage, load_classifier
from training.train_classifier import dataset_reports, fit_temperature, load_split, target_mask


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def check_folds(summaries: list[dict]) -> int:
    """The fold runs must be one cross-fitting: same fold count, each fold once."""
    counts = {s.get("folds") for s in summaries}
    if len(counts) != 1 or not (folds := counts.pop()):
        raise ValueError(f"runs from one cross-fitting expected (one --folds for all), got folds {sorted(map(str, counts))}")
    held = sorted(s["fold"] for s in summaries)
    if held != list(range(folds)):
        raise ValueError(f"each of the {folds} folds held out once expected, got folds {held}")
    return folds


@torch.no_grad()
def view_logits(model: DihedralAverage, crops: torch.Tensor, size: int, batch: int = 128) -> torch.Tensor:
    """8 x N x C logits at temperature 1, crops resized to the model's input."""
    return torch.cat([model.view_logits(b) for b in served_batches(crops, size, batch)], dim=1)


def served_logits(views: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the mean probability over the views: what the served model's argmax reads."""
    return torch.log(torch.softmax(views / temperature, dim=2).mean(dim=0).clamp_min(1e-12))


def scores(items, logits: torch.Tensor, taxonomy) -> dict:
    reports = dataset_reports(items, logits, taxonomy)
    return {d: {"n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]} for d, r in reports.items()}


def crossfit(fold_runs: list[Path], data: Path, limit: int | None = None) -> dict:
    """Held-out logits of every pooled crop, the fitted temperature and the scores."""
    taxonomy = default_taxonomy()
    summaries = [read_summary(r) for r in fold_runs]
    folds = check_folds(summaries)
    sizes = {s["crop_size"] for s in summaries}
    datasets = tuple(summaries[0]["datasets"])
    # The pool in training's order (train, then val), so folds_of deals the same folds.
    splits = [load_split(data, taxonomy, split, limit, datasets, max(sizes)) for split in ("train", "val")]
    items = splits[0][0] + splits[1][0]
    crops = torch.cat([splits[0][1], splits[1][1]])
    assigned = torch.tensor(folds_of(items, folds))
    views = torch.zeros(8, len(items), len(taxonomy.codes))
    for run, summary in zip(fold_runs, summaries, strict=True):
        rows = (assigned == summary["fold"]).nonzero().flatten()
        model = DihedralAverage(load_classifier(torch.load(run / "best.pt", map_location="cpu"), len(taxonomy.codes))).eval()
        views[:, rows] = view_logits(model, crops[rows], summary["crop_size"])
        print(json.dumps({"run": str(run), "fold": summary["fold"], "crops": len(rows)}))
    temperature = fit_temperature(views, target_mask(items, taxonomy))
    logits = served_logits(views, temperature)
    by_split = {split: scores([items[r] for r in rows], logits[rows], taxonomy)
                for split in ("train", "val")
                if (rows := [r for r, item in enumerate(items) if item.split == split])}
    by_fold = {str(f): scores([items[r] for r in rows], logits[rows], taxonomy)
               for f in range(folds) if (rows := (assigned == f).nonzero().flatten().tolist())}
    return {"folds": folds, "views": 8, "n": len(items), "temperature": temperature,
            "held_out": scores(items, logits, taxonomy), "by_original_split": by_split, "by_fold": by_fold,
            "runs": [str(r) for r in fold_runs]}


def write_temperature(run: Path, temperature: float, source: str) -> None:
    """Store the cross-fitted temperature in a run's checkpoint (export carries it) and summary."""
    state = torch.load(run / "best.pt", map_location="cpu")
    state["temperature"].fill_(temperature)
    torch.save(state, run / "best.pt")
    summary = read_summary(run)
    summary.update(temperature=temperature, temperature_fitted_on=source)
    (run / "summary.json").write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="the fold runs (train_classifier --folds K --fold I)")
    p.add_argument("--full", type=Path, help="the run on all train and val crops: gets the fitted temperature")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, help="at most this many crops per dataset and split (smoke tests)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = crossfit(args.runs, args.data, args.limit)
    if args.full:
        full = read_summary(args.full)
        if full.get("held_out") is not None or full.get("train_splits") != ["train", "val"]:
            raise SystemExit(f"{args.full} is not a run on all train and val crops (--train-splits train,val, no --folds)")
        write_temperature(args.full, report["temperature"], f"held-out crops of {len(args.runs)} fold runs (training.crossfit)")
        report["full_run"] = str(args.full)
    report["note"] = "cross-fitted estimate on train and val crops (test untouched); research use only"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("folds", "n", "temperature", "held_out", "by_original_split")}))


if __name__ == "__main__":
    main()
