"""Several Triton servers as one: the front's model client when ``triton_url``
names more than one endpoint (``host:port,host:port`` or ``dns:///name:port``,
every address of a name, e.g. a Kubernetes headless service).

- Balanced: each call goes to the healthy endpoint with the fewest calls in
  flight, ties taken in turn, so a slow or busy server gets less new work.
- Health-checked: ``ready()`` (the service's health watch calls it every
  second) asks every endpoint, re-resolves ``dns:///`` names (pods come and
  go), and says ready while any endpoint is. An endpoint that comes back, or
  newly appears, has its model contract checked before it gets a call.
- A dead endpoint is taken out at its first ``ModelUnavailable`` and the call
  is retried on another: inference is a pure function of its input, so a
  retry cannot store or count anything twice. A timeout is not retried (the
  caller's deadline is mostly spent, and a retry would double the load on an
  overloaded cluster), nor is a model error (the next server would say the
  same).

Only endpoints serving the same model versions as the first one found are
used: two replicas never answer one case with different weights.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from marrowdx.inference.triton import ModelContractError, ModelError, ModelUnavailable

log = structlog.get_logger(__name__)
DNS = "dns:///"


def split_urls(triton_url: str) -> list[str]:
    return [u.strip() for u in triton_url.split(",") if u.strip()]


def is_pool(triton_url: str) -> bool:
    """Several endpoints (or a name that may resolve to several)."""
    urls = split_urls(triton_url)
    return len(urls) > 1 or any(u.startswith(DNS) for u in urls)


def resolve_all(name_port: str) -> list[str]:
    """``host:port`` → ``ip:port`` for every address of the host (blocking: run in a thread)."""
    host, port = name_port.rsplit(":", 1)
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    found = []
    for family, *_, sockaddr in infos:
        address = f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}"
        if address not in found:
            found.append(address)
    return found


@dataclass(eq=False)
class Endpoint:
    url: str
    models: Any  # a TritonModels
    source: str = ""  # the triton_url entry it came from (a dns:/// name, or itself)
    healthy: bool = False  # takes calls; set once its contract is checked and it answers ready
    checked: bool = False  # contract loaded and matching, since it last went down
    in_flight: int = 0


class NoEndpoint(ModelUnavailable):
    """No Triton endpoint is healthy."""


class TritonPool:
    def __init__(self, urls: Sequence[str], make: Callable[[str], Any],
                 resolve: Callable[[str], list[str]] = resolve_all) -> None:
        if not urls:
            raise ValueError("no Triton endpoint given")
        self.urls = list(urls)
        self.url = ",".join(self.urls)
        self._make = make
        self._resolve = resolve
        self.endpoints: list[Endpoint] = []
        self._retired: list[Endpoint] = []  # gone from DNS: closed at close(), calls in flight may finish
        self._turn = itertools.count()
        self._contract: tuple | None = None  # load_contract's arguments, to check newcomers
        self.detector = None
        self.classifier = None
        self.timeout_s = None

    # -- membership -----------------------------------------------------------------------------

    async def _addresses(self) -> dict[str, str]:
        """Every endpoint address now, with the triton_url entry it comes from."""
        addresses: dict[str, str] = {}
        for url in self.urls:
            if url.startswith(DNS):
                try:
                    found = await asyncio.to_thread(self._resolve, url[len(DNS):])
                except OSError as exc:  # DNS hiccup: keep what this name gave last time
                    log.warning("triton.pool.resolve_failed", name=url, error=str(exc))
                    found = [e.url for e in self.endpoints if e.source == url]
                for address in found:
                    addresses.setdefault(address, url)
            else:
                addresses.setdefault(url, url)
        return addresses

    async def _refresh_membership(self) -> None:
        addresses = await self._addresses()
        current = {e.url for e in self.endpoints}
        for url, source in addresses.items():
            if url not in current:
                self.endpoints.append(Endpoint(url, self._make(url), source))
                log.info("triton.pool.added", endpoint=url)
        for endpoint in [e for e in self.endpoints if e.url not in addresses]:
            self.endpoints.remove(endpoint)
            self._retired.append(endpoint)
            log.info("triton.pool.removed", endpoint=endpoint.url)

    async def _check(self, endpoint: Endpoint) -> None:
        """Ready and serving the same models: then it takes calls."""
        ready = await endpoint.models.ready()
        if ready and not endpoint.checked and self._contract is not None:
            try:
                await endpoint.models.load_contract(*self._contract)
                self._same_models(endpoint)
                endpoint.checked = True
            except ModelContractError as exc:
                log.error("triton.pool.contract_refused", endpoint=endpoint.url, error=str(exc))
                ready = False
            except ModelError:
                ready = False
        if not ready:
            endpoint.checked = False  # a server that comes back may come back with other models
        if (ready and endpoint.checked) != endpoint.healthy:
            log.info("triton.pool.health", endpoint=endpoint.url, healthy=ready and endpoint.checked)
        endpoint.healthy = ready and endpoint.checked

    def _same_models(self, endpoint: Endpoint) -> None:
        if self.detector is None:
            self.detector, self.classifier = endpoint.models.detector, endpoint.models.classifier
            self.timeout_s = endpoint.models.timeout_s
            return
        theirs = (endpoint.models.detector.version, endpoint.models.classifier.version)
        if theirs != (self.detector.version, self.classifier.version):
            raise ModelContractError(f"{endpoint.url} serves {theirs}, the pool serves "
                                     f"{(self.detector.version, self.classifier.version)}")

    # -- the TritonModels interface ---------------------------------------------------------------

    async def load_contract(self, taxonomy_version: str, taxonomy_codes: tuple[str, ...],
                            detector_categories: tuple[str, ...]) -> None:
        """Check every reachable endpoint; at least one must serve the contract. A reachable endpoint
        that breaks it fails the start (a misconfigured server is an operator's error to see now)."""
        self._contract = (taxonomy_version, taxonomy_codes, detector_categories)
        await self._refresh_membership()
        unreachable = []
        for endpoint in self.endpoints:
            try:
                await endpoint.models.load_contract(*self._contract)
            except ModelContractError:
                raise
            except ModelError as exc:
                unreachable.append(endpoint.url)
                log.warning("triton.pool.unreachable_at_start", endpoint=endpoint.url, error=str(exc))
                continue
            self._same_models(endpoint)
            endpoint.checked = endpoint.healthy = True
        if self.detector is None:
            raise NoEndpoint(f"no Triton endpoint reachable: {', '.join(unreachable) or self.url}")

    async def ready(self) -> bool:
        """Re-resolve names, check every endpoint at once; ready while any endpoint is."""
        try:
            await self._refresh_membership()
        except Exception as exc:  # a resolver failure must not stop the health checks
            log.warning("triton.pool.refresh_failed", error=str(exc))
        await asyncio.gather(*(self._check(e) for e in self.endpoints))
        return any(e.healthy for e in self.endpoints)

    async def detect(self, images):
        return await self._call(lambda models: models.detect(images))

    async def classify(self, crops):
        return await self._call(lambda models: models.classify(crops))

    async def close(self) -> None:
        for endpoint in [*self.endpoints, *self._retired]:
            await endpoint.models.close()

    # -- balancing and failover -------------------------------------------------------------------

    def _pick(self, tried: set[int]) -> Endpoint | None:
        candidates = [e for e in self.endpoints if e.healthy and id(e) not in tried]
        if not candidates:
            return None
        fewest = min(e.in_flight for e in candidates)
        least = [e for e in candidates if e.in_flight == fewest]
        return least[next(self._turn) % len(least)]

    async def _call(self, work: Callable[[Any], Awaitable[Any]]):
        tried: set[int] = set()
        while True:
            endpoint = self._pick(tried)
            if endpoint is None:
                raise NoEndpoint("no healthy Triton endpoint" + (f" ({len(tried)} failed this call)" if tried else ""))
            tried.add(id(endpoint))
            endpoint.in_flight += 1
            try:
                return await work(endpoint.models)
            except ModelUnavailable as exc:
                if endpoint.healthy:
                    endpoint.healthy = False  # out until the health check finds it ready again
                    log.warning("triton.pool.endpoint_out", endpoint=endpoint.url, error=str(exc))
            finally:
                endpoint.in_flight -= 1
