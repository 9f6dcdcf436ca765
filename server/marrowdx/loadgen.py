"""Load generator: asyncio gRPC, closed loop (N concurrent) or open loop (a
target rate), bounded by duration and/or request count, over real images.

Latency goes into an HDR histogram; in open loop it is measured from the
time a request was *scheduled*, so a stalled server is not hidden
(coordinated omission). Loopback or the project's own hosts only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from hdrh.histogram import HdrHistogram

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2_grpc as pb_grpc
from marrowdx.transport import PLAINTEXT, ClientSecurity, open_aio_channel

RPCS = ("analyze", "classify", "stream")


@dataclass
class LoadConfig:
    address: str
    rpc: str
    images: list[bytes]
    concurrency: int = 8
    rate: float = 0.0  # requests/s; 0 = closed loop
    duration_s: float = 30.0
    requests: int = 0  # 0 = no count limit
    crops_per_request: int = 32
    fields_per_case: int = 8
    timeout_s: float = 60.0
    progress: bool = True
    security: ClientSecurity = PLAINTEXT


@dataclass
class LoadResult:
    rpc: str
    mode: str
    concurrency: int
    target_rate: float
    elapsed_s: float
    sent: int = 0
    ok: int = 0
    items: int = 0  # fields or crops processed successfully
    cells: int = 0
    errors: Counter = field(default_factory=Counter)
    histogram: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 600_000_000, 3))  # microseconds

    def summary(self) -> dict:
        h = self.histogram
        ms = (lambda q: h.get_value_at_percentile(q) / 1000.0) if self.ok else (lambda q: 0.0)
        return {
            "rpc": self.rpc, "mode": self.mode, "concurrency": self.concurrency, "target_rate": self.target_rate,
            "elapsed_s": round(self.elapsed_s, 3), "sent": self.sent, "ok": self.ok,
            "requests_per_s": round(self.ok / self.elapsed_s, 3) if self.elapsed_s else 0.0,
            "items_per_s": round(self.items / self.elapsed_s, 3) if self.elapsed_s else 0.0,
            "cells_per_s": round(self.cells / self.elapsed_s, 3) if self.elapsed_s else 0.0,
            "latency_ms": {"p50": ms(50), "p90": ms(90), "p99": ms(99),
                           "max": h.get_max_value() / 1000.0 if self.ok else 0.0,
                           "mean": h.get_mean_value() / 1000.0 if self.ok else 0.0},
            "errors": dict(self.errors),
        }


def load_images(paths: list[Path]) -> list[bytes]:
    data = [p.read_bytes() for p in paths]
    if not data:
        raise ValueError("no images to send")
    return data


class _Caller:
    def __init__(self, config: LoadConfig, stub: pb_grpc.DiagnosisServiceStub) -> None:
        self.config = config
        self.stub = stub
        self.cycle = itertools.cycle(range(len(config.images)))

    def _next(self, n: int) -> list[pb.Image]:
        return [pb.Image(data=self.config.images[next(self.cycle)]) for _ in range(n)]

    async def call(self) -> tuple[int, int]:
        """One request; returns (items, cells)."""
        c = self.config
        if c.rpc == "analyze":
            response = await self.stub.AnalyzeField(pb.AnalyzeFieldRequest(image=self._next(1)[0]), timeout=c.timeout_s, metadata=c.security.metadata)
            return 1, sum(1 for cell in response.cells if cell.detector_category == "nucleated")
        if c.rpc == "classify":
            response = await self.stub.ClassifyCells(pb.ClassifyCellsRequest(crops=self._next(c.crops_per_request)),
                                                      timeout=c.timeout_s, metadata=c.security.metadata)
            return len(response.cells), len(response.cells)
        # A case holds each image once (the service refuses repeats), so at most one of each.
        images = self._next(min(c.fields_per_case, len(c.images)))

        async def requests():
            start = pb.CaseInfo(case_id="loadgen", specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE)
            yield pb.DiagnoseCaseStreamRequest(start=start)
            for image in images:
                yield pb.DiagnoseCaseStreamRequest(field=image)
            yield pb.DiagnoseCaseStreamRequest(finish=pb.Finish())

        report = None
        async for response in self.stub.DiagnoseCaseStream(requests(), timeout=c.timeout_s, metadata=c.security.metadata):
            if response.HasField("report"):
                report = response.report
        return len(images), len(report.evidence) if report else 0


async def run_load(config: LoadConfig) -> LoadResult:
    if config.rpc not in RPCS:
        raise ValueError(f"rpc must be one of {RPCS}")
    if config.duration_s <= 0 and config.requests <= 0:
        raise ValueError("give a duration or a request count: a load test must stop by itself")
    mode = "open" if config.rate > 0 else "closed"
    result = LoadResult(config.rpc, mode, config.concurrency, config.rate, 0.0)
    async with open_aio_channel(config.address, config.security) as ch:
        await asyncio.wait_for(ch.channel_ready(), timeout=30)
        caller = _Caller(config, pb_grpc.DiagnosisServiceStub(ch))
        start = time.perf_counter()
        deadline = start + config.duration_s if config.duration_s > 0 else float("inf")
        budget = itertools.count() if config.requests <= 0 else iter(range(config.requests))

        async def one(scheduled: float) -> None:
            result.sent += 1
            try:
                items, cells = await caller.call()
            except grpc.aio.AioRpcError as exc:
                result.errors[exc.code().name] += 1
                return
            result.ok += 1
            result.items += items
            result.cells += cells
            result.histogram.record_value(max(1, int((time.perf_counter() - scheduled) * 1e6)))

        async def closed_worker() -> None:
            while time.perf_counter() < deadline and next(budget, None) is not None:
                await one(time.perf_counter())

        async def open_scheduler() -> None:
            interval = 1.0 / config.rate
            pending: set[asyncio.Task] = set()
            for i in budget:
                scheduled = start + i * interval
                if scheduled >= deadline:
                    break
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                # Bound what is outstanding so a dead server cannot grow our memory.
                if len(pending) >= max(config.concurrency, 1) * 16:
                    result.errors["CLIENT_BACKLOG_DROPPED"] += 1
                    continue
                task = asyncio.create_task(one(scheduled))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

        reporter = asyncio.create_task(_progress(result, start)) if config.progress else None
        if mode == "closed":
            await asyncio.gather(*(closed_worker() for _ in range(config.concurrency)))
        else:
            await open_scheduler()
        result.elapsed_s = time.perf_counter() - start
        if reporter:
            reporter.cancel()
            print(file=sys.stderr)
    return result


async def _progress(result: LoadResult, start: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        elapsed = time.perf_counter() - start
        print(f"\r{elapsed:6.1f}s  sent {result.sent}  ok {result.ok}  errors {sum(result.errors.values())}  "
              f"{result.ok / elapsed:7.1f} req/s", end="", file=sys.stderr, flush=True)


def table(summaries: list[dict]) -> str:
    head = f"{'rpc':<9}{'mode':<7}{'conc':>5}{'ok':>7}{'req/s':>9}{'items/s':>9}{'cells/s':>9}" \
           f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}  errors"
    rows = [head]
    for s in summaries:
        lat = s["latency_ms"]
        rows.append(f"{s['rpc']:<9}{s['mode']:<7}{s['concurrency']:>5}{s['ok']:>7}{s['requests_per_s']:>9.1f}"
                    f"{s['items_per_s']:>9.1f}{s['cells_per_s']:>9.1f}{lat['p50']:>9.1f}{lat['p90']:>9.1f}"
                    f"{lat['p99']:>9.1f}{lat['max']:>9.1f}  {json.dumps(s['errors']) if s['errors'] else '-'}")
    return "\n".join(rows)
