"""Cross-fitting: score each fold run on the crops it held out, as served (mean
probability over the 8 rotations and flips, the source images framed and
scaled as the service does), fit one temperature on all of them (and with
--class-bias a per-class bias), and write them into the run trained on every
train and val crop.

    python -m training.crossfit training/runs/classifier-gpu5-f-fold0 training/runs/classifier-gpu5-f-fold1 \
        training/runs/classifier-gpu5-f-fold2 --full training/runs/classifier-gpu5-f-all \
        --json docs/metrics/classifier_crossfit.json

The pooled held-out crops are every train and val crop, each scored by a model
that never saw it and that was not chosen on it (fold runs keep their last
epoch): an estimate of the recipe with about 5x the crops of the val split
alone. The test split is not touched. The report also splits the estimate by
the crops' original split, which says whether val was easier than the rest.
--save-views keeps the held-out scores; --from-views calibrates saved ones again
(for instance with --class-bias) without scoring every crop again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from marrowdx.domain.taxonomy import default_taxonomy
from training.augment import served_batches
from training.data import DEFAULT_DATA_ROOT, CropItem, folds_of, index_crops
from training.models import DihedralAverage, load_classifier
from training.train_classifier import (
    DATA_FOLDERS,
    dataset_reports,
    fit_class_bias,
    fit_temperature,
    load_split,
    target_mask,
)


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


def held_out_views(fold_runs: list[Path], data: Path, limit: int | None = None) -> tuple[dict, list[CropItem]]:
    """The 8-view logits of every pooled train and val crop, each from the fold run
    that held it out, with each crop's fold and path (what --save-views writes),
    and the crops' items."""
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
    return {"views": views, "fold": assigned, "paths": [str(item.path) for item in items],
            "folds": folds, "runs": [str(r) for r in fold_runs]}, items


def items_of(paths: list[str], data: Path) -> list[CropItem]:
    """The crop items (targets, split) of saved held-out views, found by path."""
    taxonomy = default_taxonomy()
    index = {str(item.path): item for dataset, folder in DATA_FOLDERS.items() if (data / folder).is_dir()
             for item in index_crops(data / folder, dataset, taxonomy)}
    missing = [p for p in paths if p not in index]
    if missing:
        raise SystemExit(f"{len(missing)} crops of the saved views are not under {data} (first: {missing[0]})")
    return [index[p] for p in paths]


def calibrate(held_out: dict, items: list[CropItem], class_bias: bool = False) -> dict:
    """Fit the temperature on the held-out views and score them: the report."""
    taxonomy = default_taxonomy()
    views, assigned, folds = held_out["views"], held_out["fold"], held_out["folds"]
    mask = target_mask(items, taxonomy)
    temperature = fit_temperature(views, mask)
    logits = served_logits(views, temperature)
    by_split = {split: scores([items[r] for r in rows], logits[rows], taxonomy)
                for split in ("train", "val")
                if (rows := [r for r, item in enumerate(items) if item.split == split])}
    by_fold = {str(f): scores([items[r] for r in rows], logits[rows], taxonomy)
               for f in range(folds) if (rows := (assigned == f).nonzero().flatten().tolist())}
    report = {"folds": folds, "views": 8, "n": len(items), "temperature": temperature,
              "held_out": scores(items, logits, taxonomy), "by_original_split": by_split, "by_fold": by_fold,
              "runs": held_out["runs"]}
    if class_bias:
        report["class_bias"] = bias_report(views, logits, mask, assigned, folds, items, taxonomy)
    return report


def bias_report(views: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, assigned: torch.Tensor, folds: int,
                items, taxonomy) -> dict:
    """The class bias on all held-out crops, and what it is worth: each fold scored
    with a temperature and bias fitted on the other folds only (nested), so the
    comparison with the plain held-out figures is not flattered by fitting on the
    crops it scores."""
    bias = fit_class_bias(logits, mask)
    nested = torch.zeros_like(logits)
    for fold in range(folds):
        rest, rows = (assigned != fold).nonzero().flatten(), (assigned == fold).nonzero().flatten()
        temperature = fit_temperature(views[:, rest], mask[rest])
        rest_bias = fit_class_bias(served_logits(views[:, rest], temperature), mask[rest])
        nested[rows] = served_logits(views[:, rows], temperature) + rest_bias
    return {"values": {code: round(float(b), 4) for code, b in zip(taxonomy.codes, bias, strict=True) if b != 0},
            "held_out_nested": scores(items, nested, taxonomy)}


def write_calibration(run: Path, temperature: float, source: str, class_bias: dict[str, float] | None = None) -> None:
    """Store the cross-fitted temperature (and class bias) in a run's checkpoint (export
    carries them) and summary."""
    state = torch.load(run / "best.pt", map_location="cpu")
    state["temperature"].fill_(temperature)
    taxonomy = default_taxonomy()
    bias = torch.zeros(len(taxonomy.codes))
    for code, value in (class_bias or {}).items():
        bias[taxonomy.index(code)] = value
    state["class_bias"] = bias
    torch.save(state, run / "best.pt")
    summary = read_summary(run)
    summary.update(temperature=temperature, temperature_fitted_on=source, class_bias=class_bias or None)
    (run / "summary.json").write_text(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+", help="the fold runs (train_classifier --folds K --fold I)")
    p.add_argument("--full", type=Path, help="the run on all train and val crops: gets the fitted temperature")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, help="at most this many crops per dataset and split (smoke tests)")
    p.add_argument("--json", type=Path)
    p.add_argument("--class-bias", action="store_true",
                   help="also fit a per-class log-probability bias on the held-out crops (and report it nested by fold)")
    p.add_argument("--from-views", type=Path, help="calibrate views saved by --save-views instead of scoring the crops again")
    p.add_argument("--save-views", type=Path, help="write the held-out 8-view logits, fold and crop path of each crop (torch.save)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.full:  # before the long scoring, not after it
        full = read_summary(args.full)
        if full.get("held_out") is not None or full.get("train_splits") != ["train", "val"]:
            raise SystemExit(f"{args.full} is not a run on all train and val crops (--train-splits train,val, no --folds)")
    if args.from_views:
        held_out = torch.load(args.from_views)
        if held_out["runs"] != [str(r) for r in args.runs]:
            raise SystemExit(f"{args.from_views} holds the views of {held_out['runs']}, not of these runs")
        items = items_of(held_out["paths"], args.data)
    else:
        held_out, items = held_out_views(args.runs, args.data, args.limit)
    report = calibrate(held_out, items, args.class_bias)
    if args.save_views and not args.from_views:
        # The held-out view logits, so that post-hoc steps (calibration, ensembles) are
        # compared on them without scoring every crop again.
        args.save_views.parent.mkdir(parents=True, exist_ok=True)
        torch.save(held_out, args.save_views)
    if args.full:
        write_calibration(args.full, report["temperature"], f"held-out crops of {len(args.runs)} fold runs (training.crossfit)",
                          report.get("class_bias", {}).get("values"))
        report["full_run"] = str(args.full)
    report["note"] = "cross-fitted estimate on train and val crops (test untouched); research use only"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("folds", "n", "temperature", "held_out", "by_original_split", "class_bias")
                      if k in report}))


if __name__ == "__main__":
    main()
