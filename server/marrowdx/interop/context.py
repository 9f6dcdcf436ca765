"""What the lab system knows about an order and the service never sees."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass(frozen=True)
class OrderContext:
    """Patient and order identifiers held by the integration (LIS client, PACS bridge).

    They are written into the outgoing HL7/FHIR messages only; the case sent
    to the service carries the case and accession ids alone."""

    patient_id: str
    patient_id_authority: str = "LAB"
    patient_family_name: str = ""
    patient_given_name: str = ""
    birth_date: str = ""  # YYYYMMDD
    sex: str = ""  # HL7 table 0001: F, M, O, U
    placer_order_number: str = ""
    filler_order_number: str = ""  # default: the report id
    ordering_provider: str = ""
    sending_application: str = "MARROWDX"
    sending_facility: str = "MARROWDX"
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"
    reviewed_by: str = ""  # a reviewer's sign-off makes the result final; empty: preliminary
    # The ORU's character set, as HL7 table 0211 names it in MSH-18: "UNICODE UTF-8" (default),
    # "8859/1" or "ASCII" for receivers that want those. A name the set cannot hold is an error
    # unless ``transliterate`` (accents dropped, anything else "?").
    charset: str = "UNICODE UTF-8"
    transliterate: bool = False
    message_time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def final(self) -> bool:
        return bool(self.reviewed_by)
