"""Backpressure: fields share a few slots fairly between cases, AnalyzeField takes its turn
with them, and a stream that goes quiet is ended instead of holding its slot."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from marrowdx.service import FairSlots, MarrowService


def test_a_large_case_does_not_queue_ahead_of_a_small_one():
    order: list[str] = []

    async def run():
        slots = FairSlots(1)

        async def field(case: str, i: int):
            async with slots.slot(case):
                order.append(f"{case}{i}")
                await asyncio.sleep(0.001)

        big = [asyncio.create_task(field("A", i)) for i in range(20)]  # a 20-field case arrives first
        await asyncio.sleep(0)
        small = [asyncio.create_task(field("B", i)) for i in range(2)]
        await asyncio.gather(*big, *small)
        return slots

    slots = asyncio.run(run())
    # FIFO would serve B after all of A; round robin serves B's two fields within the first few turns.
    assert order.index("B0") <= 2 and order.index("B1") <= 4, order
    assert slots.free == 1 and slots.waiting == 0


def test_a_cancelled_waiter_takes_no_slot_with_it():
    async def run():
        slots = FairSlots(1)
        await slots.acquire("holder")
        waiter = asyncio.create_task(slots.acquire("x"))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        slots.release()
        return slots

    slots = asyncio.run(run())
    assert slots.free == 1 and slots.waiting == 0


def test_analyze_field_goes_through_the_same_slots():
    running = most = 0

    class Pipeline:
        async def analyze_field(self, image, index, top_k):
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.01)
            running -= 1

    async def run():
        service = MarrowService(Pipeline(), None, None, None, frozenset(), versions=None, thresholds=None,
                                field_concurrency=2)
        await asyncio.gather(*(service.analyze_field(None, 3) for _ in range(8)))

    asyncio.run(run())
    assert most == 2


def test_an_idle_stream_is_ended_with_deadline_exceeded_and_gives_back_its_slot(tmp_path):
    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
    from marrowdx.api.auth import Authenticator
    from marrowdx.api.servicer import DiagnosisServicer
    from marrowdx.domain.diagnosis import default_rules
    from marrowdx.settings import Settings
    from marrowdx.store.audit import AuditLog
    from tests.unit.test_rpc_wrapper import Aborted, FakeContext

    audit = AuditLog(tmp_path / "audit.sqlite3")
    service = MarrowService(None, None, None, default_rules(), frozenset(), versions=None, thresholds=None)
    servicer = DiagnosisServicer(service, Settings(stream_idle_timeout_s=0.2), (), Authenticator(None, open_local=True),
                                 audit)

    async def stalled():
        yield pb.DiagnoseCaseStreamRequest(start=pb.CaseInfo(
            case_id="idle", specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE))
        await asyncio.sleep(3600)  # a client that stopped sending but keeps the stream open

    async def run():
        context = FakeContext("idle-stream")
        with pytest.raises(Aborted):
            async with asyncio.timeout(10):
                async for _ in servicer.DiagnoseCaseStream(stalled(), context):
                    pass
        return context.status

    status = asyncio.run(run())
    audit.close()
    assert status.code == grpc.StatusCode.DEADLINE_EXCEEDED and "no message for 0.2 s" in status.details
    assert servicer.limit.current == 0
