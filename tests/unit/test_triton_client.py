"""How the service spreads a case's crops over classifier requests (the Triton
call itself, ``_infer``, is replaced: the real one is exercised by the
integration tests against a running tritonserver)."""

from __future__ import annotations

import asyncio

import numpy as np

from marrowdx.inference.triton import TritonModels


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
