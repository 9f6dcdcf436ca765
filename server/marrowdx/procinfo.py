"""Processes of a running service, from /proc: memory, children, and starting
``marrowdx serve`` as a separate process (for the benchmark and the fault run)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from marrowdx.client import Client
from marrowdx.inference.launcher import free_port


def _status_mb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def peak_rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmHWM:")


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS:")


def children(pid: int) -> list[int]:
    """Direct children of every thread (Triton is started from a worker thread)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def descendants(pids: list[int]) -> list[int]:
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children(pid)
    return out


def start_service_process(state_dir: Path, model_repository: Path, port: int = 0,
                          env: dict[str, str] | None = None, timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``marrowdx serve`` on loopback, its log in ``state_dir/service.log``; returns once it answers."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "MARROWDX_LOG_LEVEL": "warning", **(env or {})}
    cmd = [sys.executable, "-m", "marrowdx.cli", "serve", "--port", str(port), "--state-dir", str(state_dir),
           "--model-repository", str(model_repository)]
    log_path = state_dir / "service.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with Client(address, timeout_s=2) as c:
                c.model_info()
            return proc, address
        except Exception:
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"service did not start in {timeout_s:.0f}s; see {log_path}")
