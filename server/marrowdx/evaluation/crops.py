"""`marrowdx eval crops`: the served classifier on a folder of class sub-folders,
scored at the dataset's own label granularity through the taxonomy's label map."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import IMAGE_SUFFIXES, Client
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.evaluation.metrics import average_precision, classification_report
from marrowdx.evaluation.splits import split_of
from marrowdx.imaging.crops import frame_dataset_crop

BATCH = 64
TOP_K = 10


def framed_png(path: Path, dataset: str) -> bytes:
    with Image.open(path) as im:
        framed = frame_dataset_crop(im.convert("RGB"), dataset)
    buffer = io.BytesIO()
    framed.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate_crops(client: Client, root: Path, dataset: str, split: str | None = None,
                   progress: bool = False) -> tuple[dict, dict]:
    """Returns (report dict, curves for plotting). ``split`` keeps only files in that split."""
    taxonomy = default_taxonomy()
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, p) for f in folders for p in sorted((root / f).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and (split is None or split_of(f"{f}/{p.name}") == split)]
    true, pred, accepted = [], [], []
    scores = {f: [] for f in folders}
    for start in tqdm(range(0, len(files), BATCH), desc=f"eval {dataset}", disable=not progress, unit="batch"):
        chunk = files[start : start + BATCH]
        crops = [pb.Image(data=framed_png(p, dataset), image_id=f"{i}") for i, (_, p) in enumerate(chunk, start)]
        response = client.classify(crops, top_k=TOP_K)
        for (folder, _), call in zip(chunk, response.cells, strict=True):
            true.append(folder)
            top = call.top_k[0].cell_class
            pred.append(taxonomy.dataset_label_of(dataset, top))
            accepted.append(call.exclusion_reason != pb.EXCLUSION_REASON_LOW_CONFIDENCE)
            mass = {f: 0.0 for f in folders}
            for cp in call.top_k:
                label = taxonomy.dataset_label_of(dataset, cp.cell_class)
                if label in mass:
                    mass[label] += cp.probability
            for f in folders:
                scores[f].append(mass[f])
    report = classification_report(true, pred, folders)
    truth = np.asarray(true)
    curves = {}
    for f in folders:
        s = np.asarray(scores[f])
        report["per_class"][f]["ap"] = average_precision(s, truth == f)
        order = np.argsort(-s)
        hits = (truth[order] == f).astype(float)
        curves[f] = (np.cumsum(hits) / max(1, hits.sum()), np.cumsum(hits) / np.arange(1, len(hits) + 1))
    kept = np.asarray(accepted)
    report["dataset"] = dataset
    report["split"] = split or "all"
    report["coverage"] = float(kept.mean()) if len(kept) else 0.0
    report["accuracy_on_accepted"] = float((truth[kept] == np.asarray(pred)[kept]).mean()) if kept.any() else 0.0
    untrained = sorted({c.code for c in taxonomy.classes} - set(model_trained(client)))
    report["untrained_classes"] = untrained
    return report, curves


def model_trained(client: Client) -> list[str]:
    return [c.code for c in client.model_info().classes if c.trained]


def plot_curves(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for label, (recall, precision) in curves.items():
        ax.plot(recall, precision, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
