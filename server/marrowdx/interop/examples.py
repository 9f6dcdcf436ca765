"""Write the integration guide's example messages, made by the code itself:
three sample fields as DICOM go through the real service (embedded stack),
and the report comes out as HL7 ORU, FHIR Bundle, DICOM SR and annotations;
plus the code table as Markdown.

    .venv/bin/python -m marrowdx.interop.examples docs/integration

Research use only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.interop.codes import CODES_PATH
from marrowdx.interop.context import OrderContext
from marrowdx.interop.dicom import FieldOrigin, frames_as_png, render_annotations, render_sr, smear_image
from marrowdx.interop.fhir import render_bundle
from marrowdx.interop.hl7 import render_oru
from marrowdx.settings import PROJECT_ROOT, Settings

FIELDS = sorted((PROJECT_ROOT / "samples" / "fields" / "images").glob("*.jpg"))
DEMO_CROPS = sorted((PROJECT_ROOT / "samples" / "demo-case" / "crops").glob("*.jpg"))
EXAMPLE_CONTEXT = OrderContext(patient_id="EXAMPLE-MRN-0001", patient_family_name="EXAMPLE", patient_given_name="PATIENT",
                               birth_date="19800101", sex="U", placer_order_number="PO-EXAMPLE-1",
                               filler_order_number="ACC-EXAMPLE-1")


def code_table_markdown() -> str:
    table = json.loads(CODES_PATH.read_text())
    lines = [f"Code table version {table['version']} (`server/marrowdx/data/result_codes.json`). {table['note']}", "",
             "| what | system | code | display | source |", "|---|---|---|---|---|"]
    for key in ("panel", "cells_counted", "cells_excluded", "me_ratio"):
        e = table[key]
        lines.append(f"| {key} | {e['system']} | `{e['code']}` | {e['display']} | {e.get('source', 'local')} |")
    for key in ("cell_class_prefix", "finding_prefix"):
        e = table[key]
        lines.append(f"| {key.removesuffix('_prefix')} | {e['system']} | `{e['prefix']}<CODE>` | taxonomy/rule label | {e['source']} |")
    for status, e in table["finding_status"].items():
        lines.append(f"| finding status {status.lower()} | {e['system']} | `{e['code']}` | {e['display']} | local |")
    for key in ("panel", "cells_counted"):
        e = table["peripheral_blood"][key]
        lines.append(f"| {key} (peripheral blood) | {e['system']} | `{e['code']}` | {e['display']} | {e['source']} |")
    absent, critical = table["not_assessed"]["fhir_data_absent_reason"], table["critical"]["fhir_interpretation"]
    lines += ["", table["peripheral_blood"]["note"], "",
              f"Not assessed: {table['not_assessed']['note']} HL7 OBX-11 `{table['not_assessed']['hl7_result_status']}`; "
              f"FHIR `{absent['system']}` `{absent['code']}` ({absent['display']}).", "",
              f"Critical: {table['critical']['note']} FHIR `{critical['system']}` `{critical['code']}` ({critical['display']})."]
    lines += ["", "Systems: " + "; ".join(f"{k}: HL7 `{v['hl7']}`, FHIR `{v['fhir']}`, DICOM `{v['dicom']}`"
                                          for k, v in table["systems"].items()), "", "Not used, and why:", ""]
    lines += [f"- `{e['code']}`: {e['why']}" for e in table["not_used"]]
    return "\n".join(lines) + "\n"


def sr_summary(sr) -> str:
    """The SR as a reader sees it: its header, then the TID 1500 content read back by highdicom."""
    import highdicom as hd

    lines = [f"{keyword}: {sr.get(keyword, '')}" for keyword in
             ("SOPClassUID", "Modality", "SeriesDescription", "CompletionFlag", "VerificationFlag", "ContentLabel",
              "StudyInstanceUID", "AccessionNumber")]
    lines.append(f"evidence: {sum(len(s.ReferencedSOPSequence) for st in sr.CurrentRequestedProcedureEvidenceSequence for s in st.ReferencedSeriesSequence)} source images")
    group = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_image_measurement_groups()[0]
    lines.append("measurements (code, meaning, value, unit):")
    lines += [f"  {m.name.value} | {m.name.meaning} | {m.value} | {m.unit.value}" for m in group.get_measurements()]
    lines.append("qualitative evaluations:")
    lines += [f"  {e.name.value} | {e.name.meaning} | {e.value.meaning}" for e in group.get_qualitative_evaluations()]
    return "\n".join(lines) + "\n"


def main(out_dir: str) -> int:
    from marrowdx.client import Client
    from marrowdx.embedded import embedded_service

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    sources = [smear_image(np.asarray(Image.open(p).convert("RGB")), EXAMPLE_CONTEXT.patient_id, "ACC-EXAMPLE-1",
                           study, series, i + 1) for i, p in enumerate(FIELDS)]
    images = [pb.Image(data=frames_as_png(ds)[0], image_id=f"{i:05d}.png") for i, ds in enumerate(sources)]
    settings = Settings.from_env(state_dir=PROJECT_ROOT / "var" / "examples")
    with embedded_service(settings) as address, Client(address) as client:
        # A case of a real count: the three fields plus the demo case's 400 marrow crops (Matek), so the
        # messages show decided findings, intervals and the measured-confusion bounds, not a 3-cell run.
        crops = [pb.Image(data=p.read_bytes(), image_id=p.name) for p in DEMO_CROPS]
        report = client.diagnose(pb.CaseInfo(case_id="EXAMPLE-CASE", accession_id="ACC-EXAMPLE-1", target_count=300,
                                             specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE),
                                 fields=images, crops=crops)
    (out / "example-oru.hl7").write_text(render_oru(report, EXAMPLE_CONTEXT, control_id="EXAMPLE-1").replace("\r", "\n"))
    (out / "example-fhir-bundle.json").write_text(
        render_bundle(report, EXAMPLE_CONTEXT).model_dump_json(indent=2, exclude_none=True))
    sr = render_sr(report, sources)
    (out / "example-sr.txt").write_text(sr_summary(sr))
    annotations = render_annotations(report, sources, {i: FieldOrigin(i) for i in range(len(sources))})
    # The first annotation object, without its (binary) point and measurement arrays.
    (out / "example-annotations.txt").write_text("\n".join(line for line in str(annotations[0]).splitlines()
                                                           if "Point Coordinates Data" not in line and "Floating Point Values" not in line) + "\n")
    (out / "code-table.md").write_text(code_table_markdown())
    print(f"examples from report {report.report_id} ({report.cells_counted} cells) written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "docs/integration"))
