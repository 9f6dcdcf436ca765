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
