"""Evaluation tools a lab runs on its own labelled images (issue #25 item 6):
VOC and YOLO field layouts, clear failures on empty folders, class folders by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from marrowdx.evaluation.crops import evaluate_crops, folder_codes, folder_label_map, label_of
from marrowdx.evaluation.fields import evaluate_fields, locate, read_boxes

VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height></size>
<object><name>{wbc}</name><bndbox><xmin>4</xmin><ymin>5</ymin><xmax>30</xmax><ymax>33</ymax></bndbox></object>
<object><name>RBC</name><bndbox><xmin>40</xmin><ymin>10</ymin><xmax>60</xmax><ymax>30</ymax></bndbox></object>
<object><name>dust</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>
</annotation>"""


class NoCalls:
    """Stands where the service client would: these checks must fail before any call."""

    def __getattr__(self, name):
        raise AssertionError(f"the evaluation called the service ({name}) on a folder it should have refused")


def voc_folder(root: Path, wbc: str = "WBC") -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    Image.new("RGB", (64, 48), "white").save(root / "JPEGImages" / "f1.jpg")
    (root / "Annotations" / "f1.xml").write_text(VOC_XML.format(name="f1", wbc=wbc))
    return root


@pytest.mark.parametrize("wbc", ["WBC", "wbc", "Neutrophil", "lymphocytes", "Leukocyte"])
def test_voc_layout_is_read_with_white_cells_by_any_name(tmp_path, wbc):
    images, labels = locate(voc_folder(tmp_path, wbc), "voc")
    assert images.name == "JPEGImages" and labels.name == "Annotations"
    boxes, names = read_boxes(images / "f1.jpg", labels, "voc")
    assert names == ["nucleated", "red_cell"]  # unknown names ("dust") are not boxes of ours
    assert boxes.tolist() == [[4, 5, 30, 33], [40, 10, 60, 30]]


def test_yolo_split_layout_is_found(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    assert locate(tmp_path / "images" / "val", "yolo") == (tmp_path / "images" / "val", tmp_path / "labels" / "val")


@pytest.mark.parametrize("fmt", ["voc", "yolo"])
def test_a_folder_without_images_fails_clearly(tmp_path, fmt):
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(ValueError, match="no images"):
        evaluate_fields(NoCalls(), tmp_path, fmt)


def test_images_without_any_annotation_fail_clearly(tmp_path):
    root = voc_folder(tmp_path)
    (root / "Annotations" / "f1.xml").unlink()
    with pytest.raises(ValueError, match="none of the 1 images"):
        evaluate_fields(NoCalls(), root, "voc")


@pytest.mark.parametrize(("name", "codes"), [
    ("Neutrophils", ("band_neutrophil", "segmented_neutrophil")),
    ("LYMPHOCYTE", ("lymphocyte",)),
    ("monocytes", ("monocyte",)),
    ("Eosinophil", ("eosinophil",)),
    ("basophils", ("basophil",)),
    ("Blasts", ("blast", "myeloblast", "lymphoblast", "megakaryoblast")),
    ("plasma cell", ("plasma_cell",)),
    ("NRBC", ("erythroblast", "proerythroblast")),
    ("segmented_neutrophil", ("segmented_neutrophil",)),
    ("myelocyte", ("myelocyte",)),
])
def test_common_class_folder_names_in_any_case(name, codes):
    assert folder_codes(name) == codes


def test_a_folder_naming_no_class_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'misc'"):
        folder_label_map(["lymphocyte", "misc"])


def test_two_folders_for_one_class_are_an_error():
    with pytest.raises(ValueError, match="same cell class"):
        folder_label_map(["Lymphocyte", "lymphocytes"])


def test_predictions_score_as_the_lab_folder():
    label_map = folder_label_map(["Neutrophils", "Lymphocyte"])
    assert label_of(label_map, "band_neutrophil") == "Neutrophils"
    assert label_of(label_map, "segmented_neutrophil") == "Neutrophils"
    assert label_of(label_map, "monocyte") == "other"


def test_crop_folder_without_crops_fails_clearly(tmp_path):
    (tmp_path / "lymphocyte").mkdir()
    np.save(tmp_path / "lymphocyte" / "not_an_image.npy", np.zeros(3))
    with pytest.raises(ValueError, match="no crops"):
        evaluate_crops(NoCalls(), tmp_path, "folder")
