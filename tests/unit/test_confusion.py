"""The measured confusion per weights version: loading it, and the bounds built from it."""

from __future__ import annotations

import json

import pytest

from marrowdx.domain.confusion import load_confusion, parse_confusion
from marrowdx.domain.counting import differential, wilson_interval
from marrowdx.domain.diagnosis import Context, load_rules, rule_bounds
from marrowdx.domain.evidence import CaseEvidence
from tests.unit.rules_cases import TAX, TRAINED_LINEAGE, confusion

RULES = load_rules()


def write(tmp_path, version, **over):
    raw = {"weights_version": version, "taxonomy_version": "2026.12-1", "data": "hand-made val",
           "called": {"blast": {"blast": 90, "lymphocyte": 10}}, **over}
    (tmp_path / f"{version}.json").write_text(json.dumps(raw))


def test_loads_the_file_of_the_running_weights(tmp_path):
    write(tmp_path, "w1")
    c = load_confusion("w1", tmp_path)
    assert c.weights_version == "w1" and c.called["blast"] == {"blast": 90, "lymphocyte": 10}


def test_no_file_for_the_weights_means_none(tmp_path):
    assert load_confusion("w2", tmp_path) is None
    assert load_confusion("../w1", tmp_path) is None  # never read outside the folder


def test_refuses_a_file_for_other_weights_and_bad_counts(tmp_path):
    write(tmp_path, "w3", weights_version="w4")
    with pytest.raises(ValueError, match="says weights w4"):
        load_confusion("w3", tmp_path)
    with pytest.raises(ValueError, match="whole number"):
        parse_confusion({"weights_version": "w", "taxonomy_version": "t", "data": "d",
                         "called": {"blast": {"blast": -1}}})
    with pytest.raises(ValueError, match="lacks 'data'"):
        parse_confusion({"weights_version": "w", "taxonomy_version": "t", "called": {}})


def test_rate_bounds_are_the_wilson_interval_of_the_row():
    c = confusion({"promyelocyte": {"promyelocyte": 95, "blast": 3, "abnormal_promyelocyte": 2}})
    assert c.rate_bounds("promyelocyte", {"blast", "abnormal_promyelocyte"}) == wilson_interval(5, 100)
    assert c.rate_bounds("monocyte", {"blast"}) is None


def bounds(rule_id, counts, measured, rejected=()):
    rule = next(r for r in RULES.rules if r.id == rule_id)
    ctx = Context(differential(counts, TAX), RULES.specimens["bone_marrow_aspirate"], TRAINED_LINEAGE,
                  RULES.minimum_count, CaseEvidence(rejected_top_k=rejected), measured)
    return rule_bounds(rule, ctx)[0]


def test_upper_bound_adds_each_called_class_times_its_upper_rate_and_rejected_cells():
    rows = {"blast": {"blast": 100}, "promyelocyte": {"promyelocyte": 97, "blast": 3},
            "lymphocyte": {"lymphocyte": 100}}
    counts = {"blast": 30, "promyelocyte": 50, "lymphocyte": 320}
    b = bounds("R-AL-BM-02", counts, confusion(rows), rejected=(("lymphocyte", "blast"), ("lymphocyte", "monocyte")))
    expected = 30 + 50 * wilson_interval(3, 97 + 3)[1] + 320 * wilson_interval(0, 100)[1] + 1
    assert b.k == 30 and b.n == 400 and b.n_high == 401
    assert b.k_high == pytest.approx(expected)
    assert b.k_low == pytest.approx(30 * wilson_interval(100, 100)[0])


def test_lineage_rule_lower_bound_is_precision_and_unknown_lineage_blasts_only_widen():
    rows = {"lymphoblast": {"lymphoblast": 80, "blast": 10, "lymphocyte": 10}, "blast": {"blast": 100},
            "lymphocyte": {"lymphocyte": 100}}
    counts = {"lymphoblast": 100, "blast": 50, "lymphocyte": 250}
    b = bounds("R-ALL-BM-02", counts, confusion(rows))
    assert b.k_low == pytest.approx(100 * wilson_interval(80, 100)[0])  # true "blast" is not surely lymphoid
    # Every cell called "blast" may be a lymphoblast (its true class is of unknown lineage).
    assert b.k_high == pytest.approx(100 + 50 * 1.0 + 250 * wilson_interval(0, 100)[1])


def test_fallback_counts_the_rules_possibly_classes_in_full():
    b = bounds("R-AL-BM-02", {"blast": 30, "promyelocyte": 50, "lymphocyte": 320}, None)
    assert (b.k_low, b.k_high) == (30, 80)


def test_every_committed_confusion_file_loads_and_names_known_classes():
    # A bad file would fail every report of its weights: catch it here, not in service.
    from importlib import resources

    folder = resources.files("marrowdx.data").joinpath("confusion")
    files = [f for f in folder.iterdir() if f.name.endswith(".json")] if folder.is_dir() else []
    codes = set(TAX.codes)
    for entry in files:
        c = load_confusion(entry.name.removesuffix(".json"))
        assert c is not None, entry.name
        for called, row in c.called.items():
            assert called in codes, (entry.name, called)
            assert set(row) <= codes, (entry.name, called, set(row) - codes)
