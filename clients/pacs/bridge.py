"""PACS bridge: a DICOM node that takes smear images in and sends results back.

- accepts C-ECHO, and C-STORE of VL Microscopic, VL Slide-Coordinates
  Microscopic, VL Whole Slide Microscopy and Secondary Capture images;
  each instance is on disk before the store is acknowledged; an instance
  that cannot be used is answered with a failure status and an
  ErrorComment saying why, and kept in the spool's rejected folder;
- groups instances into a case by study, and runs the case through the
  service when it is complete (ImagesInAcquisition reached) or has been
  idle for ``idle_s``; whole-slide images are read region by region;
- writes a Comprehensive SR (TID 1500) and Microscopy Bulk Simple
  Annotations referencing the source images, and C-STOREs them to the
  destination; a case whose service call or send failed is retried later
  with the same request id (idempotent), so a restart loses nothing.

Research use only.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import Verification

from clients.pacs.spool import PendingCase, Spool, dataset_bytes, is_dicom_uid
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client
from marrowdx.interop.dicom import (
    ACCEPTED_IMAGE_CLASSES,
    VL_WHOLE_SLIDE,
    DicomInputError,
    FieldOrigin,
    file_fields,
    frames_as_png,
    render_annotations,
    render_sr,
)
from marrowdx.transport import PLAINTEXT, ClientSecurity

log = structlog.get_logger("marrowdx.pacs")
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
BULK_ANNOTATIONS = "1.2.840.10008.5.1.4.1.1.91.1"
SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH_SOP_CLASS = 0xA900


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str


@dataclass
class BridgeConfig:
    spool_dir: Path
    service_address: str
    destination: Destination | None
    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "MARROWDX"
    idle_s: float = 30.0
    poll_s: float = 1.0
    field_size: int = 576
    max_fields_per_case: int = 400
    target_count: int = 0  # 0: the service's default
    retry_s: float = 10.0
    # Calling AE titles allowed to associate; empty: any (a lab network should list its senders).
    allowed_calling_aes: tuple[str, ...] = ()
    security: ClientSecurity = field(default_factory=lambda: PLAINTEXT)


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def check_instance(dataset: Dataset) -> str:
    """Why this instance cannot be used ("" when it can); cheap checks before it is kept."""
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class not in ACCEPTED_IMAGE_CLASSES:
        return f"SOP class {sop_class or '(none)'} is not a smear image"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "Rows", "Columns", "PixelData"):
        if keyword not in dataset:
            return f"{keyword} is missing"
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        # UIDs name folders and requests downstream: anything but digits and dots is refused here.
        if keyword in dataset and not is_dicom_uid(dataset.get(keyword)):
            return f"{keyword} is not a valid DICOM UID"
    if sop_class == VL_WHOLE_SLIDE:
        if "TotalPixelMatrixColumns" not in dataset or "TotalPixelMatrixRows" not in dataset:
            return "whole-slide image without its total pixel matrix size"
        return ""
    try:
        frames_as_png(dataset)
    except DicomInputError as exc:
        return str(exc)
    return ""


class PacsBridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.ae = AE(ae_title=config.ae_title)
        self.ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_IMAGE_CLASSES:
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.ae.maximum_pdu_size = 0
        self.ae.require_calling_aet = list(config.allowed_calling_aes)
        self._server = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._retry_after: dict[str, float] = {}
        self.reports: dict[str, str] = {}  # case key -> report id, for the log and tests
        self.port = config.port

    # -- DICOM in ---------------------------------------------------------------------------------------
    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event) -> Dataset | int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
        except Exception as exc:  # undecodable data set: keep the raw bytes, say why
            self.spool.reject(bytes(event.request.DataSet.getvalue()), f"cannot decode the data set: {exc}")
            log.warning("pacs.rejected", reason="undecodable data set")
            return _status(CANNOT_UNDERSTAND, "cannot decode the data set")
        problem = check_instance(dataset)
        if problem:
            try:
                raw = dataset_bytes(dataset)
            except Exception:  # keep what arrived, as it arrived
                raw = bytes(event.request.DataSet.getvalue())
            self.spool.reject(raw, problem)
            log.warning("pacs.rejected", reason=problem)
            return _status(DOES_NOT_MATCH_SOP_CLASS, problem)
        self.spool.accept(dataset)
        return SUCCESS

    def start(self) -> PacsBridge:
        handlers = [(evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        self._server = self.ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        self._worker = threading.Thread(target=self._run, name="pacs-cases", daemon=True)
        self._worker.start()
        log.info("pacs.listening", ae_title=self.config.ae_title, port=self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._worker:
            self._worker.join(60)
        if self._server:
            self._server.shutdown()

    def __enter__(self) -> PacsBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- cases ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                # The worker must outlive any one failure (a bad case, even a failing log write):
                # the spool still holds the work, and the next pass retries it.
                with contextlib.suppress(Exception):
                    log.exception("pacs.step_failed")
            self._stop.wait(self.config.poll_s)

    def step(self, now: float | None = None) -> None:
        """One pass: send results not yet delivered, then run cases that are ready."""
        now = time.time() if now is None else now
        for key, files in self.spool.unsent():
            if self._retry_after.get(f"send:{key}", 0) <= now:
                self._deliver(key, files, now)
        for case in self.spool.pending():
            if self._retry_after.get(case.key, 0) > now or not self._ready(case, now):
                continue
            try:
                self._process(case)
            except grpc.RpcError as exc:
                log.warning("pacs.case_deferred", case=case.key, code=exc.code().name)
                self._retry_after[case.key] = now + self.config.retry_s
            except DicomInputError as exc:
                log.warning("pacs.case_unusable", case=case.key, reason=str(exc))
                self._retry_after[case.key] = float("inf")  # kept in the spool for a person

    def _ready(self, case: PendingCase, now: float) -> bool:
        if now - case.last_received >= self.config.idle_s:
            return True
        header = dcmread(case.files[0], stop_before_pixels=True)
        expected = int(header.get("ImagesInAcquisition", 0) or 0)
        return expected > 0 and len(case.files) >= expected

    def _fields(self, headers: list[Dataset], files: list[Path]):
        """(PNG bytes, FieldOrigin or None where boxes cannot be annotated) for every field of the case."""
        for position, (header, path) in enumerate(zip(headers, files, strict=True)):
            for png, x, y, annotatable in file_fields(path, header, self.config.field_size):
                yield png, FieldOrigin(position, x, y) if annotatable else None

    def _process(self, case: PendingCase) -> None:
        headers = [dcmread(p, stop_before_pixels=True) for p in case.files]
        # Same inputs, same request id: a retry after a failure returns the report already made.
        request_id = hashlib.sha256("".join(sorted(str(h.SOPInstanceUID) for h in headers)).encode()).hexdigest()[:32]
        info = pb.CaseInfo(case_id=str(headers[0].StudyInstanceUID), accession_id=str(headers[0].get("AccessionNumber", "")),
                           request_id=request_id, target_count=self.config.target_count)
        origins: dict[int, FieldOrigin] = {}

        def images():
            for i, (png, origin) in enumerate(self._fields(headers, case.files)):
                if i >= self.config.max_fields_per_case:
                    return
                if origin is not None:
                    origins[i] = origin
                yield pb.Image(data=png, image_id=f"{i:05d}.png")

        report = None
        with Client(self.config.service_address, timeout_s=600, security=self.config.security) as client:
            for response in client.diagnose_stream(info, images(), as_crops=False, stop_at_target=True):
                if response.HasField("report"):
                    report = response.report
        if report is None:
            raise DicomInputError("the service returned no report")
        sr = render_sr(report, headers)
        self.spool.write_result(case.key, "sr.dcm", sr)
        for n, annotation in enumerate(render_annotations(report, headers, origins), start=1):
            self.spool.write_result(case.key, f"ann-{n:03d}.dcm", annotation)
        self.spool.finish_inputs(case.key, case.files)
        self.reports[case.key] = report.report_id
        log.info("pacs.case_done", case=case.key, report_id=report.report_id, cells=report.cells_counted,
                 images=len(case.files))

    # -- DICOM out --------------------------------------------------------------------------------------
    def _deliver(self, key: str, files: list[Path], now: float) -> None:
        destination = self.config.destination
        if destination is None:
            return
        sender = AE(ae_title=self.config.ae_title)
        for sop_class in (COMPREHENSIVE_SR, BULK_ANNOTATIONS):
            sender.add_requested_context(sop_class)
        assoc = sender.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            log.warning("pacs.destination_unreachable", host=destination.host, port=destination.port)
            self._retry_after[f"send:{key}"] = now + self.config.retry_s
            return
        sent = []
        try:
            for path in files:
                status = assoc.send_c_store(dcmread(path))
                if status and int(status.Status) == SUCCESS:
                    sent.append(path)
                else:
                    log.warning("pacs.store_refused", file=path.name,
                                status=hex(int(status.Status)) if status else "no answer")
        finally:
            assoc.release()
        self.spool.finish_outputs(key, sent)
        if len(sent) < len(files):
            self._retry_after[f"send:{key}"] = now + self.config.retry_s
