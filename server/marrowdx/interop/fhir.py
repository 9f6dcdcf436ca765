"""FHIR Bundle from a case report, built and validated with ``fhir.resources``.

fhir.resources 8 ships R5 as its default and R4B (4.3.0) beside it; R4B is
the R4-compatible release, so that is what we emit (DiagnosticReport,
Observation, Patient and Device are unchanged in shape from R4 for the
elements used here).

Bundle (collection): Patient (from the order context), Device (the model
versions and thresholds), DiagnosticReport (code LOINC 47286-0, conclusion,
conclusionCode per finding) -> a panel Observation whose ``hasMember`` are
one Observation per cell class (valueQuantity %, 95% interval as two
components), cells counted (LOINC 38257-2), excluded cells by reason, M:E
ratio (marrow only) and one per finding (valueCodeableConcept positive/
negative/indeterminate, the reason as a note). Not assessed (an untrained
class, a rule not applied) is dataAbsentReason, never a zero; an urgent
finding carries interpretation AA (critical); a blood case the blood codes.
"""

from __future__ import annotations

import uuid

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.interop.codes import Coding, applies, code_table, is_blood, is_not_assessed, is_urgent, thresholds_of
from marrowdx.interop.context import OrderContext

UCUM = "http://unitsofmeasure.org"
CATEGORY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory", "display": "Laboratory"}]}
CI_LOW = Coding("local", "MDX-CI95-LOW", "95% confidence interval, lower bound")
CI_HIGH = Coding("local", "MDX-CI95-HIGH", "95% confidence interval, upper bound")


def _concept(coding: Coding, text: str | None = None) -> dict:
    out: dict = {"coding": [{"system": coding.fhir_system(), "code": coding.code, "display": coding.display}]}
    if text:
        out["text"] = text
    return out


def _quantity(value: float, unit: str, code: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def render_bundle(report: pb.CaseReport, context: OrderContext) -> Bundle:
    """A validated R4B Bundle (``.model_dump_json()`` for the wire)."""
    codes = code_table()
    status = "final" if context.final else "preliminary"
    issued = report.created_at
    entries: list[tuple[str, object]] = []

    patient_ref = _urn()
    patient: dict = {"resourceType": "Patient",
                     "identifier": [{"system": f"urn:marrowdx:patient-id:{context.patient_id_authority}",
                                     "value": context.patient_id}]}
    if context.patient_family_name or context.patient_given_name:
        patient["name"] = [{"family": context.patient_family_name or None,
                            "given": [context.patient_given_name] if context.patient_given_name else None}]
    if context.birth_date:
        d = context.birth_date
        patient["birthDate"] = f"{d[:4]}-{d[4:6]}-{d[6:8]}"
    if context.sex:
        patient["gender"] = {"F": "female", "M": "male", "O": "other"}.get(context.sex, "unknown")
    entries.append((patient_ref, Patient.model_validate(_clean(patient))))

    device_ref = _urn()
    m = report.models
    device = {"resourceType": "Device", "deviceName": [{"name": "marrowdx", "type": "manufacturer-name"}],
              "version": [{"type": {"text": part}, "value": value} for part, value in
                          (("detector", m.detector), ("classifier", m.classifier), ("taxonomy", m.taxonomy),
                           ("rule_set", m.rule_set)) if value],
              "property": [{"type": {"text": f"threshold:{name}"}, "valueQuantity": [{"value": value}]}
                           for name, value in thresholds_of(report).items()],
              "note": [{"text": report.disclaimer}]}
    entries.append((device_ref, Device.model_validate(device)))

    def observation(code: dict, **value) -> str:
        ref = _urn()
        resource = {"resourceType": "Observation", "status": status, "category": [CATEGORY], "code": code,
                    "subject": {"reference": patient_ref}, "device": {"reference": device_ref},
                    "effectiveDateTime": issued, "issued": issued, **value}
        entries.append((ref, Observation.model_validate(_clean(resource))))
        return ref

    absent = {"coding": [codes.data_absent_reason], "text": "not assessed"}
    members = []
    for item in report.differential:
        code = _concept(codes.cell_class(item.cell_class, item.label), item.label)
        if not item.trained:  # not assessed, not 0%: no value and no interval, the reason instead
            members.append(observation(code, dataAbsentReason=absent, note=[
                {"text": "not assessed: the classifier was not trained on this class"}]))
            continue
        members.append(observation(
            code, valueQuantity=_quantity(round(item.percent, 2), "%", "%"),
            component=[{"code": _concept(CI_LOW), "valueQuantity": _quantity(round(item.ci_low_percent, 2), "%", "%")},
                       {"code": _concept(CI_HIGH), "valueQuantity": _quantity(round(item.ci_high_percent, 2), "%", "%")}],
            note=[{"text": f"{item.count} cells"}]))
    members.append(observation(_concept(codes.cells_counted_for(report)),
                               valueQuantity=_quantity(report.cells_counted, "cells", "{cells}")))
    for reason, count in sorted(report.excluded_counts.items()):
        members.append(observation(_concept(codes.cells_excluded, f"excluded: {reason}"),
                                   valueQuantity=_quantity(count, "cells", "{cells}")))
    if report.HasField("myeloid_erythroid_ratio") and not is_blood(report):  # a marrow-only result
        members.append(observation(_concept(codes.me_ratio),
                                   valueQuantity=_quantity(round(report.myeloid_erythroid_ratio, 3), "ratio", "{ratio}")))
    conclusion_codes = []
    critical = {"coding": [codes.critical_interpretation], "text": "critical: act today"}
    for finding in (f for f in report.findings if applies(report, f)):
        state = pb.FindingStatus.Name(finding.status).removeprefix("FINDING_STATUS_")
        finding_coding = codes.finding(finding.code, finding.label)
        value = {"dataAbsentReason": absent} if is_not_assessed(finding) else \
            {"valueCodeableConcept": _concept(codes.finding_status(state))}
        if is_urgent(finding):
            value["interpretation"] = [critical]
        members.append(observation(_concept(finding_coding, finding.label), **value,
                                   note=[{"text": f"{finding.explanation} (rule {finding.rule_id}; {finding.source})"}]))
        label = "not assessed" if is_not_assessed(finding) else state.lower()
        conclusion_codes.append(_concept(finding_coding, f"{finding.label}: {label}" + (" (CRITICAL)" if is_urgent(finding) else "")))

    panel = _concept(codes.panel_for(report))  # blood and marrow have their own panel terms
    panel_ref = observation(panel, hasMember=[{"reference": r} for r in members],
                            note=[{"text": report.disclaimer}])
    report_ref = _urn()
    diagnostic = {"resourceType": "DiagnosticReport", "status": status,
                  "identifier": [{"system": "urn:marrowdx:report-id", "value": report.report_id}],
                  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM",
                                            "display": "Hematology"}]}],
                  "code": panel, "subject": {"reference": patient_ref},
                  "effectiveDateTime": issued, "issued": issued, "result": [{"reference": panel_ref}],
                  "conclusion": f"{report.conclusion} -- {report.disclaimer}",
                  "conclusionCode": conclusion_codes or None}
    if context.filler_order_number or context.placer_order_number:
        diagnostic["identifier"].append({"system": "urn:marrowdx:order", "value":
                                         context.filler_order_number or context.placer_order_number})
    entries.append((report_ref, DiagnosticReport.model_validate(_clean(diagnostic))))

    bundle = {"resourceType": "Bundle", "type": "collection", "timestamp": issued,
              "identifier": {"system": "urn:marrowdx:bundle", "value": report.report_id},
              "entry": [{"fullUrl": ref, "resource": resource.model_dump(exclude_none=True)} for ref, resource in entries]}
    return Bundle.model_validate(bundle)


def _clean(value):
    """Drop None and empty containers: FHIR forbids empty elements."""
    if isinstance(value, dict):
        cleaned = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, [], {}, "")}
    if isinstance(value, list):
        return [v for v in (_clean(v) for v in value) if v not in (None, [], {}, "")]
    return value
