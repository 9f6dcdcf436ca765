"""Counting cell calls, and the case report the rules go into."""

from __future__ import annotations

from pathlib import Path

from marrowdx.domain.cells import CellCall, Exclusion, Thresholds
from marrowdx.domain.diagnosis import Status, load_rules
from marrowdx.domain.report import CaseInfo, CaseTally, ModelVersions, build_report, count_calls
from tests.unit.rules_cases import TAX, TRAINED_LINEAGE, TRAINED_OLD, confusion, diagonal


def call(cls: str, exclusion: Exclusion = Exclusion.NONE) -> CellCall:
    return CellCall(0, "", None, 0.0, "", exclusion, cls, ())


def test_count_calls_splits_counted_from_excluded():
    calls = [call("blast"), call("blast"), call("lymphocyte"), call("blast", Exclusion.LOW_CONFIDENCE),
             call("", Exclusion.CUT_BY_EDGE), call("", Exclusion.CUT_BY_EDGE)]
    classes, excluded = count_calls(calls)
    assert classes == {"blast": 2, "lymphocyte": 1}
    assert excluded == {"low_confidence": 1, "cut_by_edge": 2}


def test_tally_reaches_its_target_on_counted_cells_only():
    tally = CaseTally(target_count=3)
    tally.add([call("blast"), call("blast"), call("monocyte", Exclusion.OVERLAPPING)])
    assert tally.cells_counted == 2 and not tally.target_reached
    tally.add([call("monocyte")])
    assert tally.target_reached and tally.class_counts == {"blast": 2, "monocyte": 1}


def report_of(counts, specimen="bone_marrow_aspirate", trained=TRAINED_OLD, classifier="no-such-weights", **kw):
    tally = CaseTally(target_count=300)
    tally.add([call(c) for c, k in counts.items() for _ in range(k)])
    return build_report("rpt_1", "2026-12-02T00:00:00Z", CaseInfo("C1", specimen_type=specimen), tally, TAX,
                        load_rules(), trained, ModelVersions("d", classifier, TAX.version, "r"), Thresholds(), {},
                        **kw)


CASE = {"blast": 20, "lymphocyte": 150, "segmented_neutrophil": 150, "erythroblast": 80}


def test_untrained_classes_are_not_assessed_in_the_report():
    report = report_of(CASE)
    plasma = {f.code: f for f in report.findings}["plasma_cell_excess"]
    assert plasma.status is Status.NOT_ASSESSED
    assert "Plasma cell (class not trained)" in report.not_assessed
    assert "cellularity" in report.not_assessed and "dysplasia" in report.not_assessed
    assert "Not assessed" in report.conclusion and "plasma_cell_excess" in report.conclusion


def test_blood_report_has_no_marrow_findings_and_no_me_ratio():
    marrow, blood = report_of(CASE), report_of(CASE, specimen="peripheral_blood")
    assert marrow.differential.myeloid_erythroid_ratio is not None and marrow.differential.myeloid_erythroid_ci
    assert blood.differential.myeloid_erythroid_ratio is None
    assert {f.specimen for f in blood.findings} <= {"peripheral_blood"}
    assert "plasma_cell_excess" not in {f.code for f in blood.findings}
    assert "peripheral blood rules" in blood.conclusion


def test_report_names_the_confusion_it_used():
    measured = confusion(diagonal(sorted(TRAINED_LINEAGE)), version="w1")
    with_it = report_of(CASE, trained=TRAINED_LINEAGE, classifier="w1", confusion=measured)
    assert with_it.models.confusion == "w1"
    # No file for the running weights: conservative bounds, and the report says none was used.
    assert report_of(CASE).models.confusion == ""


def test_the_committed_confusion_is_found_under_the_name_the_service_gives_the_classifier():
    # The service reports the classifier as "classifier:<weights version>" (inference.triton).
    version = next(p.stem for p in sorted((Path(__file__).resolve().parents[2] / "server" / "marrowdx" / "data"
                                            / "confusion").glob("*.json")))
    assert report_of(CASE, trained=TRAINED_LINEAGE, classifier=f"classifier:{version}").models.confusion == version
