"""The health watchdog: follows readiness, survives its own failures, flips before a restart."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from grpc_health.v1 import health_pb2

from marrowdx import app

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class FakeHealth:
    def __init__(self) -> None:
        self.history: list[int] = []

    async def set(self, name: str, status: int) -> None:
        if name == "":
            self.history.append(status)


class FlakyModels:
    """Ready, then its readiness probe itself blows up, then not ready."""

    def __init__(self) -> None:
        self.answers = [True, RuntimeError("probe broke"), False]

    async def ready(self) -> bool:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_watch_survives_a_failing_probe_and_reports_not_serving():
    health = FakeHealth()
    runtime = SimpleNamespace(models=FlakyModels(), triton=None)

    async def run() -> None:
        task = asyncio.create_task(app.watch_health(runtime, health, period_s=0.01))
        await asyncio.sleep(0.2)
        task.cancel()

    asyncio.run(run())
    assert health.history == [SERVING, NOT_SERVING]


def test_dead_triton_flips_to_not_serving_before_the_restart(monkeypatch):
    health = FakeHealth()
    restarted = []
    dead = SimpleNamespace(alive=lambda: False, process=SimpleNamespace(returncode=-9), grpc_port=1234)
    runtime = SimpleNamespace(models=SimpleNamespace(ready=lambda: asyncio.sleep(0, True)), triton=dead,
                              settings=SimpleNamespace(model_repository="repo", state_dir="state"))

    def fake_start(repo, state, port):
        restarted.append((port, list(health.history)))
        return SimpleNamespace(alive=lambda: True, grpc_port=port)

    monkeypatch.setattr(app, "start_triton", fake_start)
    assert asyncio.run(app._health_step(runtime, health, None)) is False
    # Health said NOT_SERVING before the restart began, on the same port.
    assert restarted == [(1234, [SERVING, NOT_SERVING])]
