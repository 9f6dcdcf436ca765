"""A small synchronous client for the diagnosis service (CLI, eval, demo, tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx._proto.marrowdx.v1 import diagnosis_pb2_grpc as pb_grpc
from marrowdx.transport import PLAINTEXT, ClientSecurity, open_channel

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff"}


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded (sorted, recursively) to their images."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return out


def image_message(path: Path, image_id: str | None = None) -> pb.Image:
    return pb.Image(data=path.read_bytes(), image_id=image_id if image_id is not None else path.name)


class Client:
    def __init__(self, address: str, timeout_s: float = 300.0, max_message_mb: int = 64,
                 security: ClientSecurity = PLAINTEXT) -> None:
        self.channel = open_channel(address, security, max_message_mb)
        self.stub = pb_grpc.DiagnosisServiceStub(self.channel)
        self.timeout_s = timeout_s
        self._call = {"timeout": timeout_s, "metadata": security.metadata}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def analyze(self, image: pb.Image, top_k: int = 3) -> pb.AnalyzeFieldResponse:
        return self.stub.AnalyzeField(pb.AnalyzeFieldRequest(image=image, top_k=top_k), **self._call)

    def classify(self, crops: list[pb.Image], top_k: int = 3) -> pb.ClassifyCellsResponse:
        return self.stub.ClassifyCells(pb.ClassifyCellsRequest(crops=crops, top_k=top_k), **self._call)

    def diagnose(self, info: pb.CaseInfo, fields: list[pb.Image] = (), crops: list[pb.Image] = ()) -> pb.CaseReport:
        request = pb.DiagnoseCaseRequest(case_info=info, fields=list(fields), crops=list(crops))
        return self.stub.DiagnoseCase(request, **self._call).report

    def diagnose_stream(self, info: pb.CaseInfo, images: Iterable[pb.Image], as_crops: bool,
                        stop_at_target: bool = True, window: int = 2) -> Iterator[pb.DiagnoseCaseStreamResponse]:
        """Send images one at a time, at most ``window`` ahead of the server's answers, and
        stop sending once it says the target count is reached."""
        reached = threading.Event()
        answered = threading.Semaphore(window)
        failure: list[BaseException] = []

        def requests() -> Iterator[pb.DiagnoseCaseStreamRequest]:
            yield pb.DiagnoseCaseStreamRequest(start=info)
            try:
                for image in images:
                    # grpc drains this generator on its own thread: without the window it
                    # would send every image before the first answer came back.
                    answered.acquire()
                    if stop_at_target and reached.is_set():
                        break
                    yield pb.DiagnoseCaseStreamRequest(crop=image) if as_crops else pb.DiagnoseCaseStreamRequest(field=image)
            except Exception as exc:  # grpc would only say "Exception iterating requests!"
                failure.append(exc)
                raise
            yield pb.DiagnoseCaseStreamRequest(finish=pb.Finish())

        try:
            for response in self.stub.DiagnoseCaseStream(requests(), **self._call):
                if response.HasField("progress"):
                    if response.progress.target_reached:
                        reached.set()
                    answered.release()
                yield response
        except grpc.RpcError:
            if failure:  # the caller's own images failed: raise that, not the cancelled call
                raise failure[0] from None
            raise

    def report(self, report_id: str = "", accession_id: str = "") -> pb.CaseReport:
        request = pb.GetReportRequest(report_id=report_id) if report_id else pb.GetReportRequest(accession_id=accession_id)
        return self.stub.GetReport(request, **self._call).report

    def model_info(self) -> pb.GetModelInfoResponse:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._call)
