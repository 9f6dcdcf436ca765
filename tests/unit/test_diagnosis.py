"""Rules -> findings: positive, negative and indeterminate, never a guess."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marrowdx.domain.counting import differential
from marrowdx.domain.diagnosis import Status, conclusion, diagnose, load_rules
from marrowdx.domain.taxonomy import default_taxonomy

TAX = default_taxonomy()
RULES = load_rules()
# What the committed classifier was trained on (real data exists for these).
TRAINED = {"blast", "promyelocyte", "myelocyte", "metamyelocyte", "band_neutrophil", "segmented_neutrophil",
           "eosinophil", "basophil", "monocyte", "lymphocyte", "erythroblast", "uncountable", "platelet"}
ALL_CLASSES = set(TAX.codes)


def findings(counts, trained=TRAINED):
    return {f.code: f for f in diagnose(differential(counts, TAX), RULES, trained)}


def test_known_blast_fraction_is_positive_with_interval():
    f = findings({"blast": 120, "lymphocyte": 200, "segmented_neutrophil": 80})["acute_leukemia"]
    assert f.status is Status.POSITIVE
    assert f.measured_percent == pytest.approx(30.0)
    assert 20.0 < f.ci_low_percent < 30.0 < f.ci_high_percent
    assert f.rule_id == "R-AL-01" and f.source == "WHO-HAEM5"


def test_borderline_blast_fraction_is_indeterminate_and_says_how_many_more():
    f = findings({"blast": 84, "lymphocyte": 316})["acute_leukemia"]
    assert f.status is Status.INDETERMINATE
    assert f.ci_low_percent < 20.0 < f.ci_high_percent
    assert f.additional_cells_needed > 0
    assert "straddles" in f.explanation


def test_low_blast_fraction_is_negative():
    f = findings({"blast": 5, "lymphocyte": 200, "segmented_neutrophil": 195})["acute_leukemia"]
    assert f.status is Status.NEGATIVE


def test_too_few_cells_is_indeterminate_whatever_the_fraction():
    result = findings({"blast": 150, "lymphocyte": 50})
    assert all(f.status is Status.INDETERMINATE for f in result.values())
    assert result["acute_leukemia"].additional_cells_needed == 100


def test_all_rule_uses_strictly_greater_than():
    # Lymphoblasts exactly at 20% with a tight interval can never be "> 20%".
    counts = {"lymphoblast": 2000, "lymphocyte": 8000}
    f = findings(counts, ALL_CLASSES)["acute_lymphoblastic_leukemia"]
    assert f.status is not Status.POSITIVE


def test_all_positive_when_lymphoblasts_are_recognised():
    f = findings({"lymphoblast": 200, "lymphocyte": 200}, ALL_CLASSES)["acute_lymphoblastic_leukemia"]
    assert f.status is Status.POSITIVE


def test_blasts_of_unassigned_lineage_make_all_indeterminate_not_negative():
    f = findings({"blast": 200, "lymphocyte": 200})["acute_lymphoblastic_leukemia"]
    assert f.status is Status.INDETERMINATE
    assert "lineage" in f.explanation


def test_untrained_tumour_class_is_never_called_negative():
    f = findings({"lymphocyte": 400})["lymphoma_infiltration"]
    assert f.status is Status.INDETERMINATE
    assert "not trained" in f.explanation
    # With a classifier that knows the class, the same count is a real negative.
    assert findings({"lymphocyte": 400}, ALL_CLASSES)["lymphoma_infiltration"].status is Status.NEGATIVE


def test_m7_depends_on_acute_leukemia():
    negative = findings({"lymphocyte": 400})["amkl_pattern"]
    assert negative.status is Status.NEGATIVE and "not applicable" in negative.explanation
    positive = findings({"megakaryoblast": 150, "lymphocyte": 250}, ALL_CLASSES)["amkl_pattern"]
    assert positive.status is Status.POSITIVE


def test_apl_pattern_positive_from_abnormal_promyelocytes():
    f = findings({"abnormal_promyelocyte": 200, "lymphocyte": 200}, ALL_CLASSES)["apl_pattern"]
    assert f.status is Status.POSITIVE


def test_conclusion_names_positives_and_says_research_use():
    text = conclusion(tuple(findings({"blast": 200, "lymphocyte": 200}).values()))
    assert text.startswith("Positive: Acute leukaemia")
    assert "Research use only" in text
    clean = conclusion(tuple(findings({"lymphocyte": 400}, ALL_CLASSES).values()))
    assert clean.startswith("No malignancy seen")


@settings(max_examples=200)
@given(blasts=st.integers(0, 600), others=st.integers(0, 600))
def test_status_agrees_with_the_interval(blasts, others):
    f = findings({"blast": blasts, "lymphocyte": others})["acute_leukemia"]
    if blasts + others < RULES.minimum_count:
        assert f.status is Status.INDETERMINATE
    elif f.status is Status.POSITIVE:
        assert f.ci_low_percent >= 20.0
    elif f.status is Status.NEGATIVE:
        assert f.ci_high_percent < 20.0
    else:
        assert f.ci_low_percent < 20.0 <= f.ci_high_percent


@given(blasts=st.integers(0, 400), extra=st.integers(1, 200))
def test_more_blasts_never_lowers_the_status(blasts, extra):
    order = {Status.NEGATIVE: 0, Status.INDETERMINATE: 1, Status.POSITIVE: 2}
    base = findings({"blast": blasts, "lymphocyte": 400})["acute_leukemia"]
    more = findings({"blast": blasts + extra, "lymphocyte": 400})["acute_leukemia"]
    assert order[more.status] >= order[base.status]


def test_rules_file_refuses_uncited_sources(tmp_path):
    from importlib import resources

    raw = json.loads(resources.files("marrowdx.data").joinpath("rules.json").read_text())
    raw["rules"][0]["source"] = "NOWHERE"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="not cited"):
        load_rules(path)


def test_every_rule_class_is_in_the_taxonomy():
    for rule in RULES.rules:
        for code in (*rule.numerator, *rule.possibly, *(rule.denominator or ())):
            assert TAX.by_code(code).countable
