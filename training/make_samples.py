"""Build ``samples/`` (committed, < 2 MB) from ../shared/data's held-out splits.

    python -m training.make_samples

- samples/demo-case/crops/: a bone-marrow case of Matek crops from the val and
  test splits with a known composition (160 blasts among 400 cells, 40%): no
  classifier up to 2026.11.27e trained on them, 2026.11.27f and later
  (cross-fitted on train and val) trained on the val ones, so the demo shows the flow and the
  test split alone measures accuracy; resized to 96 px to keep samples/ under 2 MB (the service
  resizes submitted crops to the classifier's input, 128 px since 2026.11.27c);
- samples/fields/: three TXL-PBC validation fields with their YOLO labels.
Deterministic: the same files every time. Licences: see samples/ATTRIBUTION.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from marrowdx.evaluation.splits import split_of
from training.data import DEFAULT_DATA_ROOT

OUT = Path(__file__).resolve().parents[1] / "samples"
DEMO_COMPOSITION = {"BLA": 160, "LYT": 70, "NGS": 60, "MON": 50, "EOS": 35, "PMO": 25}
CROP_SIDE = 96
N_FIELDS = 3


def main() -> None:
    crops_dir = OUT / "demo-case" / "crops"
    shutil.rmtree(crops_dir, ignore_errors=True)
    crops_dir.mkdir(parents=True)
    manifest = ["file,matek_label"]
    for folder, n in DEMO_COMPOSITION.items():
        files = [p for p in sorted((DEFAULT_DATA_ROOT / "matek_bm" / folder).iterdir())
                 if split_of(f"{folder}/{p.name}") in ("val", "test")][:n]
        if len(files) < n:
            raise SystemExit(f"only {len(files)} held-out crops in {folder}")
        for p in files:
            with Image.open(p) as im:
                im.convert("RGB").resize((CROP_SIDE, CROP_SIDE), Image.LANCZOS).save(crops_dir / p.name, quality=90)
            manifest.append(f"{p.name},{folder}")
    (OUT / "demo-case" / "labels.csv").write_text("\n".join(manifest) + "\n")

    fields_dir = OUT / "fields"
    shutil.rmtree(fields_dir, ignore_errors=True)
    (fields_dir / "images").mkdir(parents=True)
    (fields_dir / "labels").mkdir(parents=True)
    txl = DEFAULT_DATA_ROOT / "txl_pbc"
    for p in sorted((txl / "images" / "val").iterdir())[:N_FIELDS]:
        shutil.copy2(p, fields_dir / "images" / p.name)
        shutil.copy2(txl / "labels" / "val" / f"{p.stem}.txt", fields_dir / "labels" / f"{p.stem}.txt")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"samples: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
