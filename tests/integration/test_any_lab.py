"""Any lab's images through the real service (issue #25): the same white cells whether a
field comes alone, in a 3x3 mosaic, at half or double size with its pixel spacing, or with
its scale estimated; inadequate fields left out with their reason; the lab's own
evaluation folders (VOC, class folders by name)."""

from __future__ import annotations

import csv
import io
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.evaluation.crops import evaluate_crops
from marrowdx.evaluation.detection import CategoryTally
from marrowdx.evaluation.fields import evaluate_fields, read_boxes
from marrowdx.imaging.scale import RED_CELL_UM, measure_training_scale

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
TXL = ROOT.parent / "shared" / "data" / "txl_pbc"
SIZE = "360x363"  # PBC's CellaVision fields: one source, one scale, so nine make one mosaic
N_FIELDS = 27


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def white_cells(client, image: Image.Image, spacing: float = 0.0) -> np.ndarray:
    response = client.analyze(pb.Image(data=png(image), image_id="f", pixel_spacing_um=spacing))
    return np.asarray([[c.box.x_min, c.box.y_min, c.box.x_max, c.box.y_max] for c in response.cells
                       if c.detector_category == "nucleated"], np.float32).reshape(-1, 4)


def score(found: list[np.ndarray], truth: list[np.ndarray]) -> tuple[float, int]:
    tally = CategoryTally(score_threshold=0.0)
    for f, t in zip(found, truth, strict=True):
        tally.add(f, np.ones(len(f)), t)
    return tally.summary()["recall"], sum(len(f) for f in found)


@pytest.fixture(scope="module")
def val_fields():
    if not TXL.is_dir():
        pytest.skip(f"{TXL} is absent (the shared data folder)")
    red_cell_px = measure_training_scale(TXL, "val")["sizes"][SIZE]["median_px"]
    fields = []
    for path in sorted((TXL / "images" / "val").iterdir()):
        with Image.open(path) as im:
            if f"{im.width}x{im.height}" != SIZE:
                continue
            image = im.convert("RGB")
        boxes, names = read_boxes(path, TXL / "labels" / "val", "yolo")
        fields.append((image, boxes[[n == "nucleated" for n in names]]))
        if len(fields) == N_FIELDS:
            break
    return fields, RED_CELL_UM / red_cell_px


@pytest.mark.needs_data
def test_the_same_white_cells_alone_in_a_mosaic_resampled_and_estimated(client, val_fields):
    fields, spacing = val_fields
    truth = [t for _, t in fields]
    alone = [white_cells(client, im, spacing) for im, _ in fields]
    base_recall, base_count = score(alone, truth)
    assert base_recall >= 0.9

    def check(name, found, truths):
        recall, count = score(found, truths)
        print(f"{name}: recall {recall:.3f} (alone {base_recall:.3f}), white cells {count} (alone {base_count})")
        assert abs(recall - base_recall) <= 0.02, (name, recall, base_recall)
        assert abs(count - base_count) <= max(1, 0.02 * base_count), (name, count, base_count)

    estimated = [white_cells(client, im) for im, _ in fields]
    check("estimated scale", estimated, truth)
    for factor in (0.5, 2.0):
        resized = []
        for im, _ in fields:
            size = (round(im.width * factor), round(im.height * factor))
            resized.append(white_cells(client, im.resize(size, Image.BILINEAR), spacing / factor) / factor)
        check(f"resampled x{factor}", resized, truth)
    # Nine fields side by side: one 1080 px image, tiled by the service.
    mosaics, mosaic_truth = [], []
    w, h = fields[0][0].size
    for start in range(0, len(fields), 9):
        canvas = Image.new("RGB", (3 * w, 3 * h))
        boxes = []
        for k, (im, t) in enumerate(fields[start : start + 9]):
            x, y = (k % 3) * w, (k // 3) * h
            canvas.paste(im, (x, y))
            boxes.append(t + np.array([x, y, x, y], np.float32))
        mosaics.append(white_cells(client, canvas, spacing))
        mosaic_truth.append(np.concatenate(boxes))
    check("3x3 mosaic", mosaics, mosaic_truth)


def test_a_field_without_red_cells_or_spacing_is_refused_naming_the_spacing(client):
    """Sharp, stained, nothing wrong with it but no red cell to measure a scale by."""
    rng = np.random.default_rng(1)
    image = Image.new("RGB", (480, 480), (235, 230, 225))
    draw = ImageDraw.Draw(image)
    for x in range(40, 440, 110):
        for y in range(40, 440, 110):
            draw.ellipse((x, y, x + 60, y + 60), fill=(110, 40, 160))
    noisy = np.asarray(image, np.float32) + rng.normal(0, 6, (480, 480, 3))
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    with pytest.raises(grpc.RpcError) as info:
        client.analyze(pb.Image(data=png(image), image_id="no-red-cells"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pixel_spacing_um" in info.value.details()


def test_inadequate_fields_are_left_out_of_the_case_with_their_reason(client):
    paths = sorted((SAMPLES / "fields" / "images").glob("*.jpg"))
    images = [Image.open(p).convert("RGB") for p in paths]
    info = pb.CaseInfo(case_id="ADEQ", specimen_type=pb.SPECIMEN_TYPE_PERIPHERAL_BLOOD)
    good = client.diagnose(info, fields=[pb.Image(data=p.read_bytes(), image_id=p.name) for p in paths])
    blurred = images[0].filter(ImageFilter.GaussianBlur(12))
    empty = Image.new("RGB", images[1].size, tuple(int(v) for v in np.percentile(
        np.asarray(images[1]).reshape(-1, 3), 95, axis=0)))
    # No spacing for any: the bad fields show no red cells to measure one, and are still
    # left out for what they are, not for their scale, and the case goes on.
    mixed = client.diagnose(info, fields=[pb.Image(data=p.read_bytes(), image_id=p.name) for p in paths] + [
        pb.Image(data=png(blurred), image_id="blurred"), pb.Image(data=png(empty), image_id="empty")])
    assert mixed.cells_counted == good.cells_counted
    notes = [n for n in mixed.not_assessed if n.startswith("fields_left_out")]
    assert len(notes) == 1 and "out_of_focus 1" in notes[0] and "too_thin 1" in notes[0]
    assert not [n for n in good.not_assessed if n.startswith("fields_left_out")]


def to_voc(src: Path, dst: Path) -> None:
    """The sample fields (YOLO) written as a Pascal VOC folder."""
    (dst / "JPEGImages").mkdir(parents=True)
    (dst / "Annotations").mkdir()
    names = {"nucleated": "WBC", "red_cell": "RBC", "platelet": "Platelets"}
    for path in sorted((src / "images").glob("*.jpg")):
        shutil.copy(path, dst / "JPEGImages" / path.name)
        boxes, cats = read_boxes(path, src / "labels", "yolo")
        root = ET.Element("annotation")
        for box, cat in zip(boxes, cats, strict=True):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = names[cat]
            bb = ET.SubElement(obj, "bndbox")
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
                ET.SubElement(bb, key).text = f"{value:.1f}"
        ET.ElementTree(root).write(dst / "Annotations" / f"{path.stem}.xml")


def test_eval_fields_reads_the_voc_layout_as_it_reads_yolo(client, tmp_path):
    to_voc(SAMPLES / "fields", tmp_path / "voc")
    yolo = evaluate_fields(client, SAMPLES / "fields", "yolo")
    voc = evaluate_fields(client, tmp_path / "voc", "voc")
    assert voc["n_images"] == yolo["n_images"] == 3
    for category in ("wbc", "rbc"):
        assert voc[category]["recall"] == pytest.approx(yolo[category]["recall"], abs=0.01)
        assert voc[category]["n_ground_truth"] == yolo[category]["n_ground_truth"]


def test_eval_crops_reads_a_labs_own_class_folders(client, tmp_path):
    lab_names = {"BLA": "Blasts", "EOS": "EOSINOPHIL", "LYT": "lymphocytes", "MON": "Monocyte",
                 "NGS": "segmented neutrophils", "PMO": "promyelocyte"}
    rows = [r for r in csv.DictReader((SAMPLES / "demo-case" / "labels.csv").open())
            if r["matek_label"] in lab_names][::4]
    for row in rows:
        for root, folder in ((tmp_path / "matek", row["matek_label"]), (tmp_path / "lab", lab_names[row["matek_label"]])):
            (root / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(SAMPLES / "demo-case" / "crops" / row["file"], root / folder / row["file"])
    matek, _ = evaluate_crops(client, tmp_path / "matek", "matek")
    lab, _ = evaluate_crops(client, tmp_path / "lab", "folder")
    assert lab["n"] == matek["n"] == len(rows)
    assert lab["accuracy"] == pytest.approx(matek["accuracy"], abs=1e-9)
    assert set(lab["folder_classes"]) == {lab_names[r["matek_label"]] for r in rows}
