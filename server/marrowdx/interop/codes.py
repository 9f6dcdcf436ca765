"""The code table the renderers share (``data/result_codes.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CODES_PATH = Path(__file__).resolve().parents[1] / "data" / "result_codes.json"


@dataclass(frozen=True)
class Coding:
    system: str  # key of "systems": loinc, local, ucum
    code: str
    display: str

    def hl7_system(self) -> str:
        return code_table().systems[self.system]["hl7"]

    def fhir_system(self) -> str:
        return code_table().systems[self.system]["fhir"]

    def dicom_scheme(self) -> str:
        return code_table().systems[self.system]["dicom"]


@dataclass(frozen=True)
class CodeTable:
    version: str
    systems: dict[str, dict[str, str]]
    raw: dict

    def _coding(self, key: str) -> Coding:
        entry = self.raw[key]
        return Coding(entry["system"], entry["code"], entry["display"])

    @property
    def panel(self) -> Coding:
        return self._coding("panel")

    @property
    def cells_counted(self) -> Coding:
        return self._coding("cells_counted")

    @property
    def cells_excluded(self) -> Coding:
        return self._coding("cells_excluded")

    @property
    def me_ratio(self) -> Coding:
        return self._coding("me_ratio")

    def panel_for(self, report) -> Coding:
        """The panel term for the report's specimen (blood has its own; marrow and unspecified: marrow)."""
        if is_blood(report):
            entry = self.raw["peripheral_blood"]["panel"]
            return Coding(entry["system"], entry["code"], entry["display"])
        return self.panel

    def cells_counted_for(self, report) -> Coding:
        if is_blood(report):
            entry = self.raw["peripheral_blood"]["cells_counted"]
            return Coding(entry["system"], entry["code"], entry["display"])
        return self.cells_counted

    @property
    def not_assessed_status(self) -> str:
        return self.raw["not_assessed"]["hl7_result_status"]

    @property
    def data_absent_reason(self) -> dict:
        return dict(self.raw["not_assessed"]["fhir_data_absent_reason"])

    @property
    def critical_flag(self) -> str:
        return self.raw["critical"]["hl7_abnormal_flag"]

    @property
    def critical_interpretation(self) -> dict:
        return dict(self.raw["critical"]["fhir_interpretation"])

    def cell_class(self, code: str, label: str) -> Coding:
        entry = self.raw["cell_class_prefix"]
        return Coding(entry["system"], entry["prefix"] + code.upper(), label)

    def finding(self, code: str, label: str) -> Coding:
        entry = self.raw["finding_prefix"]
        return Coding(entry["system"], entry["prefix"] + code.upper(), label)

    def finding_status(self, status: str) -> Coding:
        entry = self.raw["finding_status"][status]
        return Coding(entry["system"], entry["code"], entry["display"])


@lru_cache(maxsize=1)
def code_table(path: Path = CODES_PATH) -> CodeTable:
    raw = json.loads(path.read_text())
    return CodeTable(raw["version"], raw["systems"], raw)


def thresholds_of(report) -> dict[str, float]:
    """Every threshold the report was made with, zeros included (protobuf's ListFields
    would drop a threshold set to 0, and every result must carry all of them)."""
    t = report.thresholds
    return {f.name: round(float(getattr(t, f.name)), 6) for f in t.DESCRIPTOR.fields}


PERIPHERAL_BLOOD = 2  # marrowdx.v1.SpecimenType.SPECIMEN_TYPE_PERIPHERAL_BLOOD
BONE_MARROW = "bone_marrow_aspirate"  # Finding.specimen of a marrow rule


def is_blood(report) -> bool:
    """A peripheral-blood case: blood codes, and no marrow-only results (the M:E ratio, marrow rules)."""
    return report.case_info.specimen_type == PERIPHERAL_BLOOD


def applies(report, finding) -> bool:
    """False for a finding of a marrow rule on a blood case: never sent out (the rules should not
    produce one; the renderers do not trust that)."""
    return not (is_blood(report) and finding.specimen == BONE_MARROW)


def is_urgent(finding) -> bool:
    """A critical result to phone through (getattr: reports stored before the field existed)."""
    return bool(getattr(finding, "urgent", False))


def is_not_assessed(finding) -> bool:
    return bool(getattr(finding, "not_assessed", False))
