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
import re
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


# Failures that say nothing about the study: retried with backoff for as long as they last.
TRANSIENT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAUTHENTICATED,
                   grpc.StatusCode.PERMISSION_DENIED}
# May be transient (a service fault): retried max_attempts times, then the study is rejected.
MAYBE_TRANSIENT_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


class ObjectUnusable(Exception):
    """One spooled object cannot be used (unreadable, or refused by the service): it is rejected alone."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


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
    retry_s: float = 10.0  # first retry of a deferred study or send; doubles each time
    retry_max_s: float = 600.0
    # Specimen of studies whose images do not say ("bone_marrow_aspirate", "peripheral_blood"); "": such a
    # study is rejected (the service's rules differ by specimen and it refuses to guess).
    specimen: str = ""
    # The service's image limits (its min_image_side, max_image_pixels), checked before a C-STORE is acknowledged.
    min_image_side: int = 32
    max_image_pixels: int = 50_000_000
    max_attempts: int = 5  # for INTERNAL/UNKNOWN from the service, before the study is rejected
    # Calling AE titles allowed to associate; empty: any (a lab network should list its senders).
    allowed_calling_aes: tuple[str, ...] = ()
    security: ClientSecurity = field(default_factory=lambda: PLAINTEXT)


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def check_instance(dataset: Dataset, min_side: int = 32, max_pixels: int = 50_000_000) -> str:
    """Why this instance cannot be used ("" when it can); cheap checks before it is kept, including
    what the service would refuse (``min_side``/``max_pixels``: its min_image_side/max_image_pixels),
    so the sender hears it now rather than the study failing later."""
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
        return ""  # read in regions of field_size: the service never sees the whole matrix
    rows, columns = int(dataset.Rows or 0), int(dataset.Columns or 0)
    if min(rows, columns) < min_side:
        return f"image is {columns}x{rows}; the service needs at least {min_side} pixels a side"
    if rows * columns > max_pixels:
        return f"image is {columns}x{rows}; the service takes at most {max_pixels} pixels"
    try:
        frames_as_png(dataset)
    except DicomInputError as exc:
        return str(exc)
    return ""


SPECIMENS = {"bone_marrow_aspirate": pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE,
             "peripheral_blood": pb.SPECIMEN_TYPE_PERIPHERAL_BLOOD}


def specimen_of(dataset: Dataset) -> str:
    """"bone_marrow_aspirate" or "peripheral_blood" where the image says so (SpecimenDescriptionSequence
    short description or primary anatomic structure, or BodyPartExamined), else ""."""
    texts = [str(dataset.get("BodyPartExamined", "") or "")]
    for item in dataset.get("SpecimenDescriptionSequence", None) or []:
        texts.append(str(item.get("SpecimenShortDescription", "") or ""))
        texts += [str(code.get("CodeMeaning", "") or "") for code in item.get("PrimaryAnatomicStructureSequence", None) or []]
    text = " ".join(texts).lower()
    if "marrow" in text:
        return "bone_marrow_aspirate"
    if "blood" in text:
        return "peripheral_blood"
    return ""


def _refused_field(exc: grpc.RpcError) -> int | None:
    """The stream index of the image an INVALID_ARGUMENT names ("field[3].data: ..."), if any."""
    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return None
    match = re.match(r"(?:field|crop)\[(\d+)\]", exc.details() or "")
    return int(match.group(1)) if match else None


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
        self.ae.require_called_aet = True  # an association for another AE title is not for us: refused
        self._server = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._retry_after: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self.reports: dict[str, str] = {}  # case key -> report id, for the log and tests
        self.rejected: dict[str, str] = {}  # case key -> reason, studies moved to spool/rejected
        self.service_calls = 0  # case runs started against the service
        self.deferred = 0  # of those, runs the service could not take then (down, busy): retried later
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
        problem = check_instance(dataset, self.config.min_image_side, self.config.max_image_pixels)
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
        """One pass: send results not yet delivered, then run cases that are ready. Every study is
        handled on its own: whatever one raises is classified (retry later, or reject) and the walk
        goes on to the next, so one bad object or study never holds up another."""
        now = time.time() if now is None else now
        for key, files in self.spool.unsent():
            if self._retry_after.get(f"send:{key}", 0) > now:
                continue
            try:
                self._deliver(key, files, now)
            except Exception as exc:  # an unreadable result, a broken association: back off, try later
                self._back_off(f"send:{key}", now)
                log.warning("pacs.send_failed", case=key, error=type(exc).__name__)
        for case in self.spool.pending():
            if self._retry_after.get(case.key, 0) > now:
                continue
            try:
                if not self._ready(case, now):
                    continue
                self._process(case)
                self._failures.pop(case.key, None)
            except Exception as exc:
                self._case_failed(case, exc, now)

    def _back_off(self, key: str, now: float) -> int:
        """Exponential backoff from retry_s up to retry_max_s; returns the number of failures so far."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self._retry_after[key] = now + min(self.config.retry_s * 2 ** (failures - 1), self.config.retry_max_s)
        return failures

    def _case_failed(self, case: PendingCase, exc: Exception, now: float) -> None:
        """Retry what can succeed later (service or disk), reject what cannot, with the reason."""
        if isinstance(exc, ObjectUnusable):
            # One object is the problem: it goes to the study's rejected folder with the reason (a line in
            # <key>.reason.txt naming it), and the rest of the study runs on the next pass.
            self.spool.reject_case(case.key, [exc.path], f"{exc.path.name}: {exc.reason}")
            self.rejected[case.key] = exc.reason
            log.warning("pacs.object_rejected", case=case.key, reason=exc.reason[:200])
            return
        if isinstance(exc, grpc.RpcError):
            code = exc.code()
            if code in TRANSIENT_CODES:  # service down, busy or misconfigured: nothing wrong with the study
                self.deferred += 1
                failures = self._back_off(case.key, now)
                log.warning("pacs.case_deferred", case=case.key, code=code.name, failures=failures)
                return
            if code in MAYBE_TRANSIENT_CODES and self._back_off(case.key, now) < self.config.max_attempts:
                log.warning("pacs.case_deferred", case=case.key, code=code.name, failures=self._failures[case.key])
                return
            reason = f"the service refused the study: {code.name}: {exc.details()}"
        elif isinstance(exc, OSError):  # a full or failing disk: the study itself may be fine
            failures = self._back_off(case.key, now)
            log.warning("pacs.case_deferred", case=case.key, error=type(exc).__name__, failures=failures)
            return
        else:
            reason = f"{type(exc).__name__}: {exc}"
        self.spool.reject_case(case.key, case.files, reason)
        self._failures.pop(case.key, None)
        self._retry_after.pop(case.key, None)
        self.rejected[case.key] = reason
        log.warning("pacs.case_rejected", case=case.key, reason=reason[:200])

    def _ready(self, case: PendingCase, now: float) -> bool:
        if now - case.last_received >= self.config.idle_s:
            return True
        try:
            header = dcmread(case.files[0], stop_before_pixels=True)
        except Exception as exc:
            raise ObjectUnusable(case.files[0], f"the stored object cannot be read: {exc}") from None
        expected = int(header.get("ImagesInAcquisition", 0) or 0)
        return expected > 0 and len(case.files) >= expected

    def _specimen(self, headers: list[Dataset]) -> int:
        """The study's specimen: as its images say (specimen description or body part), else the
        bridge's --specimen. The rules differ by specimen, so a study with neither is rejected,
        never read as marrow."""
        for header in headers:
            found = specimen_of(header)
            if found:
                return SPECIMENS[found]
        if self.config.specimen:
            return SPECIMENS[self.config.specimen]
        raise ValueError("the specimen type is unknown: the images do not say (bone marrow or blood) "
                         "and the bridge has no --specimen")

    def _fields(self, headers: list[Dataset], files: list[Path]):
        """(file, PNG bytes, FieldOrigin or None where boxes cannot be annotated) for every field of the case."""
        for position, (header, path) in enumerate(zip(headers, files, strict=True)):
            try:
                for png, x, y, annotatable in file_fields(path, header, self.config.field_size):
                    yield path, png, FieldOrigin(position, x, y) if annotatable else None
            except DicomInputError as exc:
                raise ObjectUnusable(path, str(exc)) from None

    def _process(self, case: PendingCase) -> None:
        headers = []
        for path in case.files:
            try:
                headers.append(dcmread(path, stop_before_pixels=True))
            except Exception as exc:
                raise ObjectUnusable(path, f"the stored object cannot be read: {exc}") from None
        # Same inputs, same request id: a retry after a failure returns the report already made.
        request_id = hashlib.sha256("".join(sorted(str(h.SOPInstanceUID) for h in headers)).encode()).hexdigest()[:32]
        info = pb.CaseInfo(case_id=str(headers[0].StudyInstanceUID), accession_id=str(headers[0].get("AccessionNumber", "")),
                           request_id=request_id, target_count=self.config.target_count,
                           specimen_type=self._specimen(headers))
        origins: dict[int, FieldOrigin] = {}
        sent_from: dict[int, Path] = {}  # field index -> its object, to name the one the service refuses

        def images():
            for i, (path, png, origin) in enumerate(self._fields(headers, case.files)):
                if i >= self.config.max_fields_per_case:
                    return
                sent_from[i] = path
                if origin is not None:
                    origins[i] = origin
                yield pb.Image(data=png, image_id=f"{i:05d}.png")

        report = None
        self.service_calls += 1
        try:
            with Client(self.config.service_address, timeout_s=600, security=self.config.security) as client:
                for response in client.diagnose_stream(info, images(), as_crops=False, stop_at_target=True):
                    if response.HasField("report"):
                        report = response.report
        except grpc.RpcError as exc:
            refused = _refused_field(exc)
            if refused is not None and refused in sent_from:  # one image refused: reject its object, run the rest
                raise ObjectUnusable(sent_from[refused], f"the service refused it: {exc.details()}") from None
            raise
        if report is None:
            raise DicomInputError("the service returned no report")
        if report.report_id in self.spool.reported(case.key):
            # A re-sent study that gave the same report: its results (same UIDs, derived from the
            # report) were made and sent already; the archive gets nothing new.
            self.spool.finish_inputs(case.key, case.files)
            self.reports[case.key] = report.report_id
            log.info("pacs.case_already_reported", case=case.key, report_id=report.report_id)
            return
        # Everything is rendered in memory first: a study that fails here leaves no half set of results.
        stem = re.sub(r"[^A-Za-z0-9_-]", "", report.report_id)[:64]  # results of a changed report sit beside the old
        results = [(f"{stem}-sr.dcm", render_sr(report, headers))]
        results += [(f"{stem}-ann-{n:03d}.dcm", annotation)
                    for n, annotation in enumerate(render_annotations(report, headers, origins), start=1)]
        for name, dataset in results:
            self.spool.write_result(case.key, name, dataset)
        self.spool.record_report(case.key, report.report_id)
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
            self._back_off(f"send:{key}", now)
            return
        sent, refused = [], []
        try:
            for path in files:
                status = assoc.send_c_store(dcmread(path))
                code = int(status.Status) if status and "Status" in status else None
                if code is not None and (code == SUCCESS or 0xB000 <= code <= 0xBFFF):  # warnings: stored
                    sent.append(path)
                elif code is not None and not 0xA700 <= code <= 0xA7FF:
                    # Refused for what it is (not for lack of room): sending it again cannot succeed.
                    refused.append((path, f"the destination refused it with status 0x{code:04X}"
                                          + (f": {status.ErrorComment}" if "ErrorComment" in status else "")))
                else:
                    log.warning("pacs.store_deferred", file=path.name,
                                status=f"0x{code:04X}" if code is not None else "no answer")
        finally:
            assoc.release()
        self.spool.finish_outputs(key, sent)
        for path, reason in refused:
            self.spool.reject_file(path, reason)
            log.warning("pacs.result_rejected", case=key, file=path.name, reason=reason[:200])
        if len(sent) + len(refused) < len(files):
            self._back_off(f"send:{key}", now)
        else:
            self._failures.pop(f"send:{key}", None)
