"""HL7 v2.5.1 ORU^R01 from a case report, built with hl7apy (no string concatenation).

One OBX per differential item (NM, %, UCUM) with an NTE carrying its 95%
interval; OBX for cells counted, cells excluded by reason, the M:E ratio
(marrow only) and each finding (CWE, positive/negative/indeterminate, with an
NTE giving the reason). Order-level NTEs carry the conclusion, model
versions, thresholds and the research-use disclaimer. Results are
preliminary (P) until a reviewer signs (F). A class not trained on, or a
finding not assessed, has no OBX-5 and OBX-11 X (never a zero); an urgent
finding has OBX-8 AA; a blood case uses the blood codes. MSH-18 names the
charset the bytes are in (``encode_oru``).
"""

from __future__ import annotations

import unicodedata
import uuid

from hl7apy.base_datatypes import ST
from hl7apy.core import Group, Message, Segment

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.interop.codes import Coding, applies, code_table, is_blood, is_not_assessed, is_urgent, thresholds_of
from marrowdx.interop.context import OrderContext

VERSION = "2.5.1"
# MSH-18 (HL7 table 0211) -> Python codec; an empty MSH-18 means ASCII, the HL7 default.
CHARSETS = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii", "": "ascii"}
PERCENT = Coding("ucum", "%", "percent")
CELLS = Coding("ucum", "{cells}", "cells")


def _esc(text: str) -> str:
    """Text as one HL7 component, with | ^ & ~ \\ escaped (hl7apy's own text escaping)."""
    return ST(text).to_er7()


def _ts(report: pb.CaseReport) -> str:
    """RFC 3339 UTC -> HL7 DTM (YYYYMMDDHHMMSS+0000)."""
    digits = "".join(ch for ch in report.created_at[:19] if ch.isdigit())
    return digits + "+0000"


def _coded(segment: Segment, name: str, coding: Coding) -> None:
    """A CE/CWE field: code^text^system, each part escaped."""
    setattr(segment, name, "^".join(_esc(part) for part in (coding.code, coding.display, coding.hl7_system())))


def _note(parent: Group, text: str, index: int) -> None:
    nte = parent.add_segment("NTE")
    nte.nte_1 = str(index)
    nte.nte_3 = _esc(text)


def _observation(order: Group, set_id: int, value_type: str, code: Coding, value: str | None, status: str,
                 units: Coding | None = None, sub_id: str = "", abnormal_flag: str = "") -> Group:
    """One OBX. ``value`` None: not assessed - no OBX-5 and result status X ("results cannot be
    obtained"), so a receiver never reads a zero that was not measured."""
    group = order.add_group("ORU_R01_OBSERVATION")
    obx = group.add_segment("OBX")
    obx.obx_1 = str(set_id)
    obx.obx_2 = value_type
    _coded(obx, "obx_3", code)
    if sub_id:
        obx.obx_4 = _esc(sub_id)
    if value is None:
        obx.obx_11 = code_table().not_assessed_status
        return group
    if value_type == "CWE":
        status_coding = code_table().finding_status(value)
        obx.obx_5 = "^".join(_esc(part) for part in (status_coding.code, status_coding.display, status_coding.hl7_system()))
    else:
        obx.obx_5 = value
    if units is not None:
        _coded(obx, "obx_6", units)
    if abnormal_flag:
        obx.obx_8 = abnormal_flag
    obx.obx_11 = status
    return group


def render_oru(report: pb.CaseReport, context: OrderContext, control_id: str = "") -> str:
    """The ORU^R01 as ER7 text (segments separated by carriage returns)."""
    codes = code_table()
    status = "F" if context.final else "P"  # preliminary until a reviewer signs
    message = Message("ORU_R01", version=VERSION)
    msh = message.msh
    msh.msh_3 = _esc(context.sending_application)
    msh.msh_4 = _esc(context.sending_facility)
    msh.msh_5 = _esc(context.receiving_application)
    msh.msh_6 = _esc(context.receiving_facility)
    msh.msh_7 = context.message_time.strftime("%Y%m%d%H%M%S+0000")
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = _esc(control_id or uuid.uuid4().hex[:20])
    msh.msh_11 = "P"
    msh.msh_12 = VERSION
    if context.charset not in CHARSETS or not context.charset:
        raise ValueError(f"character set {context.charset!r} is not one of {', '.join(c for c in CHARSETS if c)}")
    msh.msh_18 = context.charset  # the encoding the bytes are in (encode_oru); receivers decode by it

    result = message.add_group("ORU_R01_PATIENT_RESULT")
    pid = result.add_group("ORU_R01_PATIENT").add_segment("PID")
    pid.pid_1 = "1"
    pid.pid_3.cx_1 = _esc(context.patient_id)
    pid.pid_3.cx_4 = _esc(context.patient_id_authority)
    pid.pid_3.cx_5 = "MR"
    if context.patient_family_name or context.patient_given_name:
        pid.pid_5.xpn_1 = _esc(context.patient_family_name)
        pid.pid_5.xpn_2 = _esc(context.patient_given_name)
    if context.birth_date:
        pid.pid_7 = context.birth_date
    if context.sex:
        pid.pid_8 = context.sex

    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    filler = context.filler_order_number or report.report_id
    orc = order.add_segment("ORC")
    orc.orc_1 = "RE"
    if context.placer_order_number:
        orc.orc_2 = _esc(context.placer_order_number)
    orc.orc_3 = _esc(filler)
    orc.orc_5 = "CM"
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    if context.placer_order_number:
        obr.obr_2 = _esc(context.placer_order_number)
    obr.obr_3 = _esc(filler)
    _coded(obr, "obr_4", codes.panel_for(report))  # blood and marrow have their own panel terms
    obr.obr_7 = _ts(report)
    if context.ordering_provider:
        obr.obr_16 = _esc(context.ordering_provider)
    obr.obr_22 = _ts(report)
    obr.obr_25 = status
    if context.reviewed_by:
        obr.obr_32 = _esc(context.reviewed_by)

    notes = [
        f"Conclusion: {report.conclusion}",
        f"Research use only: {report.disclaimer}",
        f"Report {report.report_id}; models: detector {report.models.detector}, classifier {report.models.classifier}, "
        f"taxonomy {report.models.taxonomy}, rules {report.models.rule_set}",
        "Thresholds: " + ", ".join(f"{k} {v:g}" for k, v in thresholds_of(report).items()),
        f"Cells counted {report.cells_counted} of target {report.target_count} (minimum {report.minimum_count}); "
        f"images {report.images_received}",
    ]
    findings = [f for f in report.findings if applies(report, f)]
    notes += [f"CRITICAL: {f.label}: {f.explanation}" for f in findings if is_urgent(f)]
    if report.not_assessed:
        notes.append("Not assessed by this screen: " + ", ".join(report.not_assessed))
    for i, text in enumerate(notes, start=1):
        _note(order, text, i)

    set_id = 0
    for item in report.differential:
        set_id += 1
        coding = codes.cell_class(item.cell_class, item.label)
        if not item.trained:  # not assessed, not 0%: no value, no interval
            group = _observation(order, set_id, "NM", coding, None, status)
            _note(group, "not assessed: the classifier was not trained on this class", 1)
            continue
        group = _observation(order, set_id, "NM", coding, f"{item.percent:.1f}", status, PERCENT)
        _note(group, f"{item.count} cells; 95% CI {item.ci_low_percent:.1f}-{item.ci_high_percent:.1f}%", 1)
    set_id += 1
    _observation(order, set_id, "NM", codes.cells_counted_for(report), str(report.cells_counted), status, CELLS)
    for reason, count in sorted(report.excluded_counts.items()):
        set_id += 1
        _observation(order, set_id, "NM", codes.cells_excluded, str(count), status, CELLS, sub_id=reason)
    if report.HasField("myeloid_erythroid_ratio") and not is_blood(report):  # a marrow-only result
        set_id += 1
        _observation(order, set_id, "NM", codes.me_ratio, f"{report.myeloid_erythroid_ratio:.2f}", status,
                     Coding("ucum", "{ratio}", "ratio"))
    for finding in findings:
        set_id += 1
        state = pb.FindingStatus.Name(finding.status).removeprefix("FINDING_STATUS_")
        group = _observation(order, set_id, "CWE", codes.finding(finding.code, finding.label),
                             None if is_not_assessed(finding) else state, status,
                             abnormal_flag=codes.critical_flag if is_urgent(finding) else "")
        _note(group, f"{finding.explanation} (rule {finding.rule_id}; {finding.source})", 1)
    return message.to_er7()



def charset_of(message: bytes) -> str:
    """The Python codec for the charset an ER7 message's MSH-18 names (ASCII when empty)."""
    header = message.split(b"\r", 1)[0].split(b"\n", 1)[0].decode("ascii", errors="replace")
    fields = header.split(header[3]) if header.startswith("MSH") and len(header) > 3 else []
    name = fields[17].split(header[4])[0] if len(fields) > 17 else ""  # first repetition only
    return CHARSETS.get(name, "utf-8")


def encode_oru(er7: str, context: OrderContext) -> bytes:
    """The ORU's bytes in the charset its MSH-18 names. A character that charset cannot hold is
    a ValueError naming the segment and field (never the value: it is patient data), unless the
    context asks to transliterate."""
    codec = CHARSETS[context.charset]
    try:
        return er7.encode(codec)
    except UnicodeEncodeError:
        if context.transliterate:
            plain = "".join(ch for ch in unicodedata.normalize("NFKD", er7) if not unicodedata.combining(ch))
            return plain.encode(codec, errors="replace")
    for segment in er7.split("\r"):
        for number, value in enumerate(segment.split("|")):
            try:
                value.encode(codec)
            except UnicodeEncodeError:
                name = segment[:3]
                field = number + 1 if name == "MSH" else number  # MSH-1 is the separator itself
                raise ValueError(f"{name}-{field} holds characters that {context.charset} cannot encode: "
                                 "use the default UNICODE UTF-8, or transliterate") from None
    raise AssertionError("unreachable: the message failed to encode")


def check_charset(context: OrderContext) -> None:
    """Before any work: a ValueError naming the order field whose text the chosen charset cannot
    hold (not the text itself), unless the context transliterates."""
    codec = CHARSETS.get(context.charset)
    if codec is None or not context.charset:
        raise ValueError(f"character set {context.charset!r} is not one of {', '.join(c for c in CHARSETS if c)}")
    if context.transliterate:
        return
    for name, value in vars(context).items():
        if isinstance(value, str):
            try:
                value.encode(codec)
            except UnicodeEncodeError:
                raise ValueError(f"{name} holds characters that {context.charset} cannot encode: "
                                 "use the default UNICODE UTF-8, or --transliterate") from None
