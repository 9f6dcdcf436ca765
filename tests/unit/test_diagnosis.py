"""Rules -> findings, built from counts (issue #23, #17 items 4-5, #21 item 2): a screen
that says positive, negative, indeterminate or not assessed, never a guess."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marrowdx.domain.cells import CellCall, Exclusion
from marrowdx.domain.counting import differential
from marrowdx.domain.diagnosis import BLOOD, MARROW, Status, conclusion, diagnose, load_rules
from marrowdx.domain.evidence import case_evidence
from tests.unit.rules_cases import (
    EVERYTHING,
    TAX,
    TRAINED_LINEAGE,
    TRAINED_OLD,
    confusion,
    diagonal,
)

RULES = load_rules()
ORDER = {Status.NEGATIVE: 0, Status.INDETERMINATE: 1, Status.POSITIVE: 2}
# A classifier that calls most classes right; promyelocytes are rarely blasts or abnormal,
# lymphocytes rarely blasts (what the lead's validation should roughly show).
MEASURED = confusion(diagonal(
    sorted(TRAINED_LINEAGE - {"uncountable", "platelet", "smudge"}),
    promyelocyte={"promyelocyte": 960, "myelocyte": 30, "blast": 4, "abnormal_promyelocyte": 6},
    lymphocyte={"lymphocyte": 970, "reactive_lymphocyte": 25, "blast": 5},
    blast={"blast": 900, "lymphocyte": 40, "promyelocyte": 30, "monocyte": 30},
    myeloblast={"myeloblast": 930, "blast": 40, "lymphoblast": 10, "promyelocyte": 20},
    lymphoblast={"lymphoblast": 940, "blast": 30, "lymphocyte": 30},
    abnormal_promyelocyte={"abnormal_promyelocyte": 900, "promyelocyte": 100},
))


def findings(counts, trained=TRAINED_OLD, specimen=MARROW, calls=(), measured=None):
    diff = differential(counts, TAX)
    return {f.code: f for f in diagnose(diff, RULES, trained, specimen=specimen, evidence=case_evidence(calls),
                                        confusion=measured)}


def others(total, **counts):
    """``counts`` plus lymphocytes and neutrophils to make ``total`` cells."""
    rest = total - sum(counts.values())
    return {**counts, "lymphocyte": rest // 2, "segmented_neutrophil": rest - rest // 2}


# --- issue #23: the cases a haematologist would not sign -------------------------------------------

def test_15_percent_marrow_blasts_is_not_negative_and_says_not_excluded():
    result = findings(others(500, blast=75))
    acute = result["acute_leukemia"]
    assert acute.status is not Status.NEGATIVE
    assert "AML with a defining genetic abnormality not excluded (WHO: any %, ICC: >= 10%)" in acute.explanation
    tier = result["blast_tier"]
    assert tier.tier == "10-19%" and tier.status is Status.POSITIVE
    assert tier.ci_low_percent < 15.0 < tier.ci_high_percent
    assert "MDS with increased blasts-2" in tier.explanation


@pytest.mark.parametrize(("blasts", "tier"), [(10, "<5%"), (35, "5-9%"), (75, "10-19%"), (150, ">=20%")])
def test_marrow_blast_tiers_on_the_point_estimate(blasts, tier):
    f = findings(others(1000, blast=blasts * 2), measured=MEASURED, trained=TRAINED_LINEAGE)["blast_tier"]
    assert f.tier == tier
    assert f.measured_percent == pytest.approx(blasts / 5)


def test_tier_spanning_a_boundary_is_indeterminate_and_says_how_many_cells():
    f = findings(others(300, blast=15))["blast_tier"]  # 5.0% of 300: the interval spans 5%
    assert f.status is Status.INDETERMINATE and f.tier == "5-9%"
    assert f.ci_low_percent < 5.0 <= f.ci_high_percent
    assert "straddles 5%" in f.explanation


def test_apl_like_case_flags_apl_urgently_and_aml_is_not_negative():
    counts = others(500, abnormal_promyelocyte=350)
    for measured in (None, MEASURED):
        result = findings(counts, TRAINED_LINEAGE, measured=measured)
        apl = result["apl_pattern"]
        assert apl.urgent and apl.status is Status.POSITIVE
        assert "suspected APL: confirm PML::RARA today" in apl.explanation
        assert result["acute_myeloid_leukemia"].status is Status.POSITIVE
        assert result["acute_leukemia"].status is Status.POSITIVE
        assert conclusion(tuple(result.values())).startswith("URGENT: suspected APL: confirm PML::RARA today.")


def test_apl_flag_is_not_silenced_by_an_interval_or_by_other_findings():
    # 6% abnormal promyelocytes in 300 cells: the interval straddles the screening level,
    # acute leukaemia is negative, and APL is still flagged urgently.
    result = findings(others(300, abnormal_promyelocyte=18), TRAINED_LINEAGE)
    apl = result["apl_pattern"]
    assert apl.status is Status.INDETERMINATE and apl.urgent
    assert result["acute_leukemia"].status is not Status.POSITIVE


def test_normal_promyelocytes_do_not_raise_the_apl_flag():
    apl = findings(others(500, promyelocyte=40), TRAINED_LINEAGE, measured=MEASURED)["apl_pattern"]
    assert not apl.urgent and apl.status is Status.NEGATIVE


def test_monocytic_blasts_count_as_blast_equivalents():
    result = findings(others(500, promonocyte=80, monoblast=70), TRAINED_LINEAGE, measured=MEASURED)
    assert result["acute_leukemia"].status is Status.POSITIVE
    assert result["acute_myeloid_leukemia"].status is Status.POSITIVE
    assert result["blast_tier"].tier == ">=20%"


def test_blood_cases_get_blood_rules_and_denominator():
    # 60 blasts, 240 leukocytes and 300 nucleated red cells: 10% of marrow cells, 20% of blood leukocytes.
    counts = {"blast": 60, "lymphocyte": 120, "segmented_neutrophil": 120, "erythroblast": 300}
    marrow, blood = findings(counts), findings(counts, specimen=BLOOD)
    assert marrow["blast_tier"].measured_percent == pytest.approx(10.0)
    assert blood["blast_tier"].measured_percent == pytest.approx(20.0)
    assert all(f.specimen == BLOOD and "-PB-" in f.rule_id or f.rule_id in {"R-APL-02", "R-M7-02"}
               for f in blood.values())
    # No marrow findings on blood.
    assert {"plasma_cell_excess", "lymphoma_infiltration", "neuroblastoma_infiltration"}.isdisjoint(blood)
    assert "peripheral blood" in conclusion(tuple(blood.values()), specimen=BLOOD)


def test_blood_tiers_differ_from_marrow_tiers():
    counts = others(1000, blast=30)  # 3%: not increased in marrow, 2-4% tier in blood
    assert findings(counts, measured=MEASURED, trained=TRAINED_LINEAGE)["blast_tier"].tier == "<5%"
    blood = findings(counts, specimen=BLOOD, measured=MEASURED, trained=TRAINED_LINEAGE)
    assert blood["blast_tier"].tier == "2-4%"
    # 3% blasts in blood is below 20% but not a negative for acute leukaemia (it is in marrow).
    assert blood["acute_leukemia"].status is Status.INDETERMINATE and "marrow examination" in blood[
        "acute_leukemia"].explanation
    assert findings(counts, measured=MEASURED, trained=TRAINED_LINEAGE)["acute_leukemia"].status is Status.NEGATIVE


def test_unspecified_specimen_is_not_assessed_not_guessed():
    result = findings(others(500, blast=200), specimen="unspecified")
    assert all(f.status is Status.NOT_ASSESSED and "specimen type was not given" in f.explanation
               for f in result.values())
    assert "no rule was applied" in conclusion(tuple(result.values()), specimen="unspecified")


def test_untrained_classes_are_not_assessed_not_zero():
    result = findings(others(500, blast=10))
    for code in ("plasma_cell_excess", "acute_lymphoblastic_leukemia", "apl_pattern"):
        assert result[code].status is Status.NOT_ASSESSED, code
        assert "not trained" in result[code].explanation
    text = conclusion(tuple(result.values()), ("cellularity", "dysplasia"))
    assert "Not assessed: " in text and "plasma_cell_excess" in text and "cellularity" in text


def test_infiltration_is_a_review_prompt_with_clusters_as_evidence():
    box = (10.0, 10.0, 50.0, 50.0)
    cluster = [CellCall(0, "f1", (box[0] + d, box[1] + d, box[2] + d, box[3] + d), 0.9, "nucleated",
                        Exclusion.OVERLAPPING, "", ()) for d in (0, 8, 16)]
    untrained = findings(others(400), calls=cluster)["lymphoma_infiltration"]
    assert untrained.status is Status.INDETERMINATE
    assert "atypical cells or clusters seen: review, trephine advised" in untrained.explanation
    assert findings(others(400))["lymphoma_infiltration"].status is Status.NOT_ASSESSED
    trained = findings(others(400, lymphoma_cell=2), EVERYTHING)["lymphoma_infiltration"]
    assert trained.status is Status.POSITIVE and "trephine advised" in trained.explanation
    assert findings(others(400), EVERYTHING)["neuroblastoma_infiltration"].status is Status.NEGATIVE
    # Two overlapping cells are a pair, not a cluster.
    assert findings(others(400), calls=cluster[:2])["lymphoma_infiltration"].status is Status.NOT_ASSESSED


def test_conclusion_says_screen_and_never_no_malignancy():
    clean = conclusion(tuple(findings(others(500, blast=5), EVERYTHING, measured=MEASURED).values()),
                       RULES.not_assessed)
    assert "Screen" in clean and "No malignancy" not in clean
    for feature in ("cellularity", "dysplasia", "iron", "megakaryocyte morphology", "haemodilution"):
        assert feature in clean
    assert "Research use only" in clean


# --- issue #17 items 4-5 and the measured confusion --------------------------------------------------

def test_3pct_blasts_and_8pct_normal_promyelocytes_is_negative_with_measured_confusion():
    counts = others(500, blast=15, promyelocyte=40)
    measured = findings(counts, TRAINED_LINEAGE, measured=MEASURED)["acute_leukemia"]
    assert measured.status is Status.NEGATIVE, measured.explanation
    assert "measured confusion of weights test-weights" in measured.explanation


def test_without_a_confusion_file_the_bounds_are_conservative_and_say_so():
    counts = others(300, blast=45, promyelocyte=30)  # 15% + 10% promyelocytes counted in full
    f = findings(counts, TRAINED_LINEAGE)["acute_leukemia"]
    assert f.status is Status.INDETERMINATE and "conservative" in f.explanation
    assert f.ci_high_percent > 20.0


def test_40pct_blasts_is_positive():
    f = findings(others(500, blast=200), TRAINED_LINEAGE, measured=MEASURED)["acute_leukemia"]
    assert f.status is Status.POSITIVE
    assert 20.0 <= f.ci_low_percent < 40.0 < f.ci_high_percent


def test_aml_patient_with_30pct_myeloblasts_is_aml_positive_and_all_negative():
    result = findings(others(500, myeloblast=160), TRAINED_LINEAGE, measured=MEASURED)
    assert result["acute_myeloid_leukemia"].status is Status.POSITIVE
    assert result["acute_lymphoblastic_leukemia"].status is Status.NEGATIVE, \
        result["acute_lymphoblastic_leukemia"].explanation


def test_all_from_lymphoblasts_is_strictly_above_20pct():
    assert findings(others(600, lymphoblast=200), TRAINED_LINEAGE, measured=MEASURED)[
        "acute_lymphoblastic_leukemia"].status is Status.POSITIVE
    at_20 = findings(others(10000, lymphoblast=2000), TRAINED_LINEAGE)["acute_lymphoblastic_leukemia"]
    assert at_20.status is not Status.POSITIVE


def test_a_lineage_call_counts_only_as_far_as_its_measured_precision():
    # 24% called lymphoblast; measured, 1 in 4 lymphoblast calls is a lymphocyte: the lower bound drops under 20%.
    counts = others(1000, lymphoblast=240)
    face_value = findings(counts, TRAINED_LINEAGE)["acute_lymphoblastic_leukemia"]
    imprecise = confusion(diagonal(sorted(TRAINED_LINEAGE), lymphoblast={"lymphoblast": 75, "lymphocyte": 25}))
    measured = findings(counts, TRAINED_LINEAGE, measured=imprecise)["acute_lymphoblastic_leukemia"]
    assert face_value.status is Status.POSITIVE
    assert measured.status is Status.INDETERMINATE and measured.ci_low_percent < 20.0
    assert "points below" in measured.explanation


def test_blasts_of_unknown_lineage_keep_all_open():
    f = findings(others(500, blast=200), TRAINED_LINEAGE, measured=MEASURED)["acute_lymphoblastic_leukemia"]
    assert f.status is Status.INDETERMINATE


def test_rejected_cells_with_a_blast_in_their_top_k_widen_the_upper_bound():
    counts = others(400, blast=12)  # 3%: negative for acute leukaemia on its own
    assert findings(counts, TRAINED_LINEAGE, measured=MEASURED)["acute_leukemia"].status is Status.NEGATIVE
    rejected = [CellCall(0, "f", None, 0.0, "", Exclusion.LOW_CONFIDENCE, "lymphocyte",
                         (("lymphocyte", 0.45), ("blast", 0.40))) for _ in range(80)]
    widened = findings(counts, TRAINED_LINEAGE, calls=rejected, measured=MEASURED)["acute_leukemia"]
    assert widened.status is Status.INDETERMINATE and "rejected" in widened.explanation


def test_widening_that_no_count_removes_says_none_within():
    # 16% blasts + 12% promyelocytes counted in full (no confusion file): straddles 20% at any count.
    f = findings(others(500, blast=80, promyelocyte=60), TRAINED_LINEAGE)["acute_leukemia"]
    assert f.status is Status.INDETERMINATE
    assert f.additional_cells_needed == 0 and f.no_count_decides
    assert "no count within 10,000 more cells" in f.explanation


def test_too_few_cells_is_indeterminate_and_says_how_many_more():
    result = findings({"blast": 150, "lymphocyte": 50})
    assert result["acute_leukemia"].status is Status.INDETERMINATE
    assert result["acute_leukemia"].additional_cells_needed == 100


# --- issue #21 item 2: plasma cells ------------------------------------------------------------------

def test_plasma_cells_ge_10pct_of_marrow_cells():
    assert findings(others(500, plasma_cell=80), TRAINED_LINEAGE)["plasma_cell_excess"].status is Status.POSITIVE
    border = findings(others(400, plasma_cell=40), TRAINED_LINEAGE)["plasma_cell_excess"]
    assert border.status is Status.INDETERMINATE and border.ci_low_percent < 10.0 < border.ci_high_percent
    assert findings(others(500, plasma_cell=5), TRAINED_LINEAGE, measured=MEASURED)[
        "plasma_cell_excess"].status is Status.NEGATIVE
    f = findings(others(500, plasma_cell=80), TRAINED_OLD)["plasma_cell_excess"]
    assert f.status is Status.NOT_ASSESSED and f.source == "IMWG-2014"
    assert "plasma_cell_excess" not in findings(others(500, plasma_cell=80), TRAINED_LINEAGE, specimen=BLOOD)


# --- properties of the predicate through the rules ---------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(blasts=st.integers(0, 600), others_=st.integers(0, 600))
def test_status_agrees_with_the_interval(blasts, others_):
    f = findings({"blast": blasts, "lymphocyte": others_}, TRAINED_LINEAGE, measured=MEASURED)["acute_leukemia"]
    if blasts + others_ < RULES.minimum_count:
        assert f.status is Status.INDETERMINATE
    elif f.status is Status.POSITIVE:
        assert f.ci_low_percent >= 20.0
    elif f.status is Status.NEGATIVE:
        assert f.ci_high_percent < 20.0 and f.measured_percent < 5.0
    else:
        assert f.ci_low_percent < 20.0 <= f.ci_high_percent or "not excluded" in f.explanation


@settings(deadline=None)
@given(blasts=st.integers(0, 400), extra=st.integers(1, 200))
def test_more_blasts_never_lowers_the_status(blasts, extra):
    base = findings({"blast": blasts, "lymphocyte": 400}, TRAINED_LINEAGE, measured=MEASURED)["acute_leukemia"]
    more = findings({"blast": blasts + extra, "lymphocyte": 400}, TRAINED_LINEAGE, measured=MEASURED)[
        "acute_leukemia"]
    assert ORDER[more.status] >= ORDER[base.status]


def test_m7_depends_on_acute_leukemia():
    negative = findings(others(400), EVERYTHING)["amkl_pattern"]
    assert negative.status is Status.NEGATIVE and "not applicable" in negative.explanation
    positive = findings({"megakaryoblast": 150, "lymphocyte": 250}, EVERYTHING)["amkl_pattern"]
    assert positive.status is Status.POSITIVE


# --- the rule set file -------------------------------------------------------------------------------

def raw_rules():
    return json.loads(resources.files("marrowdx.data").joinpath("rules.json").read_text())


def test_rules_file_refuses_uncited_sources(tmp_path):
    raw = raw_rules()
    raw["rules"][0]["source"] = "NOWHERE"
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="not cited"):
        load_rules(path)


def test_every_threshold_cites_a_real_source_and_none_is_fab():
    raw = raw_rules()
    assert not any("FAB" in name or "Bennett" in text for name, text in raw["sources"].items())
    for text in raw["sources"].values():
        # A citation names authors, a year and pages, or says it is a local cut-off.
        assert re.search(r"\b20\d\d;\d+:", text) or "not a WHO" in text or "CNN system" in text, text
    for rule in RULES.rules:
        assert rule.source
        for tier in rule.tiers:
            assert tier.source


def test_rule_set_version_changed_from_the_old_one():
    assert RULES.version != "2026.11-1"


def test_each_specimen_has_the_blast_rules():
    for specimen in (MARROW, BLOOD):
        codes = {r.code for r in RULES.rules_for(specimen)}
        assert {"blast_tier", "acute_leukemia", "acute_lymphoblastic_leukemia", "acute_myeloid_leukemia",
                "apl_pattern"} <= codes


def test_every_rule_class_is_in_the_lineage_taxonomy():
    for rule in RULES.rules:
        for code in (*rule.numerator, *rule.possibly, *rule.unknown_lineage, *(rule.denominator or ())):
            assert TAX.by_code(code).countable, code


def test_too_few_cells_promises_no_count_that_the_widening_prevents():
    # 200 cells, 20% blasts and 15% promyelocytes counted in full: even past 300 cells nothing decides.
    f = findings({"blast": 40, "promyelocyte": 30, "lymphocyte": 130})["acute_leukemia"]
    assert f.status is Status.INDETERMINATE and "at least 300" in f.explanation
    assert f.additional_cells_needed == 0 and f.no_count_decides


def test_m7_waits_for_an_undecided_acute_leukaemia():
    f = findings(others(400, megakaryoblast=60, blast=24), EVERYTHING)["amkl_pattern"]  # 21% blasts: straddles
    assert f.status is Status.INDETERMINATE and "depends on acute_leukemia" in f.explanation


def test_apl_like_marrow_called_normal_promyelocytes_is_not_negative_and_is_urgent():
    # 70% promyelocytes the classifier calls normal: the measured rate of "normal called
    # abnormal" comes from another class mix, so neither AML nor APL may read negative.
    result = findings(others(500, promyelocyte=350), TRAINED_LINEAGE, measured=MEASURED)
    assert result["acute_myeloid_leukemia"].status is Status.INDETERMINATE
    assert result["acute_leukemia"].status is Status.INDETERMINATE
    apl = result["apl_pattern"]
    assert apl.status is Status.INDETERMINATE and apl.urgent and "review the promyelocytes" in apl.explanation


def test_blasts_of_unknown_lineage_keep_aml_not_excluded():
    # 15% blasts the classifier cannot put in a lineage: AML is below 20% but not excluded.
    f = findings(others(500, blast=75), TRAINED_LINEAGE, measured=MEASURED)["acute_myeloid_leukemia"]
    assert f.status is Status.INDETERMINATE and "not excluded" in f.explanation
