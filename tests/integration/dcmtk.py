"""dcmtk (the Debian package ``dcmtk``) as an independent DICOM peer for tests: storescu as
the modality, storescp as the archive, dcmdump/dsrdump to read what the bridge made.
Tests skip, saying why, only where dcmtk is not installed (scripts/bootstrap.sh installs it
when it runs as root)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from marrowdx.inference.launcher import free_port


def need_dcmtk() -> None:
    missing = [tool for tool in ("storescu", "storescp", "dcmdump", "dsrdump") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"dcmtk is not installed ({', '.join(missing)} missing): apt-get install dcmtk, "
                    "or run scripts/bootstrap.sh as root")


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def storescu(port: int, files: list[Path], called: str = "MARROWDX", calling: str = "SCANNER") -> subprocess.CompletedProcess:
    """One association, every file C-STOREd; storescu exits non-zero when a store fails or the
    association is refused (its output names the status)."""
    return run("storescu", "-v", "--no-halt", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files))


def _with_parent(command: list[str]) -> list[str]:
    """The command, ended by SIGTERM when the test process dies, even by a crash, so no storescp is
    left behind: util-linux setpriv sets the parent-death signal (a preexec_fn would do it too, but
    is unsafe in a process with threads, as a test process with gRPC is)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *command] if setpriv else command


class StoreSCP:
    """dcmtk's storescp as the archive: accepts any storage SOP class (promiscuous, for the
    bulk annotations its release may not know) and writes each object to ``out``."""

    def __init__(self, out: Path, ae_title: str = "ARCHIVE") -> None:
        self.out, self.ae_title, self.port = out, ae_title, free_port()
        out.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> StoreSCP:
        # A free port can be taken by another process before storescp binds it (a busy CI machine):
        # try a few, each with a fresh port.
        for _ in range(3):
            self.port = free_port()
            self._process = subprocess.Popen(
                _with_parent(["storescp", "-aet", self.ae_title, "--promiscuous", "+xa", "-od", str(self.out),
                              str(self.port)]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.1)
            self.__exit__()
        raise RuntimeError("storescp did not start listening")

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def modalities(self) -> list[str]:
        """The Modality of each received object, read by dcmdump (storescp names files MODALITY.UID)."""
        return [p.name.split(".", 1)[0] for p in self.files()]
