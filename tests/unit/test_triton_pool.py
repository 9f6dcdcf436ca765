"""Several Triton endpoints as one (inference/pool.py): balanced, health-checked, a dead one taken
out and its call retried elsewhere. The fakes stand in for our own TritonModels, one per endpoint."""

from __future__ import annotations

import asyncio

import pytest

from marrowdx.inference.pool import NoEndpoint, TritonPool, is_pool, split_urls
from marrowdx.inference.triton import ModelContractError, ModelTimeout, ModelUnavailable

CONTRACT = ("tax-1", ("a", "b"), ("cell",))


class Info:
    def __init__(self, name: str, weights: str) -> None:
        self.version = f"{name}:{weights}"


class FakeModels:
    """One endpoint: answers with its url, or fails the way a dead or slow server does."""

    def __init__(self, url: str, weights: str = "w1") -> None:
        self.url = url
        self.weights = weights
        self.alive = True
        self.timeout = False
        self.calls = 0
        self.contract_checks = 0
        self.closed = False
        self.gate: asyncio.Event | None = None  # set: calls wait for it
        self.detector = self.classifier = None
        self.timeout_s = 30.0

    async def ready(self) -> bool:
        return self.alive

    async def load_contract(self, *contract) -> None:
        if not self.alive:
            raise ModelUnavailable(f"{self.url} refused")
        assert contract == CONTRACT
        self.contract_checks += 1
        self.detector, self.classifier = Info("detector", self.weights), Info("classifier", self.weights)

    async def _answer(self, what):
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if not self.alive:
            raise ModelUnavailable(f"{self.url} is down")
        if self.timeout:
            raise ModelTimeout(f"{self.url} timed out")
        return (self.url, what)

    async def detect(self, images):
        return await self._answer(images)

    async def classify(self, crops):
        return await self._answer(crops)

    async def close(self) -> None:
        self.closed = True


def pool_of(*urls: str, weights: dict[str, str] | None = None, resolve=None):
    made: dict[str, FakeModels] = {}

    def make(url: str) -> FakeModels:
        made[url] = FakeModels(url, (weights or {}).get(url, "w1"))
        return made[url]

    kwargs = {"resolve": resolve} if resolve else {}
    return TritonPool(list(urls), make, **kwargs), made


def run(coro):
    return asyncio.run(coro)


def test_calls_are_balanced_over_healthy_endpoints():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001")
        await pool.load_contract(*CONTRACT)
        answers = [await pool.detect(i) for i in range(10)]
        return answers, made

    answers, made = run(go())
    assert [a[1] for a in answers] == list(range(10))
    assert made["t1:8001"].calls == made["t2:8001"].calls == 5


def test_a_busy_endpoint_gets_the_next_call_less():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001")
        await pool.load_contract(*CONTRACT)
        made["t1:8001"].gate = asyncio.Event()
        slow = asyncio.create_task(pool.detect("slow"))  # t1 (first turn) now has one in flight
        await asyncio.sleep(0)
        fast = [await pool.detect(i) for i in range(3)]
        made["t1:8001"].gate.set()
        await slow
        return fast

    assert {url for url, _ in run(go())} == {"t2:8001"}


def test_a_dead_endpoint_is_taken_out_and_its_call_retried_elsewhere():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001")
        await pool.load_contract(*CONTRACT)
        made["t1:8001"].alive = False  # SIGKILLed: the next call to it fails
        answers = [await pool.classify(i) for i in range(6)]
        return answers, made

    answers, made = run(go())
    assert [a for a in answers] == [("t2:8001", i) for i in range(6)]
    assert made["t1:8001"].calls == 1  # tried once, then out


def test_an_endpoint_back_after_a_health_check_takes_calls_again_with_its_contract_rechecked():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001")
        await pool.load_contract(*CONTRACT)
        t1 = made["t1:8001"]
        t1.alive = False
        assert await pool.ready()  # t2 still serves
        assert not pool.endpoints[0].healthy
        t1.alive = True
        checks = t1.contract_checks
        assert await pool.ready()
        answers = {(await pool.detect(i))[0] for i in range(4)}
        return answers, t1.contract_checks - checks

    answers, rechecked = run(go())
    assert answers == {"t1:8001", "t2:8001"} and rechecked == 1


def test_all_endpoints_dead_is_unavailable_and_not_ready():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001")
        await pool.load_contract(*CONTRACT)
        for m in made.values():
            m.alive = False
        with pytest.raises(ModelUnavailable):
            await pool.detect("x")
        return await pool.ready()

    assert run(go()) is False


def test_a_timeout_is_not_retried_on_another_endpoint():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001")
        await pool.load_contract(*CONTRACT)
        made["t1:8001"].timeout = made["t2:8001"].timeout = True
        with pytest.raises(ModelTimeout):
            await pool.detect("x")
        return sum(m.calls for m in made.values())

    assert run(go()) == 1


def test_starting_with_one_endpoint_down_serves_from_the_other_and_adds_it_later():
    async def go():
        made: dict[str, FakeModels] = {}

        def make(url):
            made[url] = FakeModels(url)
            made[url].alive = url != "t2:8001"
            return made[url]

        pool = TritonPool(["t1:8001", "t2:8001"], make)
        await pool.load_contract(*CONTRACT)
        first = {(await pool.detect(i))[0] for i in range(3)}
        made["t2:8001"].alive = True
        await pool.ready()
        later = {(await pool.detect(i))[0] for i in range(4)}
        return first, later

    first, later = run(go())
    assert first == {"t1:8001"} and later == {"t1:8001", "t2:8001"}


def test_no_endpoint_reachable_at_start_fails_the_start():
    async def go():
        def make(url):
            m = FakeModels(url)
            m.alive = False
            return m

        await TritonPool(["t1:8001", "t2:8001"], make).load_contract(*CONTRACT)

    with pytest.raises(NoEndpoint):
        run(go())


def test_an_endpoint_with_other_weights_is_never_used():
    async def go():
        pool, made = pool_of("t1:8001", "t2:8001", weights={"t2:8001": "w2"})
        with pytest.raises(ModelContractError):
            await pool.load_contract(*CONTRACT)
        # joining later, through a health check, it is refused and stays out
        late: dict[str, FakeModels] = {}

        def make(url):
            late[url] = FakeModels(url, "w2" if url == "t2:8001" else "w1")
            late[url].alive = url != "t2:8001"
            return late[url]

        pool2 = TritonPool(["t1:8001", "t2:8001"], make)
        await pool2.load_contract(*CONTRACT)
        late["t2:8001"].alive = True
        await pool2.ready()
        return {(await pool2.detect(i))[0] for i in range(4)}

    assert run(go()) == {"t1:8001"}


def test_a_dns_name_follows_the_pods_behind_it():
    answers = [["10.0.0.1:8001", "10.0.0.2:8001"], ["10.0.0.2:8001", "10.0.0.3:8001"]]

    def resolve(name_port):
        assert name_port == "marrowdx-triton:8001"
        return answers[0]

    async def go():
        pool, made = pool_of("dns:///marrowdx-triton:8001", resolve=resolve)
        await pool.load_contract(*CONTRACT)
        before = {e.url for e in pool.endpoints}
        answers.pop(0)
        await pool.ready()
        after = {(await pool.detect(i))[0] for i in range(4)}
        await pool.close()
        return before, after, made

    before, after, made = run(go())
    assert before == {"10.0.0.1:8001", "10.0.0.2:8001"}
    assert after == {"10.0.0.2:8001", "10.0.0.3:8001"}
    assert all(m.closed for m in made.values())


def test_urls():
    assert split_urls(" a:1, b:2 ,") == ["a:1", "b:2"]
    assert is_pool("a:1,b:2") and is_pool("dns:///t:8001") and not is_pool("127.0.0.1:8001")
