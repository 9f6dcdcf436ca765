"""Pack the framed train and val crops into one small file, to train elsewhere.

The lent GPU machine sees only the repository (64 MiB in all), not
../shared/data: the decoded crop cache at 149 px is over 500 MB and the
source JPEGs 165 MB. WebP at quality 90 keeps the framed crops at about
3.8 kB each (mean absolute pixel error ~2 of 255, what the source JPEGs
already carry), 36 MB for both splits. Test crops are never packed: the
test split stays on this machine.

    python -m training.crop_pack --crop-size 128 --out var/pack/crops-149.npz

The 2026.11.27e classifier was trained on that pack (quality 90), when the
repository was 26 MB. With its 12 MB weights committed the repository is
37 MB, 35 MB of it weights. Round 3 (training/gpu_rounds/round3.txt) used one
pack at --crop-size 192 --quality 85 (224 px, 43 MB), which also serves 160
and 128 px runs (train_classifier scales it down); it travelled with the
committed weights moved out of the working tree for the call (git checkout
restores them).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from training.data import DEFAULT_DATA_ROOT, CropItem, cache_size_for

PACKED_SPLITS = ("train", "val")


def encode_crops(crops: np.ndarray, quality: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """N x S x S x 3 uint8 -> (all WebP bytes as one uint8 array, N + 1 offsets)."""
    blobs = []
    for crop in crops:
        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, "WEBP", quality=quality, method=6)
        blobs.append(buffer.getvalue())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), np.uint8), offsets


def decode_crop(blob: bytes) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    except OSError:
        # A Pillow built without WebP support: OpenCV decodes it too.
        import cv2

        return cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def decode_crops(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.stack([decode_crop(data[a:b].tobytes()) for a, b in zip(offsets[:-1], offsets[1:], strict=True)])


def write_pack(path: Path, items: list[CropItem], crops: np.ndarray, quality: int = 90) -> None:
    if len(items) != len(crops):
        raise ValueError(f"{len(items)} items but {len(crops)} crops")
    if any(item.split not in PACKED_SPLITS for item in items):
        raise ValueError("only train and val crops are packed; the test split stays here")
    data, offsets = encode_crops(crops, quality)
    meta = [{"name": f"{i.folder}/{i.path.name}", "dataset": i.dataset, "folder": i.folder,
             "targets": list(i.targets), "split": i.split} for i in items]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=data, offsets=offsets, meta=np.array(json.dumps(meta)), size=np.array(crops.shape[1]))


def read_pack(path: Path) -> tuple[list[CropItem], np.ndarray, int]:
    """(items, decoded crops, crop side) in the order they were packed."""
    with np.load(path, allow_pickle=False) as pack:
        meta = json.loads(str(pack["meta"]))
        crops = decode_crops(pack["data"], pack["offsets"])
        size = int(pack["size"])
    items = [CropItem(Path(m["name"]), m["dataset"], m["folder"], tuple(m["targets"]), m["split"]) for m in meta]
    return items, crops, size


def main(argv: list[str] | None = None) -> None:
    from marrowdx.domain.taxonomy import default_taxonomy
    from training.train_classifier import DATASETS, DEFAULT_CROP_SIZE, load_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="network input side the pack is for")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--limit", type=int, help="at most this many crops per dataset and split (tests)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    taxonomy = default_taxonomy()
    items, crops = [], []
    for split in PACKED_SPLITS:
        split_items, split_crops = load_split(args.data, taxonomy, split, args.limit, DATASETS, args.crop_size)
        items += split_items
        crops.append(split_crops.numpy())
    write_pack(args.out, items, np.concatenate(crops), args.quality)
    print(f"{len(items)} crops at {cache_size_for(args.crop_size)} px -> {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
