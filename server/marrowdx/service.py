"""The application layer: one case from images to a stored report.

No grpc imports: the servicer translates messages, this module orchestrates
the pipeline, the domain rules and the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from marrowdx.domain.cells import CellCall, Thresholds
from marrowdx.domain.diagnosis import RuleSet
from marrowdx.domain.report import CaseInfo, CaseReport, CaseTally, ModelVersions, build_report
from marrowdx.domain.taxonomy import Taxonomy
from marrowdx.pipeline import FieldResult, ImageInput, Pipeline, StepTimes
from marrowdx.store.sqlite import ReportStore, StoredReport


@dataclass
class CaseSession:
    """A case being counted (unary or streamed)."""

    info: CaseInfo
    tally: CaseTally
    times: StepTimes = field(default_factory=StepTimes)
    started: float = field(default_factory=time.perf_counter)


class MarrowService:
    def __init__(self, pipeline: Pipeline, store: ReportStore, taxonomy: Taxonomy, rules: RuleSet,
                 trained_classes: frozenset[str], versions: Callable[[], ModelVersions], thresholds: Thresholds,
                 field_concurrency: int = 4) -> None:
        self.pipeline = pipeline
        self.store = store
        self.taxonomy = taxonomy
        self.rules = rules
        self.trained_classes = trained_classes
        self.versions = versions
        self.thresholds = thresholds
        self._field_slots = asyncio.Semaphore(field_concurrency)

    async def analyze_field(self, image: ImageInput, top_k: int) -> FieldResult:
        return await self.pipeline.analyze_field(image, 0, top_k)

    async def classify_cells(self, images: Sequence[ImageInput], top_k: int) -> list[CellCall]:
        calls, _ = await self.pipeline.classify_crops(list(images), 0, top_k)
        return calls

    def open_case(self, info: CaseInfo) -> CaseSession:
        target = info.target_count or self.rules.default_target_count
        return CaseSession(info, CaseTally(target_count=target))

    async def add_fields(self, session: CaseSession, images: Sequence[ImageInput], top_k: int) -> None:
        """Analyse fields concurrently (bounded); Triton batches their crops together."""
        first = session.tally.images_received
        session.tally.images_received += len(images)

        async def one(offset: int, image: ImageInput) -> FieldResult:
            async with self._field_slots:
                return await self.pipeline.analyze_field(image, first + offset, top_k)

        results = await asyncio.gather(*(one(i, im) for i, im in enumerate(images)))
        for result in results:
            session.tally.add(result.calls)
            session.times.add(result.times)

    async def add_crops(self, session: CaseSession, images: Sequence[ImageInput], top_k: int) -> None:
        first = session.tally.images_received
        session.tally.images_received += len(images)
        calls, times = await self.pipeline.classify_crops(list(images), first, top_k)
        session.tally.add(calls)
        session.times.add(times)

    def find_previous(self, info: CaseInfo, owner: str) -> StoredReport | None:
        """The report this owner already got for the same request id, if any."""
        return self.store.by_request_id(info.request_id, owner) if info.request_id else None

    def report(self, session: CaseSession) -> CaseReport:
        t = time.perf_counter()
        thresholds = dataclasses.replace(self.thresholds, minimum_count=self.rules.minimum_count,
                                         target_count=session.tally.target_count)
        report = build_report(
            report_id=f"rpt_{uuid.uuid4().hex}",
            created_at=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            case=session.info, tally=session.tally, taxonomy=self.taxonomy, rules=self.rules,
            trained=self.trained_classes, models=self.versions(), thresholds=thresholds, timings_ms={},
        )
        times = session.times
        timings = {"decode_ms": times.decode_ms + times.crop_ms, "detect_ms": times.detect_ms,
                   "classify_ms": times.classify_ms, "count_ms": (time.perf_counter() - t) * 1000.0,
                   "total_ms": (time.perf_counter() - session.started) * 1000.0}
        return dataclasses.replace(report, timings_ms=timings)

    async def save(self, report: CaseReport, payload: bytes, owner: str, client_id: str) -> StoredReport:
        """Commit before the caller acknowledges; an earlier report with the same request id wins."""
        return await asyncio.to_thread(self.store.save, report.report_id, report.case.accession_id,
                                       report.case.request_id, report.created_at, payload, owner, client_id)

    async def get_report(self, owner: str | None, report_id: str = "", accession_id: str = "") -> StoredReport | None:
        """``owner`` scopes the lookup to one organisation's reports; None reads any (administrators)."""
        if report_id:
            return await asyncio.to_thread(self.store.by_report_id, report_id, owner)
        return await asyncio.to_thread(self.store.by_accession_id, accession_id, owner)
