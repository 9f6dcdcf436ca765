"""The application layer: one case from images to a stored report.

No grpc imports: the servicer translates messages, this module orchestrates
the pipeline, the domain rules and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from marrowdx.domain.cells import CellCall, Thresholds
from marrowdx.domain.diagnosis import RuleSet
from marrowdx.domain.report import CaseInfo, CaseReport, CaseTally, ModelVersions, build_report
from marrowdx.domain.taxonomy import Taxonomy
from marrowdx.imaging.decode import ImageError
from marrowdx.imaging.scale import ScaleUnknown
from marrowdx.pipeline import FieldResult, ImageInput, Pipeline, StepTimes
from marrowdx.store.sqlite import ReportStore, StoredReport

# One image in a fingerprint: its kind (a field and a crop of the same bytes are counted differently)
# and the SHA-256 of its bytes.
KIND_TAG = {"field": b"F", "crop": b"C"}


class RequestConflict(Exception):
    """A request id this organisation already used, sent again with other content."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"request_id {request_id!r} was already used for a different case (other case details or "
                         "images); a request id names one case: send a new one for a new case")
        self.request_id = request_id


@dataclass
class Fingerprint:
    """What makes two submissions the same request: the case details that change the report
    (case id, accession, specimen type, target count) and every image's bytes, in order."""

    case: str
    images: bytearray = field(default_factory=bytearray)

    @classmethod
    def of(cls, info: CaseInfo) -> Fingerprint:
        details = json.dumps([info.case_id, info.accession_id, info.specimen_type, info.target_count])
        return cls(hashlib.sha256(details.encode()).hexdigest())

    def matches(self, stored: StoredReport, streamed: bool) -> bool:
        """Same request as the stored one. A stream may stop a message earlier or later on a retry
        (its client stops at the target count when it sees it), so there one image list need
        only begin with the other. Rows written before fingerprints (None) match as they used to."""
        if stored.case_digest is None:
            return True
        if stored.case_digest != self.case:
            return False
        mine, theirs = bytes(self.images), stored.image_digests or b""
        return mine.startswith(theirs) or theirs.startswith(mine) if streamed else mine == theirs

    def agrees_so_far(self, stored: StoredReport) -> bool:
        """A stream's images so far do not contradict the stored request's (checked per image,
        so a stream that is another case is refused at its first differing image)."""
        if stored.case_digest is None:
            return True
        theirs = stored.image_digests or b""
        n = min(len(self.images), len(theirs))
        return stored.case_digest == self.case and bytes(self.images[:n]) == theirs[:n]


@dataclass
class CaseSession:
    """A case being counted (unary or streamed)."""

    info: CaseInfo
    tally: CaseTally
    times: StepTimes = field(default_factory=StepTimes)
    started: float = field(default_factory=time.perf_counter)
    fingerprint: Fingerprint | None = None
    seen: dict[bytes, str] = field(default_factory=dict)  # image digest -> the field it first came in
    streamed: bool = False
    previous: StoredReport | None = None  # this request id's stored report (a stream compares as it goes)
    saturated: list[int] = field(default_factory=list)  # fields (by index) that filled every detector slot
    # Fields left out of the count (by index), by reason: out_of_focus, too_thin, too_thick, scale_unknown.
    left_out: dict[str, list[int]] = field(default_factory=dict)


class FairSlots:
    """At most ``slots`` field analyses at once, shared fairly between cases: waiters queue per
    case and a freed slot goes to the next case in turn (round robin), so a 2,000-field case
    takes one turn per round instead of queueing ahead of everyone (a FIFO semaphore would)."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._queues: OrderedDict[object, deque[asyncio.Future]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def acquire(self, key: object) -> None:
        if self.free > 0 and not self._queues:
            self.free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted just as it was cancelled: pass the slot on
            else:
                queue = self._queues.get(key)
                if queue is not None and granted in queue:
                    queue.remove(granted)
                    if not queue:
                        del self._queues[key]
            raise

    def release(self) -> None:
        while self._queues:
            key, queue = next(iter(self._queues.items()))
            granted = queue.popleft()
            if queue:
                self._queues.move_to_end(key)  # its next field waits for every other case's turn
            else:
                del self._queues[key]
            if not granted.done():
                granted.set_result(None)
                return
        self.free += 1

    @contextlib.asynccontextmanager
    async def slot(self, key: object) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()


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
        self.field_slots = FairSlots(field_concurrency)

    async def analyze_field(self, image: ImageInput, top_k: int) -> FieldResult:
        """One field on its own: a case of one, taking its turn with the cases' fields."""
        async with self.field_slots.slot(object()):
            return await self.pipeline.analyze_field(image, 0, top_k)

    async def classify_cells(self, images: Sequence[ImageInput], top_k: int) -> list[CellCall]:
        calls, _ = await self.pipeline.classify_crops(list(images), 0, top_k)
        return calls

    def open_case(self, info: CaseInfo, streamed: bool = False) -> CaseSession:
        target = info.target_count or self.rules.default_target_count
        return CaseSession(info, CaseTally(target_count=target), fingerprint=Fingerprint.of(info), streamed=streamed)

    async def admit(self, session: CaseSession, kind: str, images: Sequence[ImageInput]) -> None:
        """Fingerprint the images and refuse one whose bytes this case already has: a field sent
        twice would have its cells counted twice. Raises ImageError naming both fields."""
        digests = await asyncio.to_thread(lambda: [hashlib.sha256(i.data).digest() for i in images])
        for image, digest in zip(images, digests, strict=True):
            if digest in session.seen:
                raise ImageError(f"the same image bytes as {session.seen[digest]}; each image of a case is counted "
                                 "once: leave the repeat out", image.field_name)
            session.seen[digest] = image.field_name.removesuffix(".data")
            session.fingerprint.images += KIND_TAG[kind] + digest
        if session.previous is not None and not session.fingerprint.agrees_so_far(session.previous):
            raise RequestConflict(session.info.request_id)

    async def add_fields(self, session: CaseSession, images: Sequence[ImageInput], top_k: int) -> None:
        """Analyse fields concurrently (bounded); Triton batches their crops together."""
        first = session.tally.images_received
        session.tally.images_received += len(images)

        async def one(offset: int, image: ImageInput) -> FieldResult:
            async with self.field_slots.slot(id(session)):
                try:
                    return await self.pipeline.analyze_field(image, first + offset, top_k)
                except ScaleUnknown:
                    # In a case a field whose scale cannot be had is left out, named, not
                    # guessed; the case goes on (AnalyzeField alone refuses it).
                    return FieldResult([], 0, 0, left_out="scale_unknown")

        results = await asyncio.gather(*(one(i, im) for i, im in enumerate(images)))
        for offset, result in enumerate(results):
            session.tally.add(result.calls)
            session.times.add(result.times)
            if result.saturated:
                session.saturated.append(first + offset)
            if result.left_out:
                session.left_out.setdefault(result.left_out, []).append(first + offset)

    async def add_crops(self, session: CaseSession, images: Sequence[ImageInput], top_k: int) -> None:
        first = session.tally.images_received
        session.tally.images_received += len(images)
        calls, times = await self.pipeline.classify_crops(list(images), first, top_k)
        session.tally.add(calls)
        session.times.add(times)

    async def find_previous(self, session: CaseSession, owner: str) -> StoredReport | None:
        """The report this owner already got for this request, if any; the same request id with
        other content raises RequestConflict, never returns another case's report. A unary
        request is compared whole; a stream's case details now and its images as they come."""
        if not session.info.request_id:
            return None
        stored = await asyncio.to_thread(self.store.by_request_id, session.info.request_id, owner)
        if stored is None:
            return None
        if session.streamed:
            session.previous = stored
            if not session.fingerprint.agrees_so_far(stored):
                raise RequestConflict(session.info.request_id)
            return None  # counted again; compared whole when it is saved
        if not session.fingerprint.matches(stored, streamed=False):
            raise RequestConflict(session.info.request_id)
        return stored

    @staticmethod
    def notes(session: CaseSession) -> list[str]:
        """What the reviewer must complete beyond the rules' own list: fields whose detector
        output was full (its cells past the last slot were never seen, so not counted), and
        fields left out of the count as a morphologist would (out of focus, too thin or thick)."""
        notes = []
        if session.left_out:
            indices = sorted(i for found in session.left_out.values() for i in found)
            reasons = ", ".join(f"{reason} {len(found)}" for reason, found in sorted(session.left_out.items()))
            shown = ", ".join(f"fields[{i}]" for i in indices[:10]) + (" ..." if len(indices) > 10 else "")
            notes.append(f"fields_left_out: {len(indices)} of {session.tally.images_received} image(s) not counted "
                         f"({reasons}): {shown}")
        if not session.saturated:
            return notes
        shown = ", ".join(f"fields[{i}]" for i in session.saturated[:10]) + (" ..." if len(session.saturated) > 10 else "")
        return notes + [f"detector_saturated: {len(session.saturated)} field(s) filled every detector output slot; "
                        f"cells beyond them were not counted ({shown}): send smaller or less crowded fields"]

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

    async def save(self, session: CaseSession, report: CaseReport, payload: bytes, owner: str,
                   client_id: str) -> StoredReport:
        """Commit before the caller acknowledges; an earlier report of the same request wins, and
        the same request id with other content raises RequestConflict."""
        fingerprint = session.fingerprint
        stored = await asyncio.to_thread(self.store.save, report.report_id, report.case.accession_id,
                                         report.case.request_id, report.created_at, payload, owner, client_id,
                                         fingerprint.case, bytes(fingerprint.images))
        if stored.report_id != report.report_id and not fingerprint.matches(stored, session.streamed):
            raise RequestConflict(report.case.request_id)
        return stored

    async def get_report(self, owner: str | None, report_id: str = "", accession_id: str = "") -> StoredReport | None:
        """``owner`` scopes the lookup to one organisation's reports; None reads any (administrators)."""
        if report_id:
            return await asyncio.to_thread(self.store.by_report_id, report_id, owner)
        return await asyncio.to_thread(self.store.by_accession_id, accession_id, owner)
