"""The generated gRPC code is in step with proto/."""

from __future__ import annotations

from marrowdx import protogen
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb


def test_generated_code_is_not_stale():
    assert protogen.main(["--check"]) == 0


def test_service_offers_every_rpc():
    methods = set(pb.DESCRIPTOR.services_by_name["DiagnosisService"].methods_by_name)
    assert methods == {"AnalyzeField", "ClassifyCells", "DiagnoseCase", "DiagnoseCaseStream", "GetReport",
                       "GetModelInfo"}


def test_finding_fields_reach_the_wire():
    from marrowdx.api.convert import case_report
    from tests.unit.rules_cases import TRAINED_LINEAGE
    from tests.unit.test_report import CASE, report_of

    msg = case_report(report_of({**CASE, "abnormal_promyelocyte": 200}, trained=TRAINED_LINEAGE))
    by_code = {f.code: f for f in msg.findings}
    assert by_code["apl_pattern"].urgent and not by_code["acute_leukemia"].urgent
    assert by_code["blast_tier"].tier == ">=20%"
    assert all(f.specimen == "bone_marrow_aspirate" for f in msg.findings)
    assert msg.HasField("myeloid_erythroid_ratio_ci_low") and msg.myeloid_erythroid_ratio_ci_high > msg.myeloid_erythroid_ratio
    assert "cellularity" in msg.not_assessed
    unassessed = {f.code: f for f in case_report(report_of(CASE)).findings}["plasma_cell_excess"]
    # Not assessed travels as its own flag; the status stays INDETERMINATE for older readers.
    assert unassessed.not_assessed and unassessed.status == pb.FINDING_STATUS_INDETERMINATE
