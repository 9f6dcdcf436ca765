"""marrowdx-lis: submit a case and get HL7 v2 / FHIR / JSON back; deliver the ORU over MLLP.

Research use only: not a medical device; every result needs review by a
qualified haematologist.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from clients.foreground import wait_until_interrupted
from clients.lis.submit import NotDelivered, deliver, input_files, request_id_for, submit, write_outputs
from marrowdx import logging as mlog
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client
from marrowdx.embedded import given_or_embedded
from marrowdx.interop import mllp
from marrowdx.interop.context import OrderContext
from marrowdx.interop.hl7 import check_charset
from marrowdx.settings import Settings
from marrowdx.transport import PLAINTEXT, ClientSecurity, add_client_security_flags

# Exit codes (docs/integration.md lists them): argparse also exits 2 on bad arguments.
EXIT_OK = 0  # done (and delivered, with --mllp)
EXIT_ERROR = 1  # nothing usable came back: a bad input file, the service refused or failed, a file error
EXIT_USAGE = 2  # bad arguments, no input files, nothing to resend
EXIT_RESEND = 3  # the report and ORU are written, but the LIS did not take the ORU: resend it later


SPECIMENS = {"marrow": pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE, "blood": pb.SPECIMEN_TYPE_PERIPHERAL_BLOOD}


def _hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: want HOST:PORT")
    return host, int(port)


def cmd_submit(args: argparse.Namespace) -> int:
    files = input_files(args.inputs)
    if not files:
        print("no images or DICOM files found", file=sys.stderr)
        return EXIT_USAGE
    info = pb.CaseInfo(case_id=args.case, accession_id=args.accession or "", target_count=args.target,
                       specimen_type=SPECIMENS[args.specimen],
                       request_id=args.request_id or request_id_for(args.case, args.accession or "", files, args.specimen))
    family, _, given = (args.patient_name or "").partition("^")
    context = OrderContext(patient_id=args.patient_id, patient_family_name=family, patient_given_name=given,
                           birth_date=args.birth_date or "", sex=args.sex or "",
                           placer_order_number=args.placer_order or "", filler_order_number=args.accession or "",
                           receiving_application=args.receiving_app, receiving_facility=args.receiving_facility,
                           charset=args.charset, transliterate=args.transliterate)
    check_charset(context)  # a name the ORU's charset cannot hold stops us before the service is called
    security = ClientSecurity.from_args(args)
    with given_or_embedded(args.server, Settings.from_env()) as address, Client(address, security=security if args.server else PLAINTEXT) as client:
        report = submit(client, info, files, as_crops=args.crops)
    outputs = write_outputs(report, context, args.out)
    print(f"report {report.report_id}: {report.cells_counted} cells counted; {report.conclusion}")
    for kind, path in outputs.items():
        print(f"  {kind}: {path}")
    if args.mllp:
        try:
            ack = deliver(outputs["hl7"], *args.mllp)
        except NotDelivered as exc:
            print(f"{exc}; the ORU is kept in {outputs['hl7']} (reason in oru.nak.txt): "
                  "marrowdx-lis resend", file=sys.stderr)
            return EXIT_RESEND
        print(f"  MLLP: {ack.code} {ack.text}".rstrip())
    return EXIT_OK


def cmd_resend(args: argparse.Namespace) -> int:
    oru = args.dir / "oru.hl7"
    if not oru.is_file():
        print(f"no {oru} to resend", file=sys.stderr)
        return EXIT_USAGE
    try:
        ack = deliver(oru, *args.mllp)
    except NotDelivered as exc:
        print(f"{exc}; still kept in {oru}", file=sys.stderr)
        return EXIT_RESEND
    print(f"{ack.code} {ack.text}".rstrip())
    return EXIT_OK


def cmd_listen(args: argparse.Namespace) -> int:
    """An MLLP endpoint that parses, ACKs/NAKs and keeps what it receives: for trying an integration."""
    args.out.mkdir(parents=True, exist_ok=True)
    count = 0

    def keep(er7: str, code: str) -> None:
        nonlocal count
        count += 1
        (args.out / f"{count:05d}-{code}.hl7").write_text(er7)
        print(f"message {count}: {code}", flush=True)

    with mllp.MllpReceiver(args.host, args.port, on_message=keep) as receiver:
        print(f"MLLP listening on {args.host}:{receiver.port}", file=sys.stderr, flush=True)
        return wait_until_interrupted()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marrowdx-lis", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("submit", help="submit a case, write report.json, oru.hl7, fhir-bundle.json")
    p.add_argument("inputs", nargs="+", type=Path, help="images, DICOM files or folders")
    p.add_argument("--server", help="HOST:PORT of the marrowdx service (default: start the embedded stack)")
    p.add_argument("--case", required=True, help="the lab's case id (sent to the service)")
    p.add_argument("--accession", help="accession number (sent to the service; filler order number)")
    p.add_argument("--specimen", choices=sorted(SPECIMENS), required=True,
                   help="bone marrow aspirate or peripheral blood: the rules and result codes differ")
    p.add_argument("--patient-id", required=True, help="written into HL7/FHIR only, never sent to the service")
    p.add_argument("--patient-name", help="FAMILY^GIVEN, HL7/FHIR only")
    p.add_argument("--birth-date", help="YYYYMMDD, HL7/FHIR only")
    p.add_argument("--sex", choices=["F", "M", "O", "U"])
    p.add_argument("--placer-order")
    p.add_argument("--receiving-app", default="LIS")
    p.add_argument("--receiving-facility", default="LAB")
    p.add_argument("--charset", choices=["UNICODE UTF-8", "8859/1", "ASCII"], default="UNICODE UTF-8",
                   help="the ORU's character set, named in MSH-18 (default UNICODE UTF-8)")
    p.add_argument("--transliterate", action="store_true",
                   help="with --charset ASCII or 8859/1: drop accents (others become ?) instead of refusing a name")
    p.add_argument("--crops", action="store_true", help="the images are single-cell crops")
    p.add_argument("--target", type=int, default=0)
    p.add_argument("--request-id", help="idempotency key (default: from the case, accession and files)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mllp", type=_hostport, help="HOST:PORT of the LIS MLLP listener")
    add_client_security_flags(p)
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("resend", help="deliver a kept ORU again")
    p.add_argument("dir", type=Path)
    p.add_argument("--mllp", type=_hostport, required=True)
    p.set_defaults(func=cmd_resend)
    p = sub.add_parser("listen", help="an MLLP endpoint that ACKs and keeps messages (for trying a setup)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2575)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_listen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mlog.configure("warning", json=True)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError, RuntimeError, mllp.MllpError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
