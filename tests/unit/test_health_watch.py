"""The health watchdog: follows readiness, survives its own failures, flips before a restart."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
from pathlib import Path
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
        # Until it settles (a loaded machine renders the logged traceback slowly), then a little more.
        for _ in range(500):
            if len(health.history) >= 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run())
    assert health.history == [SERVING, NOT_SERVING]


def test_dead_triton_flips_to_not_serving_before_the_restart(monkeypatch):
    health = FakeHealth()
    restarted = []
    dead = SimpleNamespace(alive=lambda: False, process=SimpleNamespace(returncode=-9), grpc_port=1234)
    runtime = SimpleNamespace(models=SimpleNamespace(ready=lambda: asyncio.sleep(0, True)), triton=dead,
                              settings=SimpleNamespace(model_repository="repo", state_dir="state"),
                              stopping=threading.Event(), restart=None)

    def fake_start(repo, state, port, cancel=None):
        restarted.append((port, list(health.history)))
        return SimpleNamespace(alive=lambda: True, grpc_port=port)

    monkeypatch.setattr(app, "start_triton", fake_start)
    assert asyncio.run(app._health_step(runtime, health, None)) is False
    # Health said NOT_SERVING before the restart began, on the same port.
    assert restarted == [(1234, [SERVING, NOT_SERVING])]


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_restart_cut_short_by_shutdown_leaves_no_server_running(monkeypatch, tmp_path):
    """The watchdog restarts a dead Triton and the service shuts down meanwhile: the watchdog is
    cancelled while the start runs on in its thread. Runtime.close must stop the server that
    start made, though it was never assigned to the runtime. A ``sleep`` in its own session, with
    a child of its own, stands in for tritonserver and its backend stub."""
    from marrowdx.inference.launcher import ManagedTriton

    started: list[ManagedTriton] = []
    dead = ManagedTriton(subprocess.Popen(["true"]), 1234, tmp_path / "log")
    dead.process.wait()

    def slow_start(repo, state, port, cancel=None):
        # A start that does not look at ``cancel`` (as the launcher's did not): the fix must not rely on it.
        process = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
        started.append(ManagedTriton(process, port, tmp_path / "log"))
        time.sleep(0.5)  # loading the models
        return started[-1]

    monkeypatch.setattr(app, "start_triton", slow_start)
    closed = []
    runtime = app.Runtime(settings=SimpleNamespace(model_repository="repo", state_dir=tmp_path),
                          models=SimpleNamespace(ready=lambda: asyncio.sleep(0, False), close=lambda: asyncio.sleep(0)),
                          service=None, store=SimpleNamespace(close=lambda: closed.append("store")),
                          audit=SimpleNamespace(close=lambda: closed.append("audit")), triton=dead,
                          detector_categories=())

    async def run():
        watcher = asyncio.create_task(app.watch_health(runtime, FakeHealth(), period_s=0.01))
        while not started:
            await asyncio.sleep(0.01)
        watcher.cancel()  # shutdown begins while the restart is loading
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await runtime.close()

    asyncio.run(run())
    assert len(started) == 1 and closed == ["store", "audit"]
    server = started[0].process
    assert server.poll() is not None, "the restarted server is still running"

    def survivors() -> list[int]:
        return [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and _pgid(int(p.name)) == server.pid and _alive(int(p.name))]

    deadline = time.monotonic() + 3  # SIGKILL is delivered asynchronously
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not survivors(), "its children outlived it"
    assert runtime.stopping.is_set()


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def test_a_start_cancelled_midway_leaves_no_server_running(monkeypatch, tmp_path):
    """Ctrl-C or a start timeout cancels the service while Triton is loading: the start thread
    runs on, so what it starts must still be stopped (before: a tritonserver left to init)."""
    from marrowdx.inference.launcher import ManagedTriton

    started: list[ManagedTriton] = []
    seen_cancel = []

    def slow_start(repo, state, port=0, cancel=None):
        process = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
        started.append(ManagedTriton(process, 1, tmp_path / "log"))
        time.sleep(0.5)  # loading the models; a real start would notice ``cancel`` here
        seen_cancel.append(cancel.is_set())
        return started[-1]

    monkeypatch.setattr(app, "start_triton", slow_start)

    async def run():
        task = asyncio.create_task(app.start_managed_triton(SimpleNamespace(model_repository="r", state_dir=tmp_path)))
        while not started:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert seen_cancel == [True]  # the start was told
    assert started[0].process.poll() is not None, "the server started meanwhile is still running"
