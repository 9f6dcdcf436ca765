"""Plain DICOM peers for trying the bridge and for its tests: a storage SCU that
sends files, and a storage SCP that keeps what it receives (the "PACS")."""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset, dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from clients.pacs.bridge import BULK_ANNOTATIONS, COMPREHENSIVE_SR
from clients.pacs.spool import is_dicom_uid


def send_files(paths: list[Path], host: str, port: int, ae_title: str, calling_ae: str = "MARROWDX-SCU") -> list[int]:
    """C-STORE each file; returns the status of each (0 = success), -1 where no answer came."""
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    # One context per (class, transfer syntax): an acceptor picks one syntax per context, and a
    # JPEG-coded slide cannot be sent in a context that settled on explicit VR little endian.
    for sop_class, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {ae_title}@{host}:{port}")
    statuses = []
    try:
        for dataset in datasets:
            status = assoc.send_c_store(dataset)
            statuses.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def echo(host: str, port: int, ae_title: str) -> int:
    ae = AE(ae_title="MARROWDX-SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {ae_title}@{host}:{port}")
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


class StoreSCP:
    """A storage SCP keeping every instance it receives in ``out_dir`` (and in memory)."""

    def __init__(self, out_dir: Path, host: str = "127.0.0.1", port: int = 0, ae_title: str = "ARCHIVE") -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.received: list[Dataset] = []
        self.ae = AE(ae_title=ae_title)
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        for sop_class in (COMPREHENSIVE_SR, BULK_ANNOTATIONS):
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(Verification)
        self.host, self.port, self.ae_title = host, port, ae_title
        self._server = None

    def _on_store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        if not is_dicom_uid(dataset.get("SOPInstanceUID", "")):
            return 0xA900  # the file is named by the UID: never let a peer's text pick a path
        dataset.save_as(self.out_dir / f"{dataset.SOPInstanceUID}.dcm", enforce_file_format=True)
        self.received.append(dataset)
        return 0x0000

    def __enter__(self) -> StoreSCP:
        self._server = self.ae.start_server((self.host, self.port), block=False,
                                            evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self._server.server_address[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
