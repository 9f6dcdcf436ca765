"""Which detections are counted: edge, overlap, smudge and the reject path."""

from __future__ import annotations

import numpy as np

from marrowdx.domain.cells import (
    Exclusion,
    Thresholds,
    call_from_probabilities,
    geometric_exclusions,
    kept_detections,
    suppress_duplicates,
)
from marrowdx.domain.taxonomy import default_taxonomy

TAX = default_taxonomy()
T = Thresholds()


def test_cell_touching_the_border_is_cut_by_edge():
    boxes = np.array([[0, 50, 40, 90], [100, 100, 140, 140]], np.float32)
    out = geometric_exclusions(boxes, np.array([True, True]), 300, 300, T)
    assert out == [Exclusion.CUT_BY_EDGE, Exclusion.NONE]


def test_overlapping_nucleated_cells_are_both_excluded():
    boxes = np.array([[100, 100, 160, 160], [120, 110, 180, 170], [10 + 200, 10 + 200, 250, 250]], np.float32)
    out = geometric_exclusions(boxes, np.array([True, True, True]), 300, 300, T)
    assert out[:2] == [Exclusion.OVERLAPPING, Exclusion.OVERLAPPING]
    assert out[2] is Exclusion.NONE


def test_red_cells_do_not_make_a_white_cell_overlapping():
    boxes = np.array([[100, 100, 160, 160], [110, 110, 170, 170]], np.float32)
    out = geometric_exclusions(boxes, np.array([True, False]), 300, 300, T)
    assert out == [Exclusion.NONE, Exclusion.NONE]


def probs(**values):
    p = np.full(len(TAX.codes), 1e-4, np.float32)
    for code, v in values.items():
        p[TAX.index(code)] = v
    return p / p.sum()


def test_confident_call_is_counted_with_top_k():
    code, exclusion, ranked = call_from_probabilities(probs(blast=0.9, lymphocyte=0.08), TAX, T, 3)
    assert (code, exclusion) == ("blast", Exclusion.NONE)
    assert [c for c, _ in ranked[:2]] == ["blast", "lymphocyte"]
    assert len(ranked) == 3


def test_low_confidence_is_rejected_not_guessed():
    code, exclusion, _ = call_from_probabilities(probs(blast=0.4, lymphocyte=0.35, monocyte=0.25), TAX, T, 3)
    assert code == "blast" and exclusion is Exclusion.LOW_CONFIDENCE


def test_not_identifiable_class_is_excluded():
    _, exclusion, _ = call_from_probabilities(probs(uncountable=0.95), TAX, T, 1)
    assert exclusion is Exclusion.NOT_IDENTIFIABLE


def test_platelet_crop_is_excluded_as_platelet():
    _, exclusion, _ = call_from_probabilities(probs(platelet=0.95), TAX, T, 1)
    assert exclusion is Exclusion.PLATELET


def test_duplicate_peaks_on_one_cell_keep_the_best():
    boxes = np.array([[100, 100, 160, 160], [104, 102, 162, 158], [200, 200, 240, 240]], np.float32)
    keep = suppress_duplicates(boxes, np.array([0.6, 0.9, 0.7], np.float32), 0.5)
    assert keep.tolist() == [1, 2]


def test_touching_cells_are_not_duplicates():
    boxes = np.array([[100, 100, 160, 160], [140, 100, 200, 160]], np.float32)  # IoU 0.2
    assert sorted(suppress_duplicates(boxes, np.array([0.9, 0.8], np.float32), 0.5).tolist()) == [0, 1]
    assert suppress_duplicates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0


def test_kept_detections_applies_the_score_then_drops_duplicates():
    boxes = np.array([[100, 100, 160, 160], [104, 102, 162, 158], [200, 200, 240, 240], [10, 10, 30, 30]], np.float32)
    scores = np.array([0.6, 0.9, 0.7, 0.1], np.float32)
    assert kept_detections(boxes, scores, Thresholds(detection_score=0.25)).tolist() == [1, 2]

def test_a_blast_whose_lineage_the_model_splits_is_counted_as_its_likeliest_lineage():
    tax = TAX
    p = np.zeros(len(tax.codes))
    p[tax.index("myeloblast")], p[tax.index("lymphoblast")], p[tax.index("lymphocyte")] = 0.36, 0.34, 0.30
    code, exclusion, _ = call_from_probabilities(p, tax, T, 3)
    assert (code, exclusion) == ("myeloblast", Exclusion.NONE)  # 0.70 a blast, though no lineage reaches 0.5


def test_a_class_beating_every_blast_together_wins_and_a_weak_blast_group_is_rejected():
    tax = TAX
    p = np.zeros(len(tax.codes))
    p[tax.index("myeloblast")], p[tax.index("lymphoblast")], p[tax.index("lymphocyte")] = 0.2, 0.2, 0.6
    assert call_from_probabilities(p, tax, T, 3)[:2] == ("lymphocyte", Exclusion.NONE)
    p = np.zeros(len(tax.codes))
    p[tax.index("myeloblast")], p[tax.index("monocyte")], p[tax.index("lymphocyte")] = 0.45, 0.3, 0.25
    assert call_from_probabilities(p, tax, T, 3)[:2] == ("myeloblast", Exclusion.LOW_CONFIDENCE)

