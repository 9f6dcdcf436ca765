"""marrowdx-pacs: the DICOM bridge, and small DICOM tools to try it.

Research use only: not a medical device; every result needs review by a
qualified haematologist.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clients.foreground import wait_until_interrupted
from clients.pacs.bridge import BridgeConfig, Destination, PacsBridge
from clients.pacs.nodes import StoreSCP, echo, send_files
from marrowdx import logging as mlog
from marrowdx.transport import ClientSecurity, add_client_security_flags

SPECIMEN_CHOICES = {"marrow": "bone_marrow_aspirate", "blood": "peripheral_blood"}


def _node(value: str) -> Destination:
    parts = value.split(":")
    if len(parts) != 3 or not parts[1].isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: want HOST:PORT:AE_TITLE")
    return Destination(parts[0], int(parts[1]), parts[2])


def cmd_serve(args: argparse.Namespace) -> int:
    security = ClientSecurity.from_args(args)
    config = BridgeConfig(spool_dir=args.spool, service_address=args.server, destination=args.destination,
                          host=args.host, port=args.port, ae_title=args.ae_title, idle_s=args.idle,
                          field_size=args.field_size, security=security,
                          allowed_calling_aes=tuple(args.allow_calling_ae or ()),
                          min_image_side=args.min_image_side, max_image_pixels=args.max_image_pixels,
                          specimen=SPECIMEN_CHOICES[args.specimen])
    with PacsBridge(config) as bridge:
        print(f"marrowdx-pacs: {args.ae_title} on {args.host}:{bridge.port}, spool {args.spool} "
              "(research use only)", file=sys.stderr, flush=True)
        return wait_until_interrupted()


def cmd_send(args: argparse.Namespace) -> int:
    files = sorted(p for path in args.files for p in (path.rglob("*.dcm") if path.is_dir() else [path]))
    statuses = send_files(files, args.to.host, args.to.port, args.to.ae_title)
    for path, status in zip(files, statuses, strict=True):
        print(f"{path.name}: {'stored' if status == 0 else f'refused (0x{status:04X})'}")
    return 0 if all(s == 0 for s in statuses) else 1


def cmd_echo(args: argparse.Namespace) -> int:
    status = echo(args.to.host, args.to.port, args.to.ae_title)
    print(f"C-ECHO status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_receive(args: argparse.Namespace) -> int:
    with StoreSCP(args.out, args.host, args.port, args.ae_title) as scp:
        print(f"storage SCP {args.ae_title} on {args.host}:{scp.port}, writing to {args.out}", file=sys.stderr, flush=True)
        return wait_until_interrupted()


def cmd_make_samples(args: argparse.Namespace) -> int:
    """DICOM smear images from image files: one study, VL Microscopic images (and one
    whole-slide image built from them with --slide), as a microscope or scanner sends them."""
    from pydicom.uid import generate_uid

    from marrowdx.interop.dicom import smear_image, smear_slide

    args.out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in args.images]
    datasets = [smear_image(rgb, args.patient_id, args.accession, study, series, i + 1) for i, rgb in enumerate(rgbs)]
    if args.slide:
        height = min(r.shape[0] for r in rgbs)
        datasets.append(smear_slide(np.concatenate([r[:height] for r in rgbs], axis=1), args.patient_id,
                                    args.accession, study))
    for ds in datasets:
        ds.save_as(args.out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    print(f"{len(datasets)} DICOM files in {args.out} (study {study})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """End to end on loopback: embedded service, an archive SCP, the bridge; the sample fields
    (and a whole-slide image of them) are sent as DICOM; the SR and annotations that reach the
    archive are read back and their counts checked against the stored report."""
    import tempfile

    import highdicom as hd
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from marrowdx.embedded import embedded_stack
    from marrowdx.interop.dicom import smear_image, smear_slide
    from marrowdx.settings import PROJECT_ROOT, Settings

    fields = sorted((PROJECT_ROOT / "samples" / "fields" / "images").glob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="marrowdx-pacs-demo-"))
    study, series = generate_uid(), generate_uid()
    rgbs = [np.asarray(Image.open(p).convert("RGB")) for p in fields]
    datasets = [smear_image(rgb, "DEMO-PATIENT", "DEMO-ACC", study, series, i + 1) for i, rgb in enumerate(rgbs)]
    height = min(r.shape[0] for r in rgbs)
    datasets.append(smear_slide(np.concatenate([r[:height] for r in rgbs], axis=1), "DEMO-PATIENT", "DEMO-ACC", study))
    (work / "scanner").mkdir()
    files = []
    for ds in datasets:
        files.append(work / "scanner" / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    print(f"starting the embedded stack; working in {work}", file=sys.stderr)
    with embedded_stack(Settings.from_env(state_dir=work / "state")) as stack, StoreSCP(work / "archive") as archive:
        config = BridgeConfig(spool_dir=work / "spool", service_address=stack.address, port=0, idle_s=2.0, poll_s=0.2,
                              specimen="bone_marrow_aspirate",
                              destination=Destination("127.0.0.1", archive.port, archive.ae_title))
        with PacsBridge(config) as bridge:
            statuses = send_files(files, "127.0.0.1", bridge.port, config.ae_title)
            print(f"sent {len(files)} images ({len(datasets) - 1} VL Microscopic, 1 whole-slide): statuses {statuses}")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not (bridge.reports and not bridge.spool.unsent()):
                time.sleep(0.5)
            if not bridge.reports:
                print("no report within 5 minutes", file=sys.stderr)
                return 1
        report_id = next(iter(bridge.reports.values()))
        stored = stack.runtime.store.by_report_id(report_id, "local")
    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb

    report = pb.CaseReport.FromString(stored.payload)
    srs = [dcmread(p) for p in (work / "archive").glob("*.dcm")]
    sr = next(d for d in srs if d.Modality == "SR")
    group = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_image_measurement_groups()[0]
    counted = {m.name.value: m.value for m in group.get_measurements()}["38257-2"]
    annotations = [hd.ann.annread(p) for p in (work / "archive").glob("*.dcm") if dcmread(p).Modality == "ANN"]
    boxes = sum(g.number_of_annotations for a in annotations for g in a.get_annotation_groups()
                if not g.label.startswith("excluded_"))
    print(f"report {report_id}: {report.cells_counted} cells counted; {report.conclusion}")
    print(f"archive received 1 SR (cells counted {counted:g}) and {len(annotations)} annotation objects "
          f"({boxes} counted-cell boxes) in {work / 'archive'}")
    ok = counted == report.cells_counted == boxes
    print("counts agree" if ok else "COUNTS DISAGREE")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marrowdx-pacs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the bridge")
    p.add_argument("--server", required=True, help="HOST:PORT of the marrowdx service")
    p.add_argument("--destination", type=_node, help="HOST:PORT:AE_TITLE that receives the SR and annotations")
    p.add_argument("--spool", type=Path, required=True, help="folder for received images and results")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--ae-title", default="MARROWDX")
    p.add_argument("--specimen", choices=sorted(SPECIMEN_CHOICES), required=True,
                   help="specimen of studies whose images do not say (the rules differ: marrow or blood)")
    p.add_argument("--allow-calling-ae", action="append", metavar="AE_TITLE",
                   help="accept associations only from this calling AE title (repeat for each sender; default: any)")
    p.add_argument("--idle", type=float, default=30.0, help="seconds without a new image before a case runs")
    p.add_argument("--field-size", type=int, default=576, help="whole-slide region size in pixels")
    p.add_argument("--min-image-side", type=int, default=32,
                   help="refuse smaller images at C-STORE (match the service's MARROWDX_MIN_IMAGE_SIDE)")
    p.add_argument("--max-image-pixels", type=int, default=50_000_000,
                   help="refuse larger images at C-STORE (match the service's MARROWDX_MAX_IMAGE_PIXELS)")
    add_client_security_flags(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("send", help="C-STORE DICOM files (a folder: every .dcm in it)")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--to", type=_node, required=True)
    p.set_defaults(func=cmd_send)
    p = sub.add_parser("echo", help="C-ECHO a node")
    p.add_argument("--to", type=_node, required=True)
    p.set_defaults(func=cmd_echo)
    p = sub.add_parser("receive", help="a storage SCP that writes what it receives (an archive to try with)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=11113)
    p.add_argument("--ae-title", default="ARCHIVE")
    p.set_defaults(func=cmd_receive)
    p = sub.add_parser("make-samples", help="DICOM smear images from image files")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patient-id", default="SAMPLE-PATIENT")
    p.add_argument("--accession", default="SAMPLE-ACC")
    p.add_argument("--slide", action="store_true", help="also a whole-slide image of them side by side")
    p.set_defaults(func=cmd_make_samples)
    p = sub.add_parser("demo", help="end to end on loopback with the sample fields; checks the counts")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mlog.configure("info", json=True)
    try:
        return args.func(args)
    except (OSError, ValueError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
