"""Features of every labelled cell under a frozen classifier backbone, in several views.

    python -m training.lineage_features --backbone model_repository/variants/gpu-libtorch/classifier/1/model.pt \
        --taxonomy server/marrowdx/data/taxonomy.json --out var/lineage/features.npz

Training the whole network on lineage takes a GPU (about 12 crops a second on
2 CPU cores at 128 px); the backbone's pooled features take one forward pass
(about 75 crops a second), after which a new head trains in seconds and can be
cross-validated by patient many times over. Views per cell:

0. the crop as served;
1. its transpose (one of the 8 dihedral views the served model averages);
2-3. a random dihedral view with stain and camera jitter: colour, contrast and
   saturation at twice the strength used before, blur, and, for every source
   but Aria, a round trip through 40-72 px so that low resolution (Aria's cells
   are 25-40 px across) cannot become a lymphoblast cue.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from marrowdx.domain.taxonomy import load_taxonomy
from training.augment import random_blur, resize_nhwc, stain_jitter
from training.data import DEFAULT_DATA_ROOT
from training.lineage_data import SOURCES, Cell, all_cells, load_crops
from training.models import CellClassifier, load_classifier

VIEWS = 4
# The frozen backbone: the 2026.11.27g classifier (its TorchScript export). Since 2026.12.02a the
# repository serves the lineage head, so take it from history first:
#   mkdir -p var/lineage/backbone-2026.11.27g/1 && git show 6f32495:model_repository/variants/gpu-libtorch/\
#     classifier/1/model.pt > var/lineage/backbone-2026.11.27g/1/model.pt
BACKBONE = Path("var/lineage/backbone-2026.11.27g/1/model.pt")


def load_backbone(path: Path) -> CellClassifier:
    """The classifier of a TorchScript export (DihedralAverage around it) or of a checkpoint,
    with as many outputs as its head has."""
    if not path.exists():
        raise SystemExit(f"no backbone at {path}: see BACKBONE in training/lineage_features.py")
    if path.suffix == ".pt" and path.parent.name == "1":
        scripted = torch.jit.load(str(path), map_location="cpu")
        state = {k.removeprefix("classifier."): v for k, v in scripted.state_dict().items()}
    else:
        state = torch.load(path, map_location="cpu")
    return load_classifier(state, state["head.weight"].shape[0]).eval()


def degrade_resolution(images: torch.Tensor, generator: torch.Generator, low: int = 40, high: int = 72) -> torch.Tensor:
    size = images.shape[1]
    side = int(torch.randint(low, high + 1, (1,), generator=generator))
    return resize_nhwc(resize_nhwc(images, side), size)


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral views (NHWC)."""
    out = torch.rot90(images, k % 4, dims=(1, 2))
    return out.flip(2) if k >= 4 else out


def views_of(crops: np.ndarray, cells: list[Cell], generator: torch.Generator) -> list[torch.Tensor]:
    x = torch.from_numpy(crops).float()
    out = [x, x.transpose(1, 2)]
    not_aria = torch.tensor([c.dataset != "aria" for c in cells])
    for _ in range(VIEWS - 2):
        k = int(torch.randint(0, 8, (1,), generator=generator))
        v = stain_jitter(dihedral(x, k), generator, strength=2.0)
        v = random_blur(v, generator, p=0.3, sigma_max=1.2)
        if not_aria.any() and float(torch.rand(1, generator=generator)) < 0.5:
            v[not_aria] = degrade_resolution(v[not_aria], generator)
        out.append(v)
    return [v.round().clamp(0, 255).to(torch.uint8) for v in out]


@torch.inference_mode()
def pooled_features(model: CellClassifier, crops: torch.Tensor) -> torch.Tensor:
    return model.features(model.norm(crops))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", type=Path, default=BACKBONE)
    p.add_argument("--taxonomy", type=Path, help="taxonomy JSON (default: the packaged one)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--sources", default=",".join(SOURCES))
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="cells per source (0: all); for a smoke test")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    taxonomy = load_taxonomy(args.taxonomy)
    cells = all_cells(taxonomy, args.data, tuple(args.sources.split(",")))
    if args.limit:
        picked: dict[str, int] = {}
        kept = []
        for cell in cells:
            if picked.get(cell.dataset, 0) < args.limit:
                picked[cell.dataset] = picked.get(cell.dataset, 0) + 1
                kept.append(cell)
        cells = kept
    if not cells:
        raise SystemExit(f"no cells found under {args.data} for sources {args.sources}")
    print(f"{len(cells)} cells: " + ", ".join(f"{s} {sum(c.dataset == s for c in cells)}" for s in SOURCES), flush=True)
    model = load_backbone(args.backbone)
    generator = torch.Generator().manual_seed(0)
    features = np.zeros((len(cells), VIEWS, model.head.in_features), dtype=np.float16)
    started = time.time()
    for start in range(0, len(cells), args.batch):
        rows = cells[start : start + args.batch]
        crops = load_crops(rows, args.crop_size)
        for v, view in enumerate(views_of(crops, rows, generator)):
            features[start : start + len(rows), v] = pooled_features(model, view).numpy()
        done = start + len(rows)
        if done % (args.batch * 10) < args.batch or done == len(cells):
            rate = done / (time.time() - started)
            print(f"{done}/{len(cells)} cells, {rate:.1f}/s, {(len(cells) - done) / rate / 60:.1f} min left", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = [{"dataset": c.dataset, "key": c.key, "label": c.label, "targets": list(c.targets), "split": c.split,
             "group": c.group, "diagnosis": c.diagnosis} for c in cells]
    np.savez(args.out, features=features, meta=np.array(json.dumps(meta)),
             backbone=np.array(str(args.backbone)), taxonomy=np.array(taxonomy.version))
    print(f"wrote {args.out}: {features.shape}")


if __name__ == "__main__":
    main()
