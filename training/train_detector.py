"""Train the CenterNet-style cell detector on txl_pbc (train split; val for
model selection) plus synthetic crowded fields composed from real crops.

    python -m training.train_detector --epochs 20 --out training/runs/detector
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from marrowdx.domain.cells import Thresholds, suppress_duplicates
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.evaluation.detection import CategoryTally
from marrowdx.imaging.letterbox import letterbox
from training.augment import random_blur, stain_jitter
from training.data import CACHE_DIR, index_crops, index_yolo_fields, load_crop_cache, training_arguments
from training.marrow_fields import blob_recall, load_segpc
from training.models import CellDetector
from training.synthetic import compose

INPUT_SIZE = 320


def load_detector_state(path: Path) -> dict:
    """A detector's state dict from a checkpoint or from the exported TorchScript variant."""
    if path.parent.name == "1" and path.suffix == ".pt":
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    return torch.load(path, map_location="cpu")
STRIDE = CellDetector.STRIDE


def load_fields(root: Path, split: str, categories: tuple[str, ...], limit: int | None = None):
    """Letterboxed fields (N x S x S x 3) and per-field boxes/categories in input pixels."""
    taxonomy = default_taxonomy()
    by_id = taxonomy.label_maps["txl_pbc"]["by_class_id"]
    items = index_yolo_fields(root, split)[:limit]
    key = hashlib.sha1(("\n".join(str(i.image_path) for i in items) + str(INPUT_SIZE)).encode()).hexdigest()[:12]
    cache = CACHE_DIR / f"txl-{split}-{key}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=True)
        return data["images"], list(data["boxes"]), list(data["categories"])
    images, all_boxes, all_categories = [], [], []
    for item in tqdm(items, desc=f"letterbox {split}", leave=False):
        with Image.open(item.image_path) as im:
            array, frame = letterbox(im.convert("RGB"), INPUT_SIZE)
        images.append(array)
        all_boxes.append(frame.to_input(item.boxes))
        all_categories.append(np.asarray([categories.index(by_id[str(c)]) for c in item.classes], np.int64))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    boxes_obj = np.empty(len(all_boxes), dtype=object)
    boxes_obj[:] = all_boxes
    cats_obj = np.empty(len(all_categories), dtype=object)
    cats_obj[:] = all_categories
    np.savez(cache, images=np.stack(images), boxes=boxes_obj, categories=cats_obj)
    return np.stack(images), all_boxes, all_categories


def flip_rotate(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    size = image.shape[0]
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    if rng.random() < 0.5:
        image = image[::-1]
        boxes = np.stack([boxes[:, 0], size - boxes[:, 3], boxes[:, 2], size - boxes[:, 1]], 1)
    if rng.random() < 0.5:  # transpose
        image = image.transpose(1, 0, 2)
        boxes = boxes[:, [1, 0, 3, 2]]
    return np.ascontiguousarray(image), boxes.astype(np.float32)


def make_targets(boxes: np.ndarray, categories: np.ndarray, num_categories: int, out_size: int):
    heat = np.zeros((num_categories, out_size, out_size), np.float32)
    size = np.zeros((2, out_size, out_size), np.float32)
    offset = np.zeros((2, out_size, out_size), np.float32)
    mask = np.zeros((out_size, out_size), np.float32)
    yy, xx = np.mgrid[0:out_size, 0:out_size]
    for box, cat in zip(boxes, categories, strict=True):
        w, h = (box[2] - box[0]) / STRIDE, (box[3] - box[1]) / STRIDE
        if w < 0.5 or h < 0.5:
            continue
        cx, cy = (box[0] + box[2]) / 2 / STRIDE, (box[1] + box[3]) / 2 / STRIDE
        ix, iy = min(int(cx), out_size - 1), min(int(cy), out_size - 1)
        sigma = max(0.7, min(w, h) / 6)
        g = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma**2))
        heat[cat] = np.maximum(heat[cat], g)
        size[:, iy, ix] = (w, h)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1
    return heat, size, offset, mask


def focal_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None,
               known: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss; ``pos_weight`` (one per category)
    weighs the centres of some categories more, e.g. white cells over red cells. ``known``
    (N x C x H x W, 1 or 0) drops the negative term where the labels are silent: an
    unlabelled nucleus of a partly labelled field is unknown, not background."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_weight = torch.pow(1 - target, 4)
    if known is not None:
        neg_weight = neg_weight * known
    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * pos
    if pos_weight is not None:
        pos_loss = pos_loss * pos_weight.view(1, -1, 1, 1)
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * neg_weight * (1 - pos)
    n = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / n


@torch.no_grad()
def evaluate(model: CellDetector, images: np.ndarray, boxes: list, categories: list, names: tuple[str, ...]) -> dict:
    model.eval()
    tallies = {name: CategoryTally() for name in names}
    for start in range(0, len(images), 16):
        out_boxes, out_scores, out_cats, _ = model(torch.from_numpy(images[start : start + 16]))
        for j in range(out_boxes.shape[0]):
            gt_b, gt_c = boxes[start + j], categories[start + j]
            # The same duplicate suppression as the service (marrowdx.domain.cells).
            keep = suppress_duplicates(out_boxes[j].numpy(), out_scores[j].numpy(), Thresholds().duplicate_iou)
            boxes_j, scores_j, cats_j = out_boxes[j].numpy()[keep], out_scores[j].numpy()[keep], out_cats[j].numpy()[keep]
            for c, name in enumerate(names):
                sel = cats_j == c
                tallies[name].add(boxes_j[sel], scores_j[sel], gt_b[gt_c == c])
    return {name: t.summary() for name, t in tallies.items() if t.n_ground_truth}


def flip_rotate_known(image: np.ndarray, boxes: np.ndarray, known: np.ndarray, rng: np.random.Generator):
    """flip_rotate for a field and its C x s x s trust map, with the same draws."""
    state = rng.bit_generator.state
    image, boxes = flip_rotate(image, boxes, rng)
    rng.bit_generator.state = state
    known_hwc, _ = flip_rotate(known.transpose(1, 2, 0), np.zeros((0, 4), np.float32), rng)
    return image, boxes, np.ascontiguousarray(known_hwc.transpose(2, 0, 1))


@torch.no_grad()
def marrow_blob_recall(model: CellDetector, fields: list, nucleated: int, score_threshold: float) -> dict:
    """Outlined plasma-cell blobs of marrow fields with a nucleated detection centred in them."""
    model.eval()
    detections = []
    for start in range(0, len(fields), 16):
        chunk = fields[start : start + 16]
        out_boxes, out_scores, out_cats, _ = model(torch.from_numpy(np.stack([f.image for f in chunk])))
        for j in range(len(chunk)):
            keep = (out_scores[j] >= score_threshold) & (out_cats[j] == nucleated)
            detections.append(out_boxes[j][keep].numpy())
    return blob_recall(detections, fields)


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    taxonomy = default_taxonomy()
    names = taxonomy.detector_categories
    nucleated, smudge = names.index("nucleated"), names.index("smudge")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    root = args.data / "txl_pbc"
    train_x, train_boxes, train_cats = load_fields(root, "train", names, args.limit)
    val_x, val_boxes, val_cats = load_fields(root, "val", names, args.limit)
    paste_items = [it for dataset, folder in (("matek", "matek_bm"), ("pbc", "pbc"))
                   for it in index_crops(args.data / folder, dataset, taxonomy)
                   if it.split == "train" and it.targets[0] not in ("platelet", "uncountable")]
    if args.limit:
        paste_items = paste_items[:: max(1, len(paste_items) // args.limit)]
    crops = load_crop_cache(paste_items)
    if args.paste_deepapl and (args.data / "deepapl").is_dir():
        from training.data import CROP_CACHE_SIZE
        from training.lineage_data import deepapl_cells, load_crops
        blood = [c for c in deepapl_cells(args.data / "deepapl")
                 if c.split == "train" and c.label not in ("smudge", "giant_platelet")][:: 1 if not args.limit else 50]
        crops = np.concatenate([crops, load_crops(blood, CROP_CACHE_SIZE)])
    marrow_train = marrow_val = []
    if args.segpc_share > 0 and (args.data / "segpc_bm").is_dir():
        marrow_train = load_segpc(args.data / "segpc_bm", "train", names, INPUT_SIZE, STRIDE, args.limit)
        marrow_val = load_segpc(args.data / "segpc_bm", "val", names, INPUT_SIZE, STRIDE, args.limit)
    print(f"train {len(train_x)} fields (+synthetic p={args.p_synthetic}, dense p={args.p_dense}), "
          f"{len(marrow_train)} marrow fields (share {args.segpc_share}), val {len(val_x)} fields, "
          f"{len(marrow_val)} marrow val fields, {len(crops)} paste crops", flush=True)

    model = CellDetector(len(names))
    if args.init:  # fine-tune from earlier weights
        model.load_state_dict(load_detector_state(args.init))
    pos_weight = torch.ones(len(names))
    pos_weight[nucleated] = args.nucleated_weight
    out_size = INPUT_SIZE // STRIDE
    steps_per_epoch = max(1, len(train_x) // args.batch)
    total = args.max_steps or steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.1)
    log = open(out / "metrics.jsonl", "w")  # noqa: SIM115 - appended to every epoch
    best, step, epoch = -1.0, 0, 0
    while step < total:
        epoch += 1
        model.train()
        order = rng.permutation(len(train_x))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=args.quiet)
        running = 0.0
        for b in bar:
            if step >= total:
                break
            batch_images, targets, knowns = [], [], []
            for i in order[b * args.batch : (b + 1) * args.batch]:
                known = np.ones((len(names), out_size, out_size), np.float32)
                if marrow_train and rng.random() < args.segpc_share:
                    f = marrow_train[rng.integers(len(marrow_train))]
                    image, boxes, cats, known = f.image, f.boxes, np.full(len(f.boxes), nucleated, np.int64), f.known
                    image, boxes, known = flip_rotate_known(image, boxes, known, rng)
                else:
                    image, boxes, cats = train_x[i], train_boxes[i], train_cats[i]
                    if rng.random() < args.p_dense:
                        # A marrow's density: many nucleated cells touching and overlapping.
                        image, boxes, cats = compose(image, boxes, cats, crops, rng, nucleated, smudge,
                                                     n_cells=(10, 28), p_smudge=0.1)
                    elif rng.random() < args.p_synthetic:
                        image, boxes, cats = compose(image, boxes, cats, crops, rng, nucleated, smudge)
                    image, boxes = flip_rotate(image, boxes, rng)
                batch_images.append(image)
                knowns.append(known)
                targets.append(make_targets(boxes, cats, len(names), out_size))
            x = torch.from_numpy(np.stack(batch_images)).float()
            x = random_blur(stain_jitter(x, gen, strength=0.7), gen, p=0.15, sigma_max=1.2)
            heat_t, size_t, off_t, mask_t = (torch.from_numpy(np.stack(t)) for t in zip(*targets, strict=True))
            heat, size, offset = model.raw(x)
            m = mask_t.unsqueeze(1)
            n = m.sum().clamp(min=1)
            loss = (
                focal_loss(heat, heat_t, pos_weight, torch.from_numpy(np.stack(knowns)))
                + 0.1 * (F.l1_loss(size * m, size_t * m, reduction="sum") / n)
                + (F.l1_loss(offset * m, off_t * m, reduction="sum") / n)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running = 0.9 * running + 0.1 * loss.item() if b else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        report = evaluate(model, val_x, val_boxes, val_cats, names)
        wbc = report.get("nucleated", {})
        score = float(wbc.get("ap50", 0.0))
        record = {"epoch": epoch, "step": step, "loss": running, "time": time.time(),
                  **{f"val_{n}_{k}": v[k] for n, v in report.items() for k in ("recall", "precision", "ap50")}}
        if marrow_val:
            marrow = marrow_blob_recall(model, marrow_val, nucleated, Thresholds().detection_score)
            record["val_marrow_blob_recall"] = marrow["recall"]
            # Selection weighs both: blood white cells as before, and marrow plasma cells found.
            score = 0.5 * score + 0.5 * float(marrow["recall"] or 0.0)
        log.write(json.dumps(record) + "\n")
        log.flush()
        print(json.dumps(record), flush=True)
        if score > best:
            best = score
            torch.save(model.state_dict(), out / "best.pt")
    summary = {"best_val_wbc_ap50": best, "epochs": epoch, "steps": step, "input_size": INPUT_SIZE,
               "categories": list(names), "seed": args.seed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    training_arguments(p, out="training/runs/detector", epochs=20, batch=8, lr=3e-3)
    p.add_argument("--p-synthetic", type=float, default=0.5, help="share of fields made crowded with pasted crops")
    p.add_argument("--init", type=Path, help="start from these weights (fine-tuning); a TorchScript export works too")
    p.add_argument("--p-dense", type=float, default=0.0,
                   help="share of blood fields made as crowded as a marrow (10-28 pasted nucleated cells)")
    p.add_argument("--segpc-share", type=float, default=0.0,
                   help="share of samples drawn from SegPC's real marrow fields (partial labels, see marrow_fields)")
    p.add_argument("--paste-deepapl", action="store_true", help="paste deepapl's blood cells too")
    p.add_argument("--nucleated-weight", type=float, default=1.0,
                   help="weight of white-cell centres in the heatmap loss (edge-cut white cells get called red cells)")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
