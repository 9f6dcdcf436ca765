"""Triton going away, and the front service restarting, on a stack of their own."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client, image_message
from marrowdx.embedded import embedded_stack

pytestmark = pytest.mark.integration
MARROW = pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE
CROPS = sorted((Path(__file__).resolve().parents[2] / "samples" / "demo-case" / "crops").glob("*.jpg"))


def wait_for(health, want, timeout=90.0):
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status
        except grpc.RpcError:
            seen = None
        if seen == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"health stayed {seen}, wanted {want}")


def test_health_goes_not_serving_when_triton_dies_and_recovers(fresh_settings):
    with embedded_stack(fresh_settings) as stack, grpc.insecure_channel(stack.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(health, health_pb2.HealthCheckResponse.SERVING)
        stack.runtime.triton.process.kill()
        wait_for(health, health_pb2.HealthCheckResponse.NOT_SERVING)
        # The managed Triton is restarted by the watchdog and the service recovers by itself.
        wait_for(health, health_pb2.HealthCheckResponse.SERVING)
        with Client(stack.address, timeout_s=60) as client:
            assert len(client.classify([image_message(CROPS[0])]).cells) == 1


def test_calls_while_triton_is_down_are_unavailable(fresh_settings):
    with embedded_stack(fresh_settings) as stack, Client(stack.address, timeout_s=30) as client:
        triton = stack.runtime.triton
        triton.process.kill()
        triton.process.wait()
        with pytest.raises(grpc.RpcError) as info:
            client.classify([image_message(CROPS[0])])
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_report_is_read_back_after_the_service_restarts(fresh_settings):
    settings = fresh_settings
    info = pb.CaseInfo(case_id="restart-case", specimen_type=MARROW, accession_id=f"ACC-{uuid.uuid4().hex[:6]}")
    with embedded_stack(settings) as stack, Client(stack.address) as client:
        written = client.diagnose(info, crops=[image_message(p) for p in CROPS[:10]])
    with embedded_stack(settings) as stack, Client(stack.address) as client:
        assert client.report(report_id=written.report_id) == written
        assert client.report(accession_id=info.accession_id).report_id == written.report_id


def test_metrics_endpoint_counts_rpcs_by_method_and_code(fresh_settings):
    import urllib.request

    from marrowdx.inference.launcher import free_port

    port = free_port()
    with embedded_stack(fresh_settings.replace(metrics_port=port)) as stack, Client(stack.address) as client:
        client.classify([image_message(CROPS[0])])
        with pytest.raises(grpc.RpcError):
            client.report(report_id="rpt_missing")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'marrowdx_rpcs_total{code="OK",method="ClassifyCells"}' in text
    assert 'marrowdx_rpcs_total{code="NOT_FOUND",method="GetReport"}' in text


def test_over_the_in_flight_limit_is_resource_exhausted_with_retry_info(fresh_settings):
    import asyncio

    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2_grpc as pb_grpc

    crops = [pb.Image(data=p.read_bytes()) for p in CROPS[:64]]

    async def burst(address):
        async with grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.DiagnosisServiceStub(ch)
            calls = [stub.ClassifyCells(pb.ClassifyCellsRequest(crops=crops), timeout=60) for _ in range(8)]
            return await asyncio.gather(*calls, return_exceptions=True)

    with embedded_stack(fresh_settings.replace(max_in_flight=1)) as stack:
        results = asyncio.run(burst(stack.address))
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert refused and all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
        assert any(not isinstance(r, Exception) for r in results)
        status = rpc_status.from_call(refused[0])
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        with Client(stack.address) as client:  # and it keeps serving
            assert len(client.classify([image_message(CROPS[0])]).cells) == 1


def test_a_passed_deadline_is_deadline_exceeded(stack):
    with Client(stack.address, timeout_s=0.001) as client, pytest.raises(grpc.RpcError) as info:
        client.classify([image_message(p) for p in CROPS[:64]])
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_cancelled_case_stops_its_work_and_stores_nothing(stack):
    request_id = uuid.uuid4().hex
    info = pb.CaseInfo(case_id="cancelled-case", specimen_type=MARROW, request_id=request_id)
    crops = [image_message(p) for p in CROPS]  # the whole demo case: seconds of work
    with Client(stack.address, timeout_s=0.5) as client, pytest.raises(grpc.RpcError) as err:
        client.diagnose(info, crops=crops)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    start = time.monotonic()
    with Client(stack.address) as client:
        client.diagnose(pb.CaseInfo(case_id="timing", specimen_type=MARROW), crops=crops)  # what the full case costs, at least
    time.sleep(max(1.0, time.monotonic() - start))
    # Had the work gone on after the deadline, the report would have been committed by now.
    assert stack.runtime.store.by_request_id(request_id, "local") is None


def processes_under(folder: Path) -> list[str]:
    """Running processes whose command line names ``folder`` (tritonserver names its backend
    directory there, and the Python-backend stubs run from it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(folder.resolve()) in cmdline and state != "Z":
            found.append(f"{proc.name}: {cmdline.replace(chr(0), ' ')[:120]}")
    return found


def test_shutting_down_while_the_watchdog_restarts_triton_leaves_no_tritonserver(fresh_settings):
    with embedded_stack(fresh_settings) as stack, grpc.insecure_channel(stack.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stack.runtime.triton.process.kill()
        # NOT_SERVING is set just before the watchdog starts the new tritonserver: stop right then.
        wait_for(health, health_pb2.HealthCheckResponse.NOT_SERVING)
        time.sleep(1.0)
    deadline = time.monotonic() + 10
    while processes_under(fresh_settings.state_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_under(fresh_settings.state_dir) == []
