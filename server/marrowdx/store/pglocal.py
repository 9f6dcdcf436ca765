"""A throwaway PostgreSQL server for the tests and the distributed fault run:
``initdb`` in a new temporary folder, ``postgres`` listening on 127.0.0.1 on a
free port (its socket in that folder), trust authentication for loopback,
stopped and removed by ``stop``. Uses the system's PostgreSQL binaries (the
Debian package, which ``scripts/bootstrap.sh`` installs when missing).

PostgreSQL refuses to run as root; as root the server runs as the ``postgres``
user that the Debian package creates."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (install the ``postgresql`` package)."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``postgres``: PATH first, then Debian's versioned folders."""
    on_path = shutil.which("initdb")
    if on_path:
        folder = Path(os.path.realpath(on_path)).parent
        if (folder / "postgres").exists():
            return folder
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                            reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "postgres").exists():
            return Path(candidate)
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    def __init__(self, fsync: bool = True) -> None:
        self.bindir = find_bindir()
        self.fsync = fsync  # off only where durability across a host crash is not under test
        self.root: Path | None = None
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no postgres user to run the server as") from None
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self, timeout_s: float = 60.0) -> LocalPostgres:
        as_user = self._run_as()
        self.root = Path(tempfile.mkdtemp(prefix="marrowdx-pg-"))
        if as_user:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        subprocess.run([str(self.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                        "--no-sync", "--no-instructions"], check=True, capture_output=True, env=env, **as_user)
        self.port = free_port()
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (kept for the server's life)
        try:
            self.process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if self.fsync else 'off'}",
                 "-c", "max_connections=100", "-c", "shared_buffers=32MB"],
                stdout=log, stderr=log, env=env, start_new_session=True, **as_user)
        finally:
            log.close()
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                tail = (self.root / "postgres.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {tail}")
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"postgres not ready in {timeout_s:.0f} s") from None
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: ends the sessions, checkpoints), SIGKILL if it hangs; then remove the folder."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
