"""Domain dataclasses <-> protobuf messages. Nothing else."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.domain.cells import CellCall, Exclusion, Thresholds
from marrowdx.domain.diagnosis import Status
from marrowdx.domain.report import CaseInfo, CaseReport, ModelVersions
from marrowdx.domain.taxonomy import Taxonomy

EXCLUSION_TO_PB = {
    Exclusion.NONE: pb.EXCLUSION_REASON_UNSPECIFIED,
    Exclusion.SMUDGE: pb.EXCLUSION_REASON_SMUDGE,
    Exclusion.CUT_BY_EDGE: pb.EXCLUSION_REASON_CUT_BY_EDGE,
    Exclusion.OVERLAPPING: pb.EXCLUSION_REASON_OVERLAPPING,
    Exclusion.NOT_IDENTIFIABLE: pb.EXCLUSION_REASON_NOT_IDENTIFIABLE,
    Exclusion.LOW_CONFIDENCE: pb.EXCLUSION_REASON_LOW_CONFIDENCE,
    Exclusion.RED_CELL: pb.EXCLUSION_REASON_RED_CELL,
    Exclusion.PLATELET: pb.EXCLUSION_REASON_PLATELET,
    Exclusion.ARTEFACT: pb.EXCLUSION_REASON_ARTEFACT,
}
STATUS_TO_PB = {
    Status.POSITIVE: pb.FINDING_STATUS_POSITIVE,
    Status.NEGATIVE: pb.FINDING_STATUS_NEGATIVE,
    Status.INDETERMINATE: pb.FINDING_STATUS_INDETERMINATE,
    # On the wire a not-assessed finding stays INDETERMINATE (what readers that predate
    # Finding.not_assessed already treat as "do not rely on it") with not_assessed set.
    Status.NOT_ASSESSED: pb.FINDING_STATUS_INDETERMINATE,
}
SPECIMEN_FROM_PB = {
    pb.SPECIMEN_TYPE_UNSPECIFIED: "unspecified",
    pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE: "bone_marrow_aspirate",
    pb.SPECIMEN_TYPE_PERIPHERAL_BLOOD: "peripheral_blood",
}
SPECIMEN_TO_PB = {v: k for k, v in SPECIMEN_FROM_PB.items()}


def cell_call(call: CellCall) -> pb.CellCall:
    msg = pb.CellCall(
        source_index=call.source_index, image_id=call.image_id, detection_score=call.detection_score,
        detector_category=call.detector_category, countable=call.countable,
        exclusion_reason=EXCLUSION_TO_PB[call.exclusion], cell_class=call.cell_class,
        top_k=[pb.ClassProbability(cell_class=c, probability=p) for c, p in call.top_k],
    )
    if call.box is not None:
        msg.box.CopyFrom(pb.BoundingBox(x_min=call.box[0], y_min=call.box[1], x_max=call.box[2], y_max=call.box[3]))
    return msg


def models(versions: ModelVersions) -> pb.ModelVersions:
    return pb.ModelVersions(detector=versions.detector, classifier=versions.classifier,
                            taxonomy=versions.taxonomy, rule_set=versions.rule_set, confusion=versions.confusion)


def thresholds(t: Thresholds) -> pb.Thresholds:
    return pb.Thresholds(detection_score=t.detection_score, reject_probability=t.reject_probability,
                         overlap_iou=t.overlap_iou, minimum_count=t.minimum_count, target_count=t.target_count,
                         duplicate_iou=t.duplicate_iou)


def case_info_from_pb(msg: pb.CaseInfo) -> CaseInfo:
    return CaseInfo(case_id=msg.case_id, accession_id=msg.accession_id,
                    specimen_type=SPECIMEN_FROM_PB.get(msg.specimen_type, "unspecified"),
                    target_count=msg.target_count, request_id=msg.request_id)


def case_report(report: CaseReport, timings_ms: Mapping[str, float] | None = None) -> pb.CaseReport:
    case = report.case
    t = timings_ms if timings_ms is not None else report.timings_ms
    msg = pb.CaseReport(
        report_id=report.report_id,
        case_info=pb.CaseInfo(case_id=case.case_id, accession_id=case.accession_id,
                              specimen_type=SPECIMEN_TO_PB.get(case.specimen_type, 0),
                              target_count=case.target_count, request_id=case.request_id),
        created_at=report.created_at,
        differential=[pb.DifferentialItem(cell_class=r.code, label=r.label, count=r.count, percent=r.percent,
                                          ci_low_percent=r.ci_low_percent, ci_high_percent=r.ci_high_percent,
                                          trained=r.code in report.trained_classes)
                      for r in report.differential.rows],
        excluded_counts=report.excluded_counts,
        cells_counted=report.differential.total,
        target_count=report.thresholds.target_count,
        minimum_count=report.thresholds.minimum_count,
        findings=[pb.Finding(code=f.code, label=f.label, status=STATUS_TO_PB[f.status],
                             measured_percent=f.measured_percent, ci_low_percent=f.ci_low_percent,
                             ci_high_percent=f.ci_high_percent, threshold_percent=f.threshold_percent,
                             rule_id=f.rule_id, source=f.source, explanation=f.explanation,
                             additional_cells_needed=f.additional_cells_needed, urgent=f.urgent,
                             not_assessed=f.status is Status.NOT_ASSESSED, tier=f.tier,
                             no_count_decides=f.no_count_decides, specimen=f.specimen)
                  for f in report.findings],
        conclusion=report.conclusion,
        models=models(report.models),
        thresholds=thresholds(report.thresholds),
        timings=pb.Timings(decode_ms=t.get("decode_ms", 0.0), detect_ms=t.get("detect_ms", 0.0),
                           classify_ms=t.get("classify_ms", 0.0), count_ms=t.get("count_ms", 0.0),
                           total_ms=t.get("total_ms", 0.0)),
        evidence=[cell_call(c) for c in report.evidence],
        images_received=report.images_received,
        disclaimer=report.disclaimer,
        not_assessed=report.not_assessed,
    )
    if report.differential.myeloid_erythroid_ratio is not None:
        msg.myeloid_erythroid_ratio = report.differential.myeloid_erythroid_ratio
        if report.differential.myeloid_erythroid_ci is not None:
            msg.myeloid_erythroid_ratio_ci_low, msg.myeloid_erythroid_ratio_ci_high = report.differential.myeloid_erythroid_ci
    return msg


def class_infos(taxonomy: Taxonomy, trained: Iterable[str]) -> list[pb.CellClassInfo]:
    trained = set(trained)
    return [pb.CellClassInfo(code=c.code, label=c.label, lineage=c.lineage, countable=c.countable,
                             blast_equivalent=c.blast_equivalent, trained=c.code in trained)
            for c in taxonomy.classes]
