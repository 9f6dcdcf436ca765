"""A client given several replicas spreads its calls over them, call by call (gRPC round_robin),
where gRPC's default (pick_first, like any TCP-level balancer for HTTP/2) pins every call of a
channel to one replica. Two real gRPC servers on loopback."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from marrowdx.transport import channel_target, open_aio_channel, open_channel


class Counting(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def intercept_service(self, continuation, handler_call_details):
        with self._lock:
            self.calls += 1
        return continuation(handler_call_details)


@pytest.fixture
def replicas():
    started = []
    for _ in range(2):
        counter = Counting()
        server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[counter])
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        started.append((server, port, counter))
    yield started
    for server, _, _ in started:
        server.stop(None).wait()


def _check(channel, n: int) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for _ in range(n):
        request = health_pb2.HealthCheckRequest()
        assert stub.Check(request, timeout=5, wait_for_ready=True).status == health_pb2.HealthCheckResponse.SERVING


def test_calls_are_spread_over_both_replicas(replicas):
    address = ",".join(f"127.0.0.1:{port}" for _, port, _ in replicas)
    with open_channel(address) as channel:
        _check(channel, 40)
    counts = [counter.calls for _, _, counter in replicas]
    assert sum(counts) == 40 and min(counts) >= 10, counts


def test_without_round_robin_one_channel_is_pinned_to_one_replica(replicas):
    """The failure the balancing prevents: the same list with gRPC's default policy."""
    target, _ = channel_target(",".join(f"127.0.0.1:{port}" for _, port, _ in replicas))
    with grpc.insecure_channel(target) as channel:
        _check(channel, 40)
    assert sorted(counter.calls for _, _, counter in replicas) == [0, 40]


def test_the_async_channel_balances_too(replicas):
    import asyncio

    async def run():
        address = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port, _ in replicas)
        async with open_aio_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(20):
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True)

    asyncio.run(run())
    assert min(counter.calls for _, _, counter in replicas) >= 5


def test_targets():
    assert channel_target("localhost:50051") == ("localhost:50051", False)
    assert channel_target("dns:///marrowdx-front.marrowdx.svc:50051") == ("dns:///marrowdx-front.marrowdx.svc:50051",
                                                                          True)
    assert channel_target("10.0.0.1:1, 10.0.0.2:1") == ("ipv4:10.0.0.1:1,10.0.0.2:1", True)
    assert channel_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", True)
    with pytest.raises(ValueError, match="dns:///"):
        channel_target("a.example:1,b.example:1")
