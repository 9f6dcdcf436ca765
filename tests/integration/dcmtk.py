"""dcmtk (the Debian package ``dcmtk``) as an independent DICOM peer for tests: storescu as
the modality, storescp as the archive, dcmdump/dsrdump to read what the bridge made.
Tests skip, saying why, only where dcmtk is not installed (scripts/bootstrap.sh installs it
when it runs as root)."""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
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


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by a crash, so no storescp is left."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class StoreSCP:
    """dcmtk's storescp as the archive: accepts any storage SOP class (promiscuous, for the
    bulk annotations its release may not know) and writes each object to ``out``."""

    def __init__(self, out: Path, ae_title: str = "ARCHIVE") -> None:
        self.out, self.ae_title, self.port = out, ae_title, free_port()
        out.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> StoreSCP:
        self._process = subprocess.Popen(
            ["storescp", "-aet", self.ae_title, "--promiscuous", "+xa", "-od", str(self.out), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self._process.poll() is not None:
                    break
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
