"""`marrowdx eval crops`: the served classifier on a folder of class sub-folders,
scored at the dataset's own label granularity through the taxonomy's label map.

``--labels matek`` and ``--labels pbc`` use those datasets' folder names;
``--labels folder`` reads a lab's own folders by their class names, in any
case and the usual spellings (``Neutrophil``, ``neutrophils``, ``LYMPHOCYTE``,
``blast``, ``plasma cell``, ``NRBC``, ...; see ``FOLDER_NAMES``): each folder
is scored as the taxonomy classes it names, and a folder whose name is no
class is an error that lists the names known.
"""

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

# Common class-folder names (normalised: lower case, spaces and hyphens as "_",
# a plural "s" dropped) -> the taxonomy classes they name. Taxonomy codes name
# themselves too.
FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "neutrophil": ("band_neutrophil", "segmented_neutrophil"),
    "segmented": ("segmented_neutrophil",), "seg": ("segmented_neutrophil",), "sne": ("segmented_neutrophil",),
    "neutrophil_segmented": ("segmented_neutrophil",), "segmented_neutrophil": ("segmented_neutrophil",),
    "band": ("band_neutrophil",), "bne": ("band_neutrophil",), "neutrophil_band": ("band_neutrophil",),
    "stab": ("band_neutrophil",),
    "lymphocyte": ("lymphocyte",), "lymph": ("lymphocyte",), "lym": ("lymphocyte",), "lyt": ("lymphocyte",),
    "monocyte": ("monocyte",), "mono": ("monocyte",), "mon": ("monocyte",),
    "eosinophil": ("eosinophil",), "eo": ("eosinophil",), "eos": ("eosinophil",),
    "basophil": ("basophil",), "baso": ("basophil",), "bas": ("basophil",),
    "blast": ("blast", "myeloblast", "lymphoblast", "megakaryoblast"), "bla": ("blast", "myeloblast", "lymphoblast",
                                                                              "megakaryoblast"),
    "myeloblast": ("myeloblast", "blast"), "lymphoblast": ("lymphoblast", "blast"),
    "promyelocyte": ("promyelocyte", "abnormal_promyelocyte"), "pmo": ("promyelocyte", "abnormal_promyelocyte"),
    "pmy": ("promyelocyte", "abnormal_promyelocyte"),
    "myelocyte": ("myelocyte",), "my": ("myelocyte",), "myb": ("myelocyte",),
    "metamyelocyte": ("metamyelocyte",), "mmy": ("metamyelocyte",), "mmz": ("metamyelocyte",),
    "ig": ("promyelocyte", "myelocyte", "metamyelocyte"),
    "immature_granulocyte": ("promyelocyte", "myelocyte", "metamyelocyte"),
    "erythroblast": ("erythroblast", "proerythroblast"), "normoblast": ("erythroblast", "proerythroblast"),
    "nrbc": ("erythroblast", "proerythroblast"), "ebo": ("erythroblast",),
    "plasma_cell": ("plasma_cell",), "plasma": ("plasma_cell",), "plasmacyte": ("plasma_cell",),
    "plm": ("plasma_cell",),
    "platelet": ("platelet",), "thrombocyte": ("platelet",), "giant_platelet": ("platelet",),
    "smudge": ("uncountable",), "smudge_cell": ("uncountable",), "nif": ("uncountable",),
    "artefact": ("uncountable",), "artifact": ("uncountable",),
}
NOT_WHITE = {"platelet", "uncountable", "other"}


def normalised_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key.endswith("s") and key[:-1] in FOLDER_NAMES:
        key = key[:-1]
    return key


def folder_codes(name: str) -> tuple[str, ...]:
    """The taxonomy classes a folder name means, or () when it names none."""
    key = normalised_name(name)
    if key in FOLDER_NAMES:
        return FOLDER_NAMES[key]
    codes = default_taxonomy().codes
    for candidate in (key, key[:-1] if key.endswith("s") else key):
        if candidate in codes:
            return (candidate,)
    return ()


def white_cell_codes(name: str) -> tuple[str, ...]:
    return tuple(c for c in folder_codes(name) if c not in NOT_WHITE)


def folder_label_map(folders: list[str]) -> dict:
    """A label map (as the taxonomy's) for a lab's own class folders."""
    unknown = [f for f in folders if not folder_codes(f)]
    if unknown:
        raise ValueError(f"class folder(s) {', '.join(repr(f) for f in unknown)} name no cell class; rename "
                         f"or remove them (known: {', '.join(sorted(FOLDER_NAMES))} and the taxonomy codes)")
    by_folder: dict[str, tuple[str, ...]] = {}
    for folder in folders:
        codes = folder_codes(folder)
        taken = [other for other, c in by_folder.items() if set(c) & set(codes)]
        if taken:
            raise ValueError(f"class folders {taken[0]!r} and {folder!r} name the same cell class; merge them")
        by_folder[folder] = codes
    return {"by_folder": by_folder}


def label_of(label_map: dict, code: str) -> str:
    """The dataset's own (folder) label for a predicted taxonomy code, or 'other'."""
    for folder, targets in label_map["by_folder"].items():
        if code in targets:
            return folder
    return "other"


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
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder of class sub-folders")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    label_map = folder_label_map(folders) if dataset == "folder" else taxonomy.label_maps[dataset]
    files = [(f, p) for f in folders for p in sorted((root / f).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and (split is None or split_of(f"{f}/{p.name}") == split)]
    if not files:
        raise ValueError(f"no crops ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class sub-folders of {root}"
                         + (f" (split {split})" if split else ""))
    true, pred, accepted = [], [], []
    scores = {f: [] for f in folders}
    for start in tqdm(range(0, len(files), BATCH), desc=f"eval {dataset}", disable=not progress, unit="batch"):
        chunk = files[start : start + BATCH]
        crops = [pb.Image(data=framed_png(p, dataset), image_id=f"{i}") for i, (_, p) in enumerate(chunk, start)]
        response = client.classify(crops, top_k=TOP_K)
        for (folder, _), call in zip(chunk, response.cells, strict=True):
            true.append(folder)
            top = call.top_k[0].cell_class
            pred.append(label_of(label_map, top))
            accepted.append(call.exclusion_reason != pb.EXCLUSION_REASON_LOW_CONFIDENCE)
            mass = {f: 0.0 for f in folders}
            for cp in call.top_k:
                label = label_of(label_map, cp.cell_class)
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
    if dataset == "folder":
        report["folder_classes"] = {f: list(c) for f, c in label_map["by_folder"].items()}
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
