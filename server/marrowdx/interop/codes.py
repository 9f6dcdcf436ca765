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
