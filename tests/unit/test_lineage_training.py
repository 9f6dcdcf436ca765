"""Lineage and marrow training data: labels from diagnoses, cells found by stain, partial labels, heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from training.lineage_data import Cell, deepapl_cells, find_white_cells, patient_folds, segpc_cells
from training.marrow_fields import blob_recall, blobs, ignore_masks, is_single_cell
from training.train_detector import focal_loss
from training.train_head import apl_decision, fit_head, patient_figures, roc_auc, set_nll

VIOLET = (110, 60, 170)
RED_CELL = (215, 170, 175)


def smear(size: int = 224) -> Image.Image:
    image = Image.new("RGB", (size, size), (240, 235, 238))
    draw = ImageDraw.Draw(image)
    for x, y in ((30, 30), (180, 60), (60, 180), (150, 170)):
        draw.ellipse((x - 9, y - 9, x + 9, y + 9), fill=RED_CELL)
    return image


def test_white_cells_are_found_by_stain_and_clumps_and_edge_cells_left_out():
    image = smear()
    draw = ImageDraw.Draw(image)
    singles = [(60, 60), (120, 100), (170, 150)]
    for x, y in singles:
        draw.ellipse((x - 13, y - 13, x + 13, y + 13), fill=VIOLET)
    draw.ellipse((40, 120, 66, 146), fill=VIOLET)  # two cells touching: one clump
    draw.ellipse((62, 120, 88, 146), fill=VIOLET)
    draw.ellipse((-10, 200, 16, 226), fill=VIOLET)  # cut by the edge
    boxes = find_white_cells(image)
    centres = sorted(((x0 + x1) // 2, (y0 + y1) // 2) for x0, y0, x1, y1 in boxes)
    assert len(boxes) == 3
    for (cx, cy), (x, y) in zip(centres, sorted(singles), strict=True):
        assert abs(cx - x) <= 2 and abs(cy - y) <= 2


def test_a_field_of_red_cells_only_has_no_white_cell():
    assert find_white_cells(smear()) == []


def write_manifest(root, rows):
    lines = ["file,patient,diagnosis,cell_class"]
    for file, patient, diagnosis, cls in rows:
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / file)
        lines.append(f"{file},{patient},{diagnosis},{cls}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


def test_deepapl_lineage_follows_the_patients_diagnosis_and_splits_by_patient(tmp_path):
    write_manifest(tmp_path, [
        ("blast/a1.jpg", "P1", "AML", "blast"), ("promyelocyte/a2.jpg", "P1", "AML", "promyelocyte"),
        ("blast/b1.jpg", "P2", "APL", "blast"), ("promyelocyte/b2.jpg", "P2", "APL", "promyelocyte"),
        ("lymphocyte_variant/b3.jpg", "P2", "APL", "lymphocyte_variant"),
        ("smudge/b4.jpg", "P2", "APL", "smudge"),
    ])
    cells = {c.path.name: c for c in deepapl_cells(tmp_path)}
    assert cells["a1.jpg"].targets == ("myeloblast",)
    assert cells["a2.jpg"].targets == ("promyelocyte",)
    assert cells["b1.jpg"].targets == ("myeloblast", "abnormal_promyelocyte")
    assert cells["b2.jpg"].targets == ("abnormal_promyelocyte",)
    assert cells["b3.jpg"].targets == ("reactive_lymphocyte",)
    assert cells["b4.jpg"].targets == ("smudge",)
    assert len({c.split for c in cells.values() if c.group == "P2"}) == 1


def test_patient_folds_keep_a_patient_whole_and_spread_apl_patients():
    cells = [Cell("deepapl", tmp, "blast", ("myeloblast",), "train", f"P{i}", "APL" if i < 10 else "AML")
             for i in range(50) for tmp in (pytest.importorskip("pathlib").Path(f"/x/{i}-{j}.jpg") for j in range(3))]
    folds = patient_folds(cells, 5)
    assert set(folds) == {f"P{i}" for i in range(50)}
    apl_per_fold = np.bincount([folds[f"P{i}"] for i in range(10)], minlength=5)
    assert apl_per_fold.max() - apl_per_fold.min() <= 1
    assert patient_folds(list(reversed(cells)), 5) == folds


def test_segpc_plasma_cells_are_single_cell_blobs_only(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (512, 512), (200, 180, 200)).save(tmp_path / "images" / "1.jpg")
    mask = Image.new("1", (512, 512), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((50, 50, 120, 120), fill=1)  # one plasma cell
    draw.ellipse((250, 250, 330, 330), fill=1)  # three touching: one merged blob
    draw.ellipse((320, 250, 400, 330), fill=1)
    draw.ellipse((390, 250, 470, 330), fill=1)
    mask.save(tmp_path / "masks" / "1.png")
    cells = segpc_cells(tmp_path)
    assert [c.box for c in cells] == [(50, 50, 121, 121)]
    assert cells[0].targets == ("plasma_cell",)


def test_unlabelled_nuclei_and_merged_blobs_are_unknown_not_background():
    size, stride = 64, 4
    image = np.full((size, size, 3), 235, np.uint8)
    image[40:52, 40:52] = VIOLET  # an unlabelled nucleus
    mask = np.zeros((size, size), bool)
    mask[8:20, 8:20] = True  # a labelled plasma cell
    image[8:20, 8:20] = VIOLET
    labels, _ = blobs(mask)
    known = ignore_masks(image, labels, [1], ("nucleated", "red_cell", "platelet", "smudge"), stride)
    assert known[0, 11, 11] == 0  # the unlabelled nucleus: no negative loss
    assert known[0, 3, 3] == 1  # the labelled cell's own centre is trusted (it is a positive)
    assert known[0, 15, 1] == 1  # plain background
    assert known[1:].sum() == 0  # red cells, platelets, smudges are not labelled on these fields


def test_focal_loss_ignores_negatives_where_unknown():
    logits = torch.full((1, 1, 4, 4), 2.0)  # confident everywhere
    target = torch.zeros(1, 1, 4, 4)
    assert focal_loss(logits, target) > 0
    assert focal_loss(logits, target, known=torch.zeros(1, 1, 4, 4)) == 0


def test_a_merged_blob_is_found_once_and_blob_recall_counts_centres_inside():
    from training.marrow_fields import MarrowField

    labels = np.zeros((32, 32), np.uint16)
    labels[2:10, 2:10] = 1
    labels[20:30, 20:30] = 2
    field = MarrowField(np.zeros((32, 32, 3), np.uint8), np.zeros((0, 4)), np.ones((1, 8, 8)),
                        np.array([[2, 2, 10, 10], [20, 20, 30, 30]], np.float32), labels)
    hits = np.array([[3, 3, 8, 8], [0, 0, 12, 12]], np.float32)  # both centred in blob 1
    assert blob_recall([hits], [field]) == {"blobs": 2, "found": 1, "recall": 0.5}
    assert is_single_cell((0, 0, 60, 70)) and not is_single_cell((0, 0, 60, 200))


def test_set_nll_is_the_probability_of_the_target_set():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    mask = torch.tensor([[False, True, True]])
    assert float(set_nll(logits, mask)[0]) == pytest.approx(-np.log(0.5), abs=1e-6)


def test_head_learns_a_new_class_and_keeps_the_old_one_exactly():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(200, 1, 8, generator=g) + torch.tensor([3.0] + [0.0] * 7)
    new = torch.randn(200, 1, 8, generator=g) + torch.tensor([0.0, 3.0] + [0.0] * 6)
    x = torch.cat([old, new])
    mask = torch.zeros(400, 2, dtype=torch.bool)
    mask[:200, 0] = True
    mask[200:, 1] = True
    init_w = torch.zeros(2, 8)
    init_w[0, 0] = 2.0
    frozen = torch.tensor([True, False])
    for hidden in (0, 16):
        head = fit_head(x, mask, torch.ones(400), init_w, torch.tensor([0.0, -4.0]), epochs=30, lr=0.05, batch=64,
                        frozen=frozen, hidden=hidden, learn=~frozen)
        with torch.no_grad():
            pred = head(x[:, 0]).argmax(1)
        assert (pred[:200] == 0).float().mean() > 0.9  # Bayes error here is about 2% a class
        assert (pred[200:] == 1).float().mean() > 0.9
        assert torch.equal(head.base.weight[0], init_w[0])  # the old class's row did not move
        if hidden:  # the MLP adds to the new class only
            assert head.extra_mask.tolist() == [0.0, 1.0]


def test_trained_classes_need_a_label_of_their_own_or_a_set_of_trained_alternatives():
    from training.data import trained_classes_of

    sets = [("eosinophil",), ("smudge",), ("uncountable", "smudge"), ("myeloblast", "lymphoblast", "monoblast"),
            ("myeloblast",)]
    assert trained_classes_of(sets) == ["eosinophil", "myeloblast", "smudge", "uncountable"]


def test_apl_decision_reads_the_interval_against_the_threshold():
    assert apl_decision(40, 100, 0.10) == "positive"
    assert apl_decision(1, 200, 0.10) == "negative"
    assert apl_decision(10, 100, 0.10) == "indeterminate"
    assert apl_decision(0, 0, 0.10) == "indeterminate"


def test_roc_auc_and_patient_figures():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.5], [0.5]) == 0.5
    patients = [
        {"patient": "A", "diagnosis": "APL", "counted": 100, "abnormal_promyelocyte": 50,
         "cytologist_promyelocytes": 40, "cytologist_countable": 100, "mean_p_abnormal_promyelocyte": 0.5},
        {"patient": "B", "diagnosis": "AML", "counted": 200, "abnormal_promyelocyte": 0,
         "cytologist_promyelocytes": 1, "cytologist_countable": 100, "mean_p_abnormal_promyelocyte": 0.01},
        {"patient": "C", "diagnosis": "AML", "counted": 30, "abnormal_promyelocyte": 3,
         "cytologist_promyelocytes": 2, "cytologist_countable": 30, "mean_p_abnormal_promyelocyte": 0.1},
    ]
    figures = patient_figures(patients, 0.10)
    assert figures["rule"]["decided"] == {"tp": 1, "fn": 0, "tn": 1, "fp": 0}
    assert figures["rule"]["indeterminate"] == 1
    assert figures["model_abnormal_promyelocyte_share"]["roc_auc"] == 1.0
