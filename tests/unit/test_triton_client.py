"""The Triton client: how a case's crops are spread over classifier requests
(``_infer`` replaced), and at the tritonclient boundary, against a stand-in
Triton gRPC server on loopback: deadlines follow the caller, tritonclient's
errors become ours, TLS and mutual TLS to a remote Triton."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from marrowdx.inference.triton import (
    CALLER_DEADLINE,
    ModelError,
    ModelTimeout,
    ModelUnavailable,
    TritonModels,
    TritonTLS,
)


async def _classify(crops: np.ndarray, fake_infer, **options) -> np.ndarray:
    # The aio client needs a running loop to be made; it never connects here.
    models = TritonModels("127.0.0.1:1", timeout_s=5, **options)
    models._infer = fake_infer
    try:
        return await models.classify(crops)
    finally:
        await models.close()


def test_crops_go_in_small_requests_a_few_in_flight_and_come_back_in_order():
    sizes, in_flight, most = [], 0, 0

    async def fake_infer(model, input_name, array, outputs):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        sizes.append(len(array))
        await asyncio.sleep(0.01 * (3 - len(sizes) % 3))  # finish out of order
        in_flight -= 1
        # each crop's "probabilities" carry its own first pixel, to check the order
        return [array[:, 0, 0, :1].astype(np.float32)]

    crops = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1).repeat(3, axis=3)
    probs = asyncio.run(_classify(crops, fake_infer, classify_batch=32, classify_in_flight=2))
    assert sizes == [32, 32, 32, 4]
    assert most == 2
    assert probs[:, 0].tolist() == list(range(100))


def test_no_crops_make_no_request():
    async def fail(*args):
        raise AssertionError("no request expected")

    assert asyncio.run(_classify(np.zeros((0, 8, 8, 3), np.uint8), fail)).shape[0] == 0


# -- the tritonclient boundary, against a stand-in Triton on loopback --------------------------------------
# A grpc.aio server implementing the parts of Triton's GRPCInferenceService the service uses, so
# the real tritonclient (its deadlines, its TLS, its errors) is exercised without a tritonserver.

class FakeTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self.remaining: list[float | None] = []  # each infer's deadline, as the server saw it
        self.fail_with: grpc.StatusCode | None = None
        self.delay_s = 0.0

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        self.remaining.append(context.time_remaining())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            await context.abort(self.fail_with, f"injected {self.fail_with.name}")
        n = request.inputs[0].shape[0]
        response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="PROBS", datatype="FP32", shape=[n, 24])
        response.raw_output_contents.append(np.full((n, 24), 1 / 24, np.float32).tobytes())
        return response


@contextlib.asynccontextmanager
async def fake_triton(credentials: grpc.ServerCredentials | None = None):
    server = grpc.aio.server()
    fake = FakeTriton()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(fake, server)
    port = server.add_secure_port("127.0.0.1:0", credentials) if credentials else server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, port
    finally:
        await server.stop(0)


CROPS = np.zeros((3, 8, 8, 3), np.uint8)


def test_a_model_call_takes_no_longer_than_the_callers_deadline_allows():
    async def run():
        async with fake_triton() as (fake, port):
            models = TritonModels(f"127.0.0.1:{port}", timeout_s=30)
            try:
                assert (await models.classify(CROPS)).shape == (3, 24)  # no caller deadline: the 30 s cap
                token = CALLER_DEADLINE.set(time.monotonic() + 2.0)
                try:
                    await models.classify(CROPS)  # the caller has 2 s left
                finally:
                    CALLER_DEADLINE.reset(token)
                CALLER_DEADLINE.set(time.monotonic() - 0.1)
                with pytest.raises(ModelTimeout):  # already late: Triton is not asked at all
                    await models.classify(CROPS)
            finally:
                await models.close()
            return fake.remaining

    capped, caller = asyncio.run(run())
    # The server reads the deadline from the request header on its own clock: allow it a little over.
    assert 25 < capped <= 30.5
    assert 1.0 < caller <= 2.5


def test_tritonclient_errors_become_ours():
    async def run():
        outcomes = {}
        async with fake_triton() as (fake, port):
            models = TritonModels(f"127.0.0.1:{port}", timeout_s=0.5)
            try:
                for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT):
                    fake.fail_with = code
                    with pytest.raises(ModelError) as err:
                        await models.classify(CROPS)
                    outcomes[code.name] = type(err.value)
                fake.fail_with, fake.delay_s = None, 2.0  # slower than the 0.5 s cap
                with pytest.raises(ModelError) as err:
                    await models.classify(CROPS)
                outcomes["slow"] = type(err.value)
            finally:
                await models.close()
        # Nothing listens there any more: refused.
        models = TritonModels(f"127.0.0.1:{port}", timeout_s=2)
        try:
            with pytest.raises(ModelError) as err:
                await models.classify(CROPS)
            outcomes["refused"] = type(err.value)
            assert await models.ready() is False
        finally:
            await models.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert outcomes == {"UNAVAILABLE": ModelUnavailable, "INTERNAL": ModelError, "INVALID_ARGUMENT": ModelError,
                        "slow": ModelTimeout, "refused": ModelUnavailable}


def test_tls_and_mutual_tls_to_a_remote_triton(tmp_path):
    from tests.pki import CertificateAuthority

    ca = CertificateAuthority(tmp_path)
    server_cert, server_key = ca.issue("localhost", server=True)
    client_cert, client_key = ca.issue("marrowdx-front")
    mutual = grpc.ssl_server_credentials([(server_key.read_bytes(), server_cert.read_bytes())],
                                         root_certificates=ca.cert_path.read_bytes(), require_client_auth=True)

    async def run():
        async with fake_triton(mutual) as (_, port):
            url = f"localhost:{port}"
            answers = {}
            for name, tls in (("plaintext", None), ("tls, no client certificate", TritonTLS(ca.cert_path)),
                              ("mutual tls", TritonTLS(ca.cert_path, client_cert, client_key))):
                models = TritonModels(url, timeout_s=5, tls=tls)
                try:
                    answers[name] = await models.ready()
                finally:
                    await models.close()
            return answers

    assert asyncio.run(run()) == {"plaintext": False, "tls, no client certificate": False, "mutual tls": True}
    with pytest.raises(ValueError, match="both"):
        TritonTLS(ca.cert_path, cert=client_cert).client_options()
