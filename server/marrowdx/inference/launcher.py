"""Start and stop the bundled ``tritonserver`` (from the nvidia-pytriton wheel)
as a managed child process.

The wheel ships the server, its shared libraries and the Python backend, but
the backend's stub must sit next to ``libtriton_python.so``: we assemble a
backend folder under the state directory once and point Triton at it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

MODELS = ("detector", "classifier")


class TritonLaunchError(RuntimeError):
    pass


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonLaunchError("nvidia-pytriton is not installed: it provides the tritonserver binary")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    """A loopback port free right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_backend_dir(state_dir: Path) -> Path:
    """A backends/ folder whose python/ holds the wheel's backend plus the stub for this Python."""
    tritonserver = _pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = tritonserver / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonLaunchError(f"no Triton Python-backend stub for Python {version} in {stub.parent.parent}")
    target = state_dir / "triton-backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in (tritonserver / "backends" / "python" / "libtriton_python.so",
                   tritonserver / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dest = target / source.name
        if not dest.exists() or dest.stat().st_size != source.stat().st_size:
            shutil.copy2(source, dest)
    return target.parent


def child_environment() -> dict[str, str]:
    """LD_LIBRARY_PATH for the wheel's libraries and libpython; MARROWDX_PYTHONPATH so
    the models' model.py import onnxruntime, numpy and marrowdx from this environment."""
    env = dict(os.environ)
    libs = [str(_pytriton_root().parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    # An editable install is found through a .pth hook the stub never runs: name our root too.
    package_root = str(Path(__file__).resolve().parents[2])
    env["MARROWDX_PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in sys.path if p])
    # The stub must not inherit thread counts that oversubscribe a small CPU.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@dataclass
class ManagedTriton:
    """A running tritonserver child; ``url`` is its gRPC endpoint."""

    process: subprocess.Popen
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to its whole session: the Python-backend stubs are its children
        and would outlive a server that was killed (or that died) without stopping them."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.process.wait(5)
            log.info("triton.stopped", returncode=self.process.returncode)
        self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # started with start_new_session: pgid == pid


def reap_orphan(state_dir: Path) -> int | None:
    """Kill a tritonserver (and its backend stubs) left by a front service that died
    without stopping it (kill -9, power loss of the parent only); returns its pid."""
    pid_file = state_dir / "tritonserver.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    # Only ours: the pid may have been reused by an unrelated process since.
    if "tritonserver" not in cmdline or str(state_dir.resolve()) not in cmdline:
        return None
    try:
        os.killpg(pid, signal.SIGKILL)  # its own session: the stubs go with it
    except ProcessLookupError:
        return None
    log.warning("triton.orphan_killed", pid=pid)
    return pid


def start_triton(model_repository: Path, state_dir: Path, grpc_port: int = 0, ready_timeout: float = 120.0,
                 cancel: threading.Event | None = None) -> ManagedTriton:
    """Start tritonserver on loopback and wait until both models are ready. Setting ``cancel``
    (the service is shutting down) stops a start in progress, and the server it started."""
    cancel = cancel or threading.Event()
    state_dir.mkdir(parents=True, exist_ok=True)
    reap_orphan(state_dir)
    binary = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    port = grpc_port or free_port()
    log_path = state_dir / "tritonserver.log"
    cmd = [
        str(binary),
        f"--model-repository={Path(model_repository).resolve()}",
        f"--backend-directory={prepare_backend_dir(state_dir.resolve())}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in MODELS],
        "--grpc-address=127.0.0.1",
        f"--grpc-port={port}",
        "--allow-http=false",
        "--allow-metrics=false",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]
    if cancel.is_set():
        raise TritonLaunchError("not starting tritonserver: the service is shutting down")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_environment(),
                                   start_new_session=True)
    (state_dir / "tritonserver.pid").write_text(str(process.pid))
    triton = ManagedTriton(process, port, log_path)
    log.info("triton.starting", pid=process.pid, grpc_port=port, model_repository=str(model_repository))
    try:
        wait_ready(triton, ready_timeout, cancel)
    except BaseException:
        triton.stop()
        raise
    return triton


def wait_ready(triton: ManagedTriton, timeout: float, cancel: threading.Event | None = None) -> None:
    import tritonclient.grpc as grpcclient  # sync client: start-up runs before the event loop

    deadline = time.monotonic() + timeout
    client = grpcclient.InferenceServerClient(triton.url)
    try:
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise TritonLaunchError("tritonserver start cancelled: the service is shutting down")
            if not triton.alive():
                tail = triton.log_path.read_text(errors="replace")[-2000:]
                raise TritonLaunchError(f"tritonserver exited with {triton.process.returncode}:\n{tail}")
            try:
                if client.is_server_ready() and all(client.is_model_ready(m) for m in MODELS):
                    log.info("triton.ready", url=triton.url)
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.25)
    finally:
        client.close()
    raise TritonLaunchError(f"tritonserver not ready after {timeout:.0f}s; see {triton.log_path}")
