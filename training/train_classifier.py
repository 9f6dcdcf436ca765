"""Train the cell classifier on matek_bm + pbc crops (train split), select on
val, fit the temperature on val, save a checkpoint.

    python -m training.train_classifier --epochs 18 --out training/runs/classifier

Cross-fitting instead (training.crossfit): ``--train-splits train,val --folds 3
--fold I`` trains on train and val less fold I and holds fold I out;
without ``--folds`` nothing is held out, the last weights are kept and the
temperature is left for training.crossfit to fit on the folds' held-out crops.

Reproducible: fixed seed, deterministic split, one thread per process by default.
On a GPU (``--device cuda --amp``, crops from a ``--pack`` made by
training.crop_pack) the augmentations drawn are the same, but cuDNN kernels
and bf16 rounding make the weights differ in their last bits from run to run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from marrowdx.domain.taxonomy import Taxonomy, default_taxonomy
from marrowdx.evaluation.metrics import classification_report
from marrowdx.imaging.crops import resize_crop
from training.augment import random_affine, random_blur, resize_nhwc, stain_jitter
from training.crop_pack import read_pack
from training.data import (
    CropItem,
    cache_size_for,
    folds_of,
    index_crops,
    load_crop_cache,
    rows_by_class,
    trained_classes_of,
    training_arguments,
)
from training.ema import WeightAverage
from training.models import CellClassifier

DEFAULT_CROP_SIZE = 96
DATASETS = ("matek", "pbc")
DATA_FOLDERS = {"matek": "matek_bm", "pbc": "pbc"}


def target_mask(items: list[CropItem], taxonomy: Taxonomy) -> torch.Tensor:
    mask = torch.zeros(len(items), len(taxonomy.codes), dtype=torch.bool)
    for row, item in enumerate(items):
        for code in item.targets:
            mask[row, taxonomy.index(code)] = True
    return mask


def set_nll(logits: torch.Tensor, mask: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """-log P(label set): a coarse label ('ig') rewards any of its fine classes.
    With ``smoothing`` e (Szegedy et al. 2016) the target is 1 - e on the set and e
    spread evenly over all outputs, which keeps the logits from growing without end."""
    log_p = F.log_softmax(logits, dim=1)
    nll = -(torch.logsumexp(log_p.masked_fill(~mask, float("-inf")), dim=1)).mean()
    return (1.0 - smoothing) * nll - smoothing * log_p.mean() if smoothing else nll


def mixup_nll(logits: torch.Tensor, mask: torch.Tensor, partner: torch.Tensor, lam: float,
              smoothing: float = 0.0) -> torch.Tensor:
    """Set NLL for a mixup batch (Zhang et al. 2018): each image is lam of itself and
    1 - lam of ``partner``'s image, so the loss is the same blend of both label sets."""
    return lam * set_nll(logits, mask, smoothing) + (1.0 - lam) * set_nll(logits, mask[partner], smoothing)


def sampling_weights(items: list[CropItem], dataset_weights: dict[str, float]) -> torch.Tensor:
    """Per-crop draw weights: a dataset weighted 2 is drawn twice as often per crop.
    Marrow (Matek) is the service's own domain, so it may be favoured over PBC."""
    return torch.tensor([dataset_weights.get(item.dataset, 1.0) for item in items], dtype=torch.double)


def parse_dataset_weights(text: str) -> dict[str, float]:
    """``matek=2,pbc=1`` -> {"matek": 2.0, "pbc": 1.0}; checked before any data is loaded."""
    weights = {}
    for part in filter(None, text.split(",")):
        name, sep, value = (piece.strip() for piece in part.partition("="))
        if not sep or name not in DATASETS:
            raise ValueError(f"expected DATASET=WEIGHT with DATASET one of {', '.join(DATASETS)}: {part!r}")
        weights[name] = float(value)
        if weights[name] <= 0:
            raise ValueError(f"dataset weight must be positive: {part!r}")
    return weights


def parse_train_fractions(text: str) -> dict[str, float]:
    """``matek=0.5`` -> {"matek": 0.5}: the share of a dataset's train crops to keep."""
    fractions = parse_dataset_weights(text)
    if any(f > 1 for f in fractions.values()):
        raise ValueError(f"a train fraction is at most 1: {text!r}")
    return fractions


def train_subset(items: list[CropItem], fractions: dict[str, float]) -> list[int]:
    """Rows kept when only a fraction of a dataset's train crops is used (learning
    curves): that fraction of each class, drawn in one fixed order, so smaller
    subsets lie inside larger ones and every training seed sees the same crops."""
    kept = []
    for (dataset, _), rows in sorted(rows_by_class(items).items()):
        order = np.random.default_rng(0).permutation(len(rows))
        kept += [rows[i] for i in order[: math.ceil(fractions.get(dataset, 1.0) * len(rows))]]
    return sorted(kept)


def held_out(splits: dict[str, tuple[list[CropItem], torch.Tensor]], train_splits: tuple[str, ...],
             folds: int = 0, fold: int = 0) -> tuple[tuple[list[CropItem], torch.Tensor], tuple[list[CropItem], torch.Tensor]]:
    """(train, held-out) crops. By default train is the train split and val is held
    out. With val among ``train_splits`` the splits are pooled: with ``folds``,
    fold ``fold`` of the pool is held out (cross-fitting); without, nothing is."""
    if "val" not in train_splits:
        if folds:
            raise ValueError("--folds splits the pooled train and val crops: give --train-splits train,val")
        return splits["train"], splits["val"]
    items = splits["train"][0] + splits["val"][0]
    crops = torch.cat([splits["train"][1], splits["val"][1]])
    if not folds:
        return (items, crops), ([], crops[:0])
    if not 0 <= fold < folds:
        raise ValueError(f"--fold {fold} is not one of the {folds} folds (0 to {folds - 1})")
    assigned = folds_of(items, folds)
    keep = [r for r, f in enumerate(assigned) if f != fold]
    held = [r for r, f in enumerate(assigned) if f == fold]
    if not held:
        raise ValueError(f"fold {fold} of {folds} holds no crops: too few crops for {folds} folds")
    return ([items[r] for r in keep], crops[keep]), ([items[r] for r in held], crops[held])


def limited(items: list[CropItem], limit: int | None) -> list[CropItem]:
    """Spread a limited selection over the classes (smoke tests), deterministically."""
    return items[:: max(1, len(items) // limit)][:limit] if limit else items


def load_split(data_root: Path, taxonomy: Taxonomy, split: str, limit: int | None = None,
               datasets: tuple[str, ...] = DATASETS,
               crop_size: int = DEFAULT_CROP_SIZE) -> tuple[list[CropItem], torch.Tensor]:
    items: list[CropItem] = []
    for dataset in datasets:
        items += limited([i for i in index_crops(data_root / DATA_FOLDERS[dataset], dataset, taxonomy)
                          if i.split == split], limit)
    return items, torch.from_numpy(load_crop_cache(items, cache_size_for(crop_size)))


def pack_splits(pack: Path, limit: int | None, datasets: tuple[str, ...],
                crop_size: int) -> dict[str, tuple[list[CropItem], torch.Tensor]]:
    """The train and val splits from a crop pack, selected as load_split selects them.
    A pack of larger crops also serves smaller crop sizes: one pack travels, and
    its crops are scaled down as the cache scales the source images."""
    items, crops, size = read_pack(pack)
    needed = cache_size_for(crop_size)
    if size < needed:
        raise ValueError(f"{pack} holds {size} px crops; --crop-size {crop_size} needs {needed} or more")
    splits = {}
    for split in ("train", "val"):
        rows = []
        for dataset in datasets:
            rows += limited([r for r, i in enumerate(items) if i.split == split and i.dataset == dataset], limit)
        chosen = crops[rows]
        if size > needed:
            chosen = np.stack([resize_crop(Image.fromarray(crop), needed) for crop in chosen])
        splits[split] = ([items[r] for r in rows], torch.from_numpy(chosen))
    return splits


@torch.no_grad()
def predict_logits(model: CellClassifier, crops_uint8: torch.Tensor, crop_size: int = DEFAULT_CROP_SIZE,
                   batch: int = 256) -> torch.Tensor:
    model.eval()
    out = [model.logits(resize_nhwc(crops_uint8[i : i + batch], crop_size)).float()
           for i in range(0, len(crops_uint8), batch)]
    return torch.cat(out).cpu()


def dataset_reports(items: list[CropItem], logits: torch.Tensor, taxonomy: Taxonomy) -> dict:
    pred_codes = [taxonomy.codes[i] for i in logits.argmax(1).tolist()]
    reports = {}
    for dataset in DATASETS:
        rows = [i for i, item in enumerate(items) if item.dataset == dataset]
        if not rows:
            continue
        true = [items[i].folder for i in rows]
        pred = [taxonomy.dataset_label_of(dataset, pred_codes[i]) for i in rows]
        reports[dataset] = classification_report(true, pred, sorted(set(true)))
    return reports


def fit_temperature(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Temperature minimising the set NLL on held-out logits: N x C for one view, or
    V x N x C for views whose probabilities are averaged (the exported 8-view model)."""
    views = logits if logits.dim() == 3 else logits.unsqueeze(0)
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        # log of the mean probability over views; for one view exactly log_softmax.
        log_p = torch.logsumexp(F.log_softmax(views / log_t.exp(), dim=2), dim=0) - math.log(views.shape[0])
        loss = set_nll(log_p, mask)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def fit_class_bias(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-class offsets to the log-probabilities minimising the set NLL on held-out
    crops (N x C, already temperature-scaled): the bias half of vector scaling (Guo et
    al. 2017), for a model that systematically favours some classes over others.
    Only classes with held-out targets get one, centred on zero, so untrained
    classes keep their level relative to the trained ones."""
    fitted = mask.any(dim=0).float()
    bias = torch.zeros(log_probs.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([bias], lr=0.5, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = set_nll(log_probs + bias * fitted, mask)
        loss.backward()
        return loss

    opt.step(closure)
    bias = bias.detach() * fitted
    return (bias - bias.sum() / fitted.sum()) * fitted


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Checkpoints always hold CPU tensors, so export and evaluation load them anywhere."""
    return {name: value.detach().cpu() for name, value in model.state_dict().items()}


def train(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    taxonomy = default_taxonomy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    datasets = tuple(args.datasets.split(","))
    dataset_weights = parse_dataset_weights(args.dataset_weights)
    train_fractions = parse_train_fractions(args.train_fraction)
    train_splits = tuple(args.train_splits.split(","))
    if args.pack:
        splits = pack_splits(args.pack, args.limit, datasets, args.crop_size)
    else:
        splits = {split: load_split(args.data, taxonomy, split, args.limit, datasets, args.crop_size)
                  for split in ("train", "val")}
    (train_items, train_x), (val_items, val_x) = held_out(splits, train_splits, args.folds, args.fold)
    # Nothing held out: no epoch can be chosen, so the last weights are the result.
    keep_last = args.keep == "last" or not val_items
    if train_fractions:
        kept = train_subset(train_items, train_fractions)
        train_items, train_x = [train_items[r] for r in kept], train_x[kept]
    train_mask, val_mask = target_mask(train_items, taxonomy), target_mask(val_items, taxonomy)
    print(f"train {len(train_items)} crops, val {len(val_items)} crops, {len(taxonomy.codes)} outputs, on {device}")
    # val_mask stays on the CPU, where the temperature is fitted.
    train_x, val_x, train_mask = train_x.to(device), val_x.to(device), train_mask.to(device)

    model = CellClassifier(len(taxonomy.codes), width=args.width)
    if args.init:
        # Global pooling makes the weights size-agnostic: a checkpoint trained on
        # smaller crops is a fine start for larger ones.
        model.load_state_dict(torch.load(args.init, map_location="cpu"))
        model.temperature.fill_(1.0)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    steps_per_epoch = max(1, len(train_items) // args.batch)
    total = args.max_steps or steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    average = WeightAverage(model, args.ema) if args.ema else None
    draw_weights = sampling_weights(train_items, dataset_weights) if dataset_weights else None
    log = open(out / "metrics.jsonl", "w")  # noqa: SIM115 - appended to every epoch
    best, step, epoch = -1.0, 0, 0
    while step < total:
        epoch += 1
        model.train()
        if draw_weights is None:
            order = torch.randperm(len(train_items), generator=gen)
        else:
            order = torch.multinomial(draw_weights, steps_per_epoch * args.batch, replacement=True, generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=args.quiet)
        running = 0.0
        for b in bar:
            if step >= total:
                break
            idx = order[b * args.batch : (b + 1) * args.batch]
            x = augmented(train_x, idx, args.crop_size, gen)
            mask = train_mask[idx.to(device)]
            with autocast:
                if args.mixup:
                    lam = float(np.random.beta(args.mixup, args.mixup))
                    partner = torch.randperm(len(idx), generator=gen).to(device)
                    x = lam * x + (1.0 - lam) * x[partner]
                    loss = mixup_nll(model.logits(x), mask, partner, lam, args.label_smoothing)
                else:
                    loss = set_nll(model.logits(x), mask, args.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if average:
                average.update(model)
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if b else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        selected = average.model if average else model
        reports = dataset_reports(val_items, predict_logits(selected, val_x, args.crop_size), taxonomy) if val_items else {}
        score = float(np.mean([r["macro_f1"] for r in reports.values()])) if reports else float("nan")
        record = {"epoch": epoch, "step": step, "loss": running, "time": time.time(),
                  **{f"val_{d}_{k}": r[k] for d, r in reports.items() for k in ("accuracy", "macro_f1")}}
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record))
        if keep_last or score > best:
            best = score
            torch.save(cpu_state(selected), out / "best.pt")
        if args.stop_after and time.monotonic() - started > args.stop_after:
            print(f"stopping after epoch {epoch} of {args.epochs}: --stop-after {args.stop_after:.0f} s reached")
            break

    model.load_state_dict(torch.load(out / "best.pt"))
    temperature = None  # fitted later by training.crossfit when nothing is held out
    if val_items:
        temperature = fit_temperature(predict_logits(model, val_x, args.crop_size), val_mask)
        model.temperature.fill_(temperature)
    torch.save(cpu_state(model), out / "best.pt")
    held_name = f"fold {args.fold} of {args.folds}" if args.folds else ("val" if val_items else None)
    # The held-out score of the saved epoch (best or last); None with nothing held out.
    summary = {"best_val_mean_macro_f1": None if math.isnan(best) else best,
               "temperature": temperature, "kept": "last" if keep_last else "best",
               "train_splits": list(train_splits), "folds": args.folds,
               "fold": args.fold if args.folds else None, "held_out": held_name, "held_out_crops": len(val_items), "epochs": epoch, "epochs_planned": args.epochs, "steps": step,
               "width": args.width, "batch": args.batch, "lr": args.lr, "weight_decay": args.weight_decay, "device": device.type, "amp": args.amp,
               "taxonomy_version": taxonomy.version, "seed": args.seed, "ema": args.ema, "mixup": args.mixup,
               "label_smoothing": args.label_smoothing,
               "dataset_weights": dataset_weights, "train_fractions": train_fractions,
               "train_crops": len(train_items), "crop_size": args.crop_size, "datasets": list(datasets),
               "trained_classes": trained_classes_of([item.targets for item in train_items])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def augmented(crops: torch.Tensor, idx: torch.Tensor, crop_size: int, gen: torch.Generator) -> torch.Tensor:
    """The training views of crops[idx]: rotation, flip, scale, shift, stain jitter, blur."""
    x = random_affine(crops[idx.to(crops.device)].float(), crop_size, (0.8, 1.15), gen)
    return random_blur(stain_jitter(x, gen), gen)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_arguments(p, out="training/runs/classifier", epochs=18, batch=64, lr=4e-3)
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: matek,pbc")
    p.add_argument("--init", type=Path, help="start from this checkpoint (fine-tuning)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="select and save an exponential moving average of the weights with this decay (0: off)")
    p.add_argument("--dataset-weights", default="",
                   help="draw crops of a dataset more often, e.g. matek=2 (default: every crop once per epoch)")
    p.add_argument("--train-fraction", default="",
                   help="train on this share of a dataset's train crops, per class, e.g. matek=0.5 (learning curves)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup with Beta(a, a) blend weights (0: off)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="target 1 - e on the label set, e spread over all outputs (0: off)")
    p.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="network input side in pixels")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW's decoupled weight decay")
    p.add_argument("--width", type=int, default=32, help="channels of the first stage (doubles at each of 3 stages)")
    p.add_argument("--pack", type=Path, help="train/val crops from a training.crop_pack file instead of --data")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the forward pass (GPU)")
    p.add_argument("--train-splits", default="train", choices=("train", "train,val"),
                   help="train,val pools both splits: with --folds one fold is held out, without nothing is")
    p.add_argument("--folds", type=int, default=0, help="cross-fitting folds of the pooled train,val crops")
    p.add_argument("--fold", type=int, default=0, help="the fold held out (0 .. folds-1)")
    p.add_argument("--keep", default="best", choices=("best", "last"),
                   help="the checkpoint saved: the best epoch on the held-out crops, or the last epoch "
                        "(cross-fitting keeps the last, as a run with nothing held out must)")
    p.add_argument("--stop-after", type=float, default=0.0,
                   help="seconds from start: end after the epoch that passes it, and still save (a guard "
                        "against a lent machine's time limit; 0: off)")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
