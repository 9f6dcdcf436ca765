"""The served classifier on held-out lineage cells, through the real service (ClassifyCells).

    python -m training.eval_lineage --json docs/metrics/lineage_served.json [--server HOST:PORT]

Held out from the served head: Aria's test-split fields (cells found by stain),
deepapl's test-split patients (split by patient), SegPC's test-split plasma
cells, and the Matek and PBC test splits. The rates are those the lineage issue
names, read off what the service counts (a cell is counted when its class is
countable and its top probability passes the reject threshold), so they include
the exported 8-view average, its temperature and the reject path.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.domain.counting import wilson_interval
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.settings import Settings
from training.data import DEFAULT_DATA_ROOT
from training.lineage_data import Cell, all_cells, load_crops

BATCH = 64
CROP_SIDE = 128


def png(crop: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()


def classify(client, cells: list[Cell]) -> list[tuple[str, bool]]:
    """(class, counted) for each cell, as the service calls it."""
    out = []
    for start in range(0, len(cells), BATCH):
        chunk = cells[start : start + BATCH]
        crops = load_crops(chunk, CROP_SIDE)
        response = client.classify([pb.Image(data=png(c), image_id=f"c{start + i}") for i, c in enumerate(crops)])
        out += [(call.cell_class, call.countable) for call in response.cells]
    return out


def rate(calls: list[tuple[str, bool]], hit: set[str]) -> dict:
    counted = [c for c, ok in calls if ok]
    k = sum(c in hit for c in counted)
    low, high = wilson_interval(k, len(counted))
    return {"cells": len(calls), "counted": len(counted), "called": k,
            "rate": round(k / len(counted), 4) if counted else None, "ci95": [round(low, 4), round(high, 4)]}


def main(argv: list[str] | None = None) -> None:
    from marrowdx.client import Client
    from marrowdx.embedded import given_or_embedded

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", help="HOST:PORT of a running service (default: start the embedded stack)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    taxonomy = default_taxonomy()
    blasts = {c.code for c in taxonomy.classes if c.blast_equivalent}
    myeloid_blasts = {"myeloblast", "abnormal_promyelocyte", "promonocyte", "monoblast", "blast"}
    cells = [c for c in all_cells(taxonomy, args.data) if c.split == "test"]
    groups = {
        "aria_all_fields": ([c for c in cells if c.dataset == "aria" and c.diagnosis != "benign"], {"lymphoblast"}),
        "aria_benign_fields": ([c for c in cells if c.dataset == "aria" and c.diagnosis == "benign"], {"lymphoblast"}),
        "deepapl_aml_blasts": ([c for c in cells if c.dataset == "deepapl" and c.label == "blast"
                                and c.diagnosis == "AML"], {"lymphoblast"}),
        "deepapl_lymphocytes": ([c for c in cells if c.dataset == "deepapl" and c.label == "lymphocyte"], {"lymphoblast"}),
        "matek_blasts": ([c for c in cells if c.dataset == "matek" and c.label == "BLA"], blasts),
        "segpc_plasma_cells": ([c for c in cells if c.dataset == "segpc"], {"plasma_cell"}),
    }
    result: dict = {"split": "test", "note": "Research use only. Cells held out from the served classifier's head."}
    with given_or_embedded(args.server, Settings.from_env()) as address, Client(address) as client:
        result["models"] = {"classifier": client.model_info().models.classifier}
        for name, (group, hit) in groups.items():
            calls = classify(client, group)
            result[name] = {"called_as": sorted(hit), **rate(calls, hit)}
            if name == "deepapl_aml_blasts":
                result["deepapl_aml_blasts_myeloid"] = {"called_as": sorted(myeloid_blasts), **rate(calls, myeloid_blasts)}
            print(name, json.dumps(result[name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
