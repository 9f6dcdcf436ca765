"""The bridge's disk spool: every received instance is on disk (fsynced) before
the C-STORE is acknowledged, rejected ones are kept with their reason, and a
case moves incoming -> outgoing -> done only when each step has finished. A
bridge restarted at any point picks up where it was; nothing is dropped.

    spool/incoming/<case key>/<hash of the SOP instance UID>.dcm
    spool/rejected/<timestamp>-<n>.dcm + .reason.txt   one object refused (at C-STORE or later)
    spool/rejected/<case key>/ + <case key>.reason.txt  a study that cannot succeed on retry

No file name is ever taken from what a peer sent: case folders and instance
files are named by hashes, and UIDs that are not DICOM UIDs are refused
before anything is written (a peer's ``../../x`` must not pick a path).
    spool/outgoing/<case key>/*.dcm          results not yet stored at the destination
    spool/done/<case key>/                   received images and results, sent
    spool/done/<case key>/reports.txt        ids of the reports whose results were made: a re-sent
                                             study with the same report makes none again
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    directory = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_dicom_uid(value: object) -> bool:
    """A DICOM UID (PS3.5 9.1): digits and dots, components separated by single dots, at most 64 characters."""
    text = str(value)
    return 0 < len(text) <= 64 and _UID.fullmatch(text) is not None


def instance_file_name(sop_instance_uid: object) -> str:
    """The spool's name for an instance: a hash, so no peer-sent text becomes a path."""
    return hashlib.sha256(str(sop_instance_uid).encode()).hexdigest()[:32] + ".dcm"


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def dataset_bytes(dataset: Dataset) -> bytes:
    """A data set as a DICOM file (preamble and file meta), in memory."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def case_key(dataset: Dataset) -> str:
    """Cases group by study; the directory name is a hash (UIDs are long, accessions may identify)."""
    study = str(dataset.get("StudyInstanceUID", "")) or f"accession:{dataset.get('AccessionNumber', '')}"
    return hashlib.sha256(study.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class PendingCase:
    key: str
    files: list[Path]
    last_received: float  # epoch seconds, from the newest file


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("incoming", "rejected", "outgoing", "done"):
            (root / name).mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._rejected = 0

    def accept(self, dataset: Dataset) -> Path:
        """Write a received instance durably; returns its path."""
        if not is_dicom_uid(dataset.get("SOPInstanceUID", "")):
            raise ValueError("SOPInstanceUID is not a valid DICOM UID")  # the bridge checks first; never a path
        folder = self.root / "incoming" / case_key(dataset)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / instance_file_name(dataset.SOPInstanceUID)
        _fsync_write(path, dataset_bytes(dataset))
        return path

    def reject(self, raw: bytes, reason: str) -> Path:
        """Keep what could not be used, with why, for a person to look at."""
        path = self.root / "rejected" / f"{self._stem()}.dcm"
        _fsync_write(path, raw)
        _fsync_write(path.with_suffix(".reason.txt"), reason.encode())
        return path

    def _stem(self) -> str:
        with self._lock:
            self._rejected += 1
            return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{self._rejected}"

    def reject_file(self, path: Path, reason: str) -> Path:
        """Move one spooled object (incoming or outgoing) to rejected, with why; the rest of its study goes on."""
        target = self.root / "rejected" / f"{self._stem()}.dcm"
        _fsync_write(target.with_suffix(".reason.txt"), reason.encode())
        os.replace(path, target)
        _remove_if_empty(path.parent)
        return target

    def reject_case(self, key: str, files: list[Path], reason: str) -> Path:
        """A study that cannot succeed on retry: its objects move to rejected/<key>/ and the reason
        is written beside the folder (appended: a study can be rejected again after a re-send)."""
        target = self.root / "rejected" / key
        target.mkdir(parents=True, exist_ok=True)
        note = self.root / "rejected" / f"{key}.reason.txt"
        previous = note.read_bytes() if note.exists() else b""
        _fsync_write(note, previous + f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {reason}\n".encode())
        for path in files:
            if path.exists():
                os.replace(path, target / path.name)
        _remove_if_empty(self.root / "incoming" / key)
        return target

    def pending(self) -> list[PendingCase]:
        cases = []
        for folder in sorted((self.root / "incoming").iterdir()):
            files = sorted(p for p in folder.glob("*.dcm"))
            if files:
                cases.append(PendingCase(folder.name, files, max(p.stat().st_mtime for p in files)))
        return cases

    def outgoing(self, key: str) -> Path:
        folder = self.root / "outgoing" / key
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def write_result(self, key: str, name: str, dataset: Dataset) -> Path:
        path = self.outgoing(key) / name
        _fsync_write(path, dataset_bytes(dataset))
        return path

    def unsent(self) -> list[tuple[str, list[Path]]]:
        return [(folder.name, sorted(folder.glob("*.dcm"))) for folder in sorted((self.root / "outgoing").iterdir())
                if any(folder.glob("*.dcm"))]

    def finish_inputs(self, key: str, files: list[Path]) -> None:
        """The case's results are written: its inputs move to done (later arrivals stay incoming)."""
        target = self.root / "done" / key
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            os.replace(path, target / path.name)
        folder = self.root / "incoming" / key
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()

    def reported(self, key: str) -> set[str]:
        """Ids of the reports this study's results were made from."""
        record = self.root / "done" / key / "reports.txt"
        return set(record.read_text().split()) if record.exists() else set()

    def record_report(self, key: str, report_id: str) -> None:
        folder = self.root / "done" / key
        folder.mkdir(parents=True, exist_ok=True)
        record = folder / "reports.txt"
        previous = record.read_bytes() if record.exists() else b""
        _fsync_write(record, previous + f"{report_id}\n".encode())

    def finish_outputs(self, key: str, files: list[Path]) -> None:
        """Results stored at the destination: keep them with the case in done."""
        target = self.root / "done" / key / "results"
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.move(str(path), target / path.name)
        folder = self.root / "outgoing" / key
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
