"""DiagnosisService: validate and translate messages; the service does the work."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import AsyncIterator

import structlog

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2_grpc as pb_grpc
from marrowdx.api import convert
from marrowdx.api.auth import Authenticator, current_principal
from marrowdx.api.errors import NotFound, RequestError, StreamIdle
from marrowdx.api.observability import InFlightLimit, rpc
from marrowdx.domain.report import DISCLAIMER, count_calls
from marrowdx.pipeline import ImageInput
from marrowdx.security.access import Role
from marrowdx.service import CaseSession, MarrowService
from marrowdx.settings import Settings
from marrowdx.store.audit import AuditLog

MAX_TOP_K = 10
# Logs correlate a case by a keyed hash of its id, never the id itself (it may identify a patient).
_CASE_KEY = os.urandom(16)


def case_reference(case_id: str) -> str:
    return hmac.new(_CASE_KEY, case_id.encode(), hashlib.sha256).hexdigest()[:16]


def _top_k(value: int, default: int) -> int:
    if value < 0 or value > MAX_TOP_K:
        raise RequestError("top_k", f"must be between 0 and {MAX_TOP_K}")
    return value or default


def _image(msg: pb.Image, field: str) -> ImageInput:
    if not msg.data:
        raise RequestError(f"{field}.data", "image bytes are missing")
    if msg.pixel_spacing_um < 0:
        raise RequestError(f"{field}.pixel_spacing_um", "must not be negative")
    return ImageInput(bytes(msg.data), msg.image_id[:128], f"{field}.data", msg.pixel_spacing_um)


class DiagnosisServicer(pb_grpc.DiagnosisServiceServicer):
    def __init__(self, service: MarrowService, settings: Settings, detector_categories: tuple[str, ...],
                 auth: Authenticator, audit: AuditLog) -> None:
        self.service = service
        self.settings = settings
        self.limit = InFlightLimit(settings.max_in_flight)
        self.detector_categories = detector_categories
        self.auth = auth
        self.audit = audit

    def _versions(self) -> pb.ModelVersions:
        return convert.models(self.service.versions())

    @rpc("AnalyzeField", Role.SUBMIT)
    async def AnalyzeField(self, request: pb.AnalyzeFieldRequest, context) -> pb.AnalyzeFieldResponse:
        if not request.HasField("image"):
            raise RequestError("image", "is required")
        image = _image(request.image, "image")
        result = await self.service.analyze_field(image, _top_k(request.top_k, self.settings.top_k))
        classes, excluded = count_calls(result.calls)
        t = result.times
        return pb.AnalyzeFieldResponse(
            cells=[convert.cell_call(c) for c in result.calls], class_counts=classes, excluded_counts=excluded,
            models=self._versions(), thresholds=convert.thresholds(self.service.thresholds),
            timings=pb.Timings(decode_ms=t.decode_ms + t.crop_ms, detect_ms=t.detect_ms, classify_ms=t.classify_ms,
                               total_ms=t.decode_ms + t.crop_ms + t.detect_ms + t.classify_ms),
            image_width=result.width, image_height=result.height)

    @rpc("ClassifyCells", Role.SUBMIT)
    async def ClassifyCells(self, request: pb.ClassifyCellsRequest, context) -> pb.ClassifyCellsResponse:
        if not request.crops:
            raise RequestError("crops", "at least one crop is required")
        if len(request.crops) > self.settings.max_crops_per_request:
            raise RequestError("crops", f"{len(request.crops)} crops; at most {self.settings.max_crops_per_request} per request")
        images = [_image(c, f"crops[{i}]") for i, c in enumerate(request.crops)]
        calls = await self.service.classify_cells(images, _top_k(request.top_k, self.settings.top_k))
        return pb.ClassifyCellsResponse(cells=[convert.cell_call(c) for c in calls], models=self._versions(),
                                        thresholds=convert.thresholds(self.service.thresholds))

    def _open(self, info: pb.CaseInfo, field: str, streamed: bool = False) -> CaseSession:
        if not info.case_id:
            raise RequestError(f"{field}.case_id", "is required")
        if info.specimen_type == pb.SPECIMEN_TYPE_UNSPECIFIED:
            # The rules differ by specimen (blast thresholds, denominators): never assume marrow.
            raise RequestError(f"{field}.specimen_type",
                               "specimen_type is required: bone marrow aspirate or peripheral blood")
        structlog.contextvars.bind_contextvars(case_ref=case_reference(info.case_id))
        minimum = self.service.rules.minimum_count
        if info.target_count and info.target_count < minimum:
            raise RequestError(f"{field}.target_count", f"must be 0 (default) or at least the minimum count {minimum}")
        return self.service.open_case(convert.case_info_from_pb(info), streamed=streamed)

    async def _finish(self, session: CaseSession) -> pb.CaseReport:
        report = self.service.report(session)
        message = convert.case_report(report)
        message.not_assessed.extend(self.service.notes(session))
        caller = current_principal()
        stored = await self.service.save(session, report, message.SerializeToString(), caller.org, caller.client_id)
        structlog.contextvars.bind_contextvars(report_id=stored.report_id)
        if stored.report_id != report.report_id:  # this request was answered before: its first report wins
            return pb.CaseReport.FromString(stored.payload)
        return message

    async def _previous(self, session: CaseSession) -> pb.CaseReport | None:
        stored = await self.service.find_previous(session, current_principal().org)
        if stored is None:
            return None
        structlog.contextvars.bind_contextvars(report_id=stored.report_id)
        return pb.CaseReport.FromString(stored.payload)

    @rpc("DiagnoseCase", Role.SUBMIT)
    async def DiagnoseCase(self, request: pb.DiagnoseCaseRequest, context) -> pb.DiagnoseCaseResponse:
        if not request.HasField("case_info"):
            raise RequestError("case_info", "is required")
        session = self._open(request.case_info, "case_info")
        if not request.fields and not request.crops:
            raise RequestError("fields", "a case needs at least one field or crop")
        total = len(request.fields) + len(request.crops)
        if total > self.settings.max_images_per_case:
            raise RequestError("fields", f"{total} images; at most {self.settings.max_images_per_case} per case")
        fields = [_image(f, f"fields[{i}]") for i, f in enumerate(request.fields)]
        crops = [_image(c, f"crops[{i}]") for i, c in enumerate(request.crops)]
        await self.service.admit(session, "field", fields)
        await self.service.admit(session, "crop", crops)
        previous = await self._previous(session)
        if previous is not None:
            return pb.DiagnoseCaseResponse(report=previous)
        top_k = self.settings.top_k
        if fields:
            await self.service.add_fields(session, fields, top_k)
        if crops:
            await self.service.add_crops(session, crops, top_k)
        return pb.DiagnoseCaseResponse(report=await self._finish(session))

    async def _until_idle(self, request_iterator) -> AsyncIterator:
        """The stream's messages; StreamIdle when none comes within ``stream_idle_timeout_s``."""
        messages = request_iterator.__aiter__()
        timeout = self.settings.stream_idle_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(anext(messages), timeout)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise StreamIdle(timeout) from None
            yield message

    @rpc("DiagnoseCaseStream", Role.SUBMIT, streaming=True)
    async def DiagnoseCaseStream(self, request_iterator, context) -> AsyncIterator[pb.DiagnoseCaseStreamResponse]:
        session: CaseSession | None = None
        index = 0
        async for message in self._until_idle(request_iterator):
            kind = message.WhichOneof("item")
            if kind is None:
                raise RequestError("item", "each message needs start, field, crop or finish")
            if session is None and kind != "start":
                raise RequestError("start", "the first message of a case stream must be `start`")
            if kind == "start":
                if session is not None:
                    raise RequestError("start", "a stream carries one case; `start` came twice")
                session = self._open(message.start, "start", streamed=True)
                await self._previous(session)  # a used request id: compared as the images come
                continue
            if kind == "finish":
                yield pb.DiagnoseCaseStreamResponse(report=await self._finish(session))
                return
            if session.tally.images_received >= self.settings.max_images_per_case:
                raise RequestError(kind, f"at most {self.settings.max_images_per_case} images per case")
            image = _image(getattr(message, kind), f"{kind}[{index}]")
            index += 1
            await self.service.admit(session, kind, [image])
            if kind == "field":
                await self.service.add_fields(session, [image], self.settings.top_k)
            else:
                await self.service.add_crops(session, [image], self.settings.top_k)
            tally = session.tally
            yield pb.DiagnoseCaseStreamResponse(progress=pb.RunningCount(
                images_received=tally.images_received, cells_counted=tally.cells_counted,
                target_count=tally.target_count, target_reached=tally.target_reached,
                class_counts=dict(tally.class_counts)))
        if session is not None:
            # The client closed without `finish`: report what was counted, as the API documents.
            yield pb.DiagnoseCaseStreamResponse(report=await self._finish(session))
        else:
            raise RequestError("start", "the stream closed before a case was started")

    @rpc("GetReport", Role.READ)
    async def GetReport(self, request: pb.GetReportRequest, context) -> pb.GetReportResponse:
        key = request.WhichOneof("key")
        if key is None or not getattr(request, key):
            raise RequestError("key", "give report_id or accession_id")
        # Another organisation's report is "not found", not "forbidden": its existence is not ours to reveal.
        stored = await self.service.get_report(current_principal().report_owner, **{key: getattr(request, key)})
        if stored is None:
            raise NotFound(f"no report for that {key}")
        structlog.contextvars.bind_contextvars(report_id=stored.report_id)
        return pb.GetReportResponse(report=pb.CaseReport.FromString(stored.payload))

    @rpc("GetModelInfo", None)
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(
            models=self._versions(), thresholds=convert.thresholds(self.service.thresholds),
            classes=convert.class_infos(self.service.taxonomy, self.service.trained_classes),
            detector_categories=list(self.detector_categories), disclaimer=DISCLAIMER)

