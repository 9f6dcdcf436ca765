"""LIS client: submit a case (image files, folders or DICOM files) to the
service, wait for the report, write it as JSON, HL7 v2 ORU and a FHIR
Bundle, and optionally deliver the ORU over MLLP and check the ACK.

Patient identifiers given here go into the HL7/FHIR files only; the service
receives the case and accession ids alone. Research use only."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import IMAGE_SUFFIXES, Client
from marrowdx.interop import mllp
from marrowdx.interop.context import OrderContext
from marrowdx.interop.dicom import file_fields
from marrowdx.interop.fhir import render_bundle
from marrowdx.interop.hl7 import encode_oru, render_oru

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}


def input_files(paths: list[Path]) -> list[Path]:
    """Image and DICOM files as given; folders expanded, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or p.suffix.lower() == ".dcm"))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return out


def images_of(files: list[Path]) -> Iterator[pb.Image]:
    """Service images, one file in memory at a time; DICOM frames and slide regions as PNG."""
    n = 0
    for path in files:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            yield pb.Image(data=path.read_bytes(), image_id=f"{n:05d}{path.suffix.lower()}")
            n += 1
            continue
        try:
            header = dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            raise ValueError(f"{path.name}: neither an image nor a DICOM file") from None
        for png, *_ in file_fields(path, header):
            yield pb.Image(data=png, image_id=f"{n:05d}.png")
            n += 1


def request_id_for(case_id: str, accession: str, files: list[Path], specimen: str = "") -> str:
    """Same case and same file contents, same request id: a resubmission returns the stored
    report. The bytes are hashed, not names and sizes: a re-scan written under the same
    names must be a new request, never answered with the stale report."""
    digest = hashlib.sha256(f"{case_id}\0{accession}\0{specimen}".encode())
    for path in files:
        content = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):  # one chunk in memory at a time
                content.update(chunk)
        digest.update(len(path.name.encode()).to_bytes(4, "big") + path.name.encode() + content.digest())
    return digest.hexdigest()[:32]


@dataclass
class Submission:
    report: pb.CaseReport
    outputs: dict[str, Path]
    ack: mllp.Ack | None = None


def submit(client: Client, info: pb.CaseInfo, files: list[Path], as_crops: bool, attempts: int = 5) -> pb.CaseReport:
    """Stream the case; retry a transient failure with the same request id."""
    for attempt in range(1, attempts + 1):
        try:
            report = None
            for response in client.diagnose_stream(info, images_of(files), as_crops=as_crops):
                if response.HasField("report"):
                    report = response.report
            if report is None:
                raise RuntimeError("the service closed the stream without a report")
            return report
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE or attempt == attempts:
                raise
            time.sleep(min(2.0 ** attempt, 30.0))
    raise AssertionError("unreachable")


def write_outputs(report: pb.CaseReport, context: OrderContext, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"json": out_dir / "report.json", "hl7": out_dir / "oru.hl7", "fhir": out_dir / "fhir-bundle.json"}
    outputs["json"].write_text(json_format.MessageToJson(report, preserving_proto_field_name=True))
    outputs["hl7"].write_bytes(encode_oru(render_oru(report, context), context))  # in the charset MSH-18 names
    outputs["fhir"].write_text(render_bundle(report, context).model_dump_json(indent=2, exclude_none=True))
    return outputs


class NotDelivered(RuntimeError):
    """The ORU did not reach the LIS (refused, no answer, or no ACK for it): it is kept, resend it.
    The CLI exits 3 on this."""


def deliver(oru_path: Path, host: str, port: int) -> mllp.Ack:
    """Send the ORU as written (its bytes are in the charset its MSH-18 names); the ACK is written
    beside it. Anything but an AA/CA whose MSA-2 names this message raises NotDelivered, with the
    reason written to oru.nak.txt, so the kept message can be resent (``marrowdx-lis resend``)."""
    nak = oru_path.with_suffix(".nak.txt")
    try:
        ack = mllp.send(host, port, oru_path.read_bytes())  # bytes: read_text would turn the \r separators into \n
    except (OSError, mllp.MllpError) as exc:
        nak.write_text(f"not delivered: {exc}\n")
        raise NotDelivered(f"not delivered: {exc}") from None
    if not ack.accepted:
        nak.write_text(f"{ack.code} {ack.control_id} {ack.text}\n")
        raise NotDelivered(f"the LIS answered {ack.code}: {ack.text}".rstrip(": "))
    oru_path.with_suffix(".ack.txt").write_text(f"{ack.code} {ack.control_id} {ack.text}\n")
    nak.unlink(missing_ok=True)
    return ack
