"""The per-RPC wrapper (api/observability.py) at its boundary, the servicer
context: however a call ends, its in-flight slot comes back and it has one
audit row."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from marrowdx.api.auth import Authenticator
from marrowdx.api.errors import RequestError
from marrowdx.api.observability import InFlightLimit, rpc
from marrowdx.security.access import Role
from marrowdx.store.audit import AuditLog


class Aborted(grpc.aio.AbortError):
    pass


class FakeContext:
    """The parts of grpc.aio.ServicerContext the wrapper uses."""

    def __init__(self, request_id: str, deadline_passed: bool = False) -> None:
        self.request_id = request_id
        self.deadline_passed = deadline_passed
        self.status = None

    def invocation_metadata(self):
        return (("x-request-id", self.request_id),)

    def time_remaining(self):
        return 0.0 if self.deadline_passed else 30.0

    def peer(self):
        return "ipv4:127.0.0.1:1"

    def auth_context(self):
        return {}

    async def abort_with_status(self, status):
        self.status = status
        raise Aborted()


class Servicer:
    def __init__(self, audit: AuditLog, limit: int = 2) -> None:
        self.limit = InFlightLimit(limit)
        self.auth = Authenticator(None, open_local=True)
        self.audit = audit
        self.started = asyncio.Event()

    @rpc("Slow", Role.SUBMIT)
    async def Slow(self, request, context):
        self.started.set()
        await asyncio.sleep(60)

    @rpc("Bad", Role.SUBMIT)
    async def Bad(self, request, context):
        raise RequestError("image", "is required")

    @rpc("Stream", Role.SUBMIT, streaming=True)
    async def Stream(self, request_iterator, context):
        for i in range(100):
            self.started.set()
            yield i
            await asyncio.sleep(1)


@pytest.fixture()
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.sqlite3")
    yield log
    log.close()


def test_cancelled_and_timed_out_calls_give_back_their_slot_and_are_audited(audit):
    async def run():
        servicer = Servicer(audit, limit=2)
        for i, deadline in enumerate((False, True, False, True)):
            servicer.started.clear()
            task = asyncio.create_task(servicer.Slow(None, FakeContext(f"req-{i}", deadline)))
            await servicer.started.wait()
            assert servicer.limit.current == 1
            task.cancel()  # what grpc does to the handler on a client cancel or a passed deadline
            with pytest.raises(asyncio.CancelledError):
                await task
            assert servicer.limit.current == 0
        # A leak would have refused this one (limit 2, four calls cancelled).
        with pytest.raises(Aborted):
            await servicer.Bad(None, FakeContext("req-bad"))
        return servicer

    servicer = asyncio.run(run())
    assert servicer.limit.current == 0
    rows = {e.request_id: e.outcome for e in audit.recent()}
    assert rows == {"req-0": "CANCELLED", "req-1": "DEADLINE_EXCEEDED", "req-2": "CANCELLED",
                    "req-3": "DEADLINE_EXCEEDED", "req-bad": "INVALID_ARGUMENT"}


def test_a_stream_closed_or_cancelled_mid_way_gives_back_its_slot_and_is_audited(audit):
    async def run():
        servicer = Servicer(audit, limit=1)
        # Closed by the consumer after the first item (GeneratorExit inside the wrapper).
        stream = servicer.Stream(None, FakeContext("closed"))
        assert await anext(stream) == 0
        assert servicer.limit.current == 1
        await stream.aclose()
        assert servicer.limit.current == 0

        # Cancelled while the handler awaits (CancelledError inside the wrapper).
        async def consume():
            async for _ in servicer.Stream(None, FakeContext("cancelled")):
                pass

        servicer.started.clear()
        task = asyncio.create_task(consume())
        await servicer.started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return servicer

    servicer = asyncio.run(run())
    assert servicer.limit.current == 0
    assert {e.request_id: e.outcome for e in audit.recent()} == {"closed": "CANCELLED", "cancelled": "CANCELLED"}
