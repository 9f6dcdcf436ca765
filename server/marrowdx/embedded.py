"""Run the whole stack (Triton + front service) in a background thread, for
CLI commands without --server: the command still goes through real gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from marrowdx.settings import Settings

if TYPE_CHECKING:
    from marrowdx.app import Runtime


@dataclass
class EmbeddedStack:
    address: str
    runtime: Runtime
    loop: asyncio.AbstractEventLoop


@contextlib.contextmanager
def embedded_stack(settings: Settings, start_timeout_s: float = 180.0) -> Iterator[EmbeddedStack]:
    """A running service on loopback (port chosen by the OS); stopped on exit."""
    from marrowdx.app import running_service

    started = threading.Event()
    state: dict[str, object] = {}
    stop: asyncio.Event | None = None
    main_task: asyncio.Task | None = None
    loop = asyncio.new_event_loop()

    async def main() -> None:
        nonlocal stop, main_task
        stop = asyncio.Event()
        main_task = asyncio.current_task()
        if state.get("aborted"):
            return
        try:
            async with running_service(settings.replace(host="127.0.0.1", port=0)) as (runtime, port):
                state["port"] = port
                state["runtime"] = runtime
                started.set()
                await stop.wait()
        except BaseException as exc:  # surfaced in the calling thread
            state["error"] = exc
            started.set()

    def abort_start() -> None:
        """Cancel a start in progress and wait for it to clean up: a daemon thread killed at exit
        would leave the tritonserver it was starting behind."""
        def cancel() -> None:
            state["aborted"] = True
            if main_task is not None:
                main_task.cancel()
        loop.call_soon_threadsafe(cancel)
        thread.join(120)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="marrowdx-embedded", daemon=True)
    thread.start()
    try:
        ready = started.wait(start_timeout_s)
    except BaseException:  # Ctrl-C while Triton starts
        abort_start()
        raise
    if not ready:
        abort_start()
        raise TimeoutError("the embedded service did not start in time")
    if "error" in state:
        thread.join(5)
        raise RuntimeError(f"the embedded service failed to start: {state['error']}") from state["error"]
    try:
        yield EmbeddedStack(f"127.0.0.1:{state['port']}", state["runtime"], loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()


@contextlib.contextmanager
def embedded_service(settings: Settings, start_timeout_s: float = 180.0) -> Iterator[str]:
    """Yields the loopback address of a running service; stops it on exit."""
    with embedded_stack(settings, start_timeout_s) as stack:
        yield stack.address


@contextlib.contextmanager
def given_or_embedded(server: str | None, settings: Settings) -> Iterator[str]:
    """``server`` when one is given; otherwise the embedded stack (Triton + service on
    loopback), for commands a user tries without a running service."""
    if server:
        yield server
        return
    import sys

    print("no --server: starting the embedded stack (tritonserver + front service)...", file=sys.stderr)
    with embedded_service(settings) as address:
        yield address
