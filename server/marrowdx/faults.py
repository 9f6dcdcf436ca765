"""`marrowdx faults`: load with injected faults, on loopback, bounded in time.

A real ``marrowdx serve`` process (with its managed tritonserver) takes a
steady stream of small cases (DiagnoseCase, each with a unique request id)
while this script, in order:

1. kills Triton with SIGKILL (the service must answer UNAVAILABLE, go
   NOT_SERVING, restart Triton and recover by itself);
2. overloads it at 4x its in-flight limit (RESOURCE_EXHAUSTED at once, memory
   bounded);
3. sends bad input (corrupt, truncated, empty, non-image bytes, a
   decompression bomb): INVALID_ARGUMENT, and it keeps serving;
4. a cancellation storm: waves of calls at its in-flight limit, unary ones
   cancelled mid-flight or past a short deadline and streams cancelled after
   their first answers (the service must give every slot back: the in-flight
   gauge returns to 0 and it still serves);
5. kills the front service with SIGKILL and starts it again on the same
   database.

A case that failed with UNAVAILABLE (or a broken connection) is retried with
the same request id, which the service makes idempotent. At the end every
acknowledged report is read back: ``lost`` counts those that are not there
and must be 0. Prints requests sent, acknowledged, lost, errors by code and
recovery times, and the command that reproduces them. Research use only.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client, image_message, list_images
from marrowdx.inference.launcher import free_port
from marrowdx.procinfo import rss_mb, start_service_process
from marrowdx.settings import PROJECT_ROOT, Settings

CROPS_DIR = PROJECT_ROOT / "samples" / "demo-case" / "crops"
IN_FLIGHT_LIMIT = 8  # the service under test runs with this limit so that 4x overload is reachable
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


def bad_inputs() -> dict[str, bytes]:
    """Images a scanner or a broken integration might send."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    # A valid PNG header that claims 100000 x 100000 pixels: must be refused before decoding.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:])
    return {"empty": b"", "not_an_image": b"%PDF-1.7 definitely not a smear", "truncated_png": png[: len(png) // 2],
            "corrupt_jpeg": b"\xff\xd8\xff\xe0" + os.urandom(512), "bomb_png": bomb}


@dataclass
class Tally:
    sent: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)  # request id -> report id
    retried: int = 0
    errors: Counter = field(default_factory=Counter)
    successes: list[tuple[float, float]] = field(default_factory=list)  # (start, end) monotonic
    lock: threading.Lock = field(default_factory=threading.Lock)

    def first_success_started_after(self, t: float) -> float | None:
        with self.lock:
            ends = [end for start, end in self.successes if start >= t]
        return min(ends) if ends else None


class FaultRun:
    def __init__(self, state_dir: Path, model_repository: Path, workers: int = 3, crops_per_case: int = 6) -> None:
        self.state_dir = state_dir
        self.model_repository = model_repository
        self.crops = [image_message(p) for p in list_images([CROPS_DIR])[:64]]
        self.workers = workers
        self.crops_per_case = crops_per_case
        self.tally = Tally()
        self.stop = threading.Event()
        self.quiet = threading.Event()  # the steady load pauses while set (to read an idle in-flight gauge)
        self.metrics_port = free_port()
        self.env = {"MARROWDX_MAX_IN_FLIGHT": str(IN_FLIGHT_LIMIT), "MARROWDX_METRICS_PORT": str(self.metrics_port)}
        self.proc, self.address = start_service_process(state_dir, model_repository, env=self.env)
        self.port = int(self.address.rsplit(":", 1)[1])
        self.events: list[dict] = []

    # -- load -----------------------------------------------------------------------------------------
    def _case(self, worker: int, n: int) -> tuple[pb.CaseInfo, list[pb.Image]]:
        start = (worker * 7 + n * self.crops_per_case) % (len(self.crops) - self.crops_per_case)
        info = pb.CaseInfo(case_id=f"fault-{worker}-{n}", request_id=uuid.uuid4().hex,
                           specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE)
        return info, self.crops[start:start + self.crops_per_case]

    def _worker(self, worker: int) -> None:
        n = 0
        with Client(self.address, timeout_s=30) as client:
            while not self.stop.is_set():
                if self.quiet.is_set():
                    time.sleep(0.05)
                    continue
                info, crops = self._case(worker, n)
                n += 1
                self._submit(client, info, crops, streamed=worker == 0)

    @staticmethod
    def _diagnose(client: Client, info: pb.CaseInfo, crops: list[pb.Image], streamed: bool) -> pb.CaseReport:
        if not streamed:
            return client.diagnose(info, crops=crops)
        report = None
        for response in client.diagnose_stream(info, crops, as_crops=True, stop_at_target=False):
            if response.HasField("report"):
                report = response.report
        if report is None:
            raise RuntimeError("the stream ended without a report")
        return report

    def _submit(self, client: Client, info: pb.CaseInfo, crops: list[pb.Image], streamed: bool = False) -> None:
        """Send one case until it is acknowledged or the run stops; retries keep the request id."""
        attempt = 0
        while not self.stop.is_set():
            with self.tally.lock:
                self.tally.sent += 1
                self.tally.retried += attempt > 0
            started = time.monotonic()
            try:
                report = self._diagnose(client, info, crops, streamed)
            except grpc.RpcError as exc:
                with self.tally.lock:
                    self.tally.errors[exc.code().name] += 1
                if exc.code() not in RETRYABLE:
                    return
                attempt += 1
                time.sleep(min(0.2 * attempt, 2.0))
                continue
            with self.tally.lock:
                self.tally.acknowledged[info.request_id] = report.report_id
                self.tally.successes.append((started, time.monotonic()))
            return

    # -- faults ---------------------------------------------------------------------------------------
    def _wait_recovered(self, since: float, timeout_s: float = 180.0) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.tally.first_success_started_after(since)
            if done is not None:
                return round(done - since, 2)
            time.sleep(0.2)
        return None

    def kill_triton(self) -> dict:
        pid = int((self.state_dir / "tritonserver.pid").read_text())
        t = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        return {"fault": "kill -9 tritonserver", "recovery_s": self._wait_recovered(t)}

    def kill_service(self) -> dict:
        orphan = int((self.state_dir / "tritonserver.pid").read_text())
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        # Same port and database: clients reconnect by themselves; the orphaned Triton is reaped at start.
        self.proc, _ = start_service_process(self.state_dir, self.model_repository, port=self.port, env=self.env)
        return {"fault": "kill -9 front service, restart", "recovery_s": self._wait_recovered(t),
                "orphan_triton_left": Path(f"/proc/{orphan}").exists()}

    def overload(self, seconds: float = 8.0) -> dict:
        """4x the in-flight limit of concurrent cases for a few seconds; RSS before and at the end."""
        before = rss_mb(self.proc.pid)
        codes: Counter = Counter()
        stop_at = time.monotonic() + seconds
        peak = before

        def hammer(i: int) -> None:
            nonlocal peak
            with Client(self.address, timeout_s=30) as client:
                while time.monotonic() < stop_at:
                    info, crops = self._case(100 + i, int(time.monotonic() * 1000))
                    info.case_id = "overload"
                    with self.tally.lock:
                        self.tally.sent += 1
                    try:
                        report = client.diagnose(info, crops=crops)
                        codes["OK"] += 1
                        with self.tally.lock:
                            self.tally.acknowledged[info.request_id] = report.report_id
                    except grpc.RpcError as exc:
                        codes[exc.code().name] += 1
                        with self.tally.lock:
                            self.tally.errors[exc.code().name] += 1
                        time.sleep(0.05)
                    peak = max(peak, rss_mb(self.proc.pid))

        with ThreadPoolExecutor(4 * IN_FLIGHT_LIMIT) as pool:
            list(pool.map(hammer, range(4 * IN_FLIGHT_LIMIT)))
        return {"fault": f"overload: {4 * IN_FLIGHT_LIMIT} concurrent (4x the in-flight limit {IN_FLIGHT_LIMIT})",
                "codes": dict(codes), "front_rss_mb_before": round(before, 1), "front_rss_mb_peak": round(peak, 1)}

    def bad_input(self) -> dict:
        codes = {}
        with Client(self.address, timeout_s=30) as client:
            for name, data in bad_inputs().items():
                try:
                    client.analyze(pb.Image(data=data, image_id=name))
                    codes[name] = "OK"
                except grpc.RpcError as exc:
                    codes[name] = exc.code().name
            serving = len(client.classify([self.crops[0]]).cells) == 1
        return {"fault": "bad input", "codes": codes, "served_afterwards": serving}

    def in_flight(self) -> float | None:
        """The service's ``marrowdx_rpcs_in_flight`` gauge, from its /metrics (None: unreadable)."""
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("marrowdx_rpcs_in_flight "):
                return float(line.split()[1])
        return None

    def cancellation_storm(self, waves: int = 4) -> dict:
        """Waves of IN_FLIGHT_LIMIT calls, each cancelled or timed out mid-flight. A slot leaked per
        cancelled call would refuse everything after the first wave; the gauge must end at 0."""
        from marrowdx._proto.marrowdx.v1 import diagnosis_pb2_grpc as pb_grpc

        codes: Counter = Counter()
        # Few crops a call: Triton finishes work already queued for a cancelled call, and a large
        # backlog would only slow what follows.
        crops = self.crops[:8]
        self.quiet.set()
        try:
            with grpc.insecure_channel(self.address) as channel:
                stub = pb_grpc.DiagnosisServiceStub(channel)
                for _ in range(waves):
                    calls = []
                    for i in range(IN_FLIGHT_LIMIT):
                        kind = i % 3
                        if kind == 0:
                            request = pb.DiagnoseCaseRequest(case_info=pb.CaseInfo(
                                case_id="storm", specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE), crops=crops)
                            calls.append((True, stub.DiagnoseCase.future(request, timeout=60)))
                        elif kind == 1:
                            calls.append((True, stub.ClassifyCells.future(pb.ClassifyCellsRequest(crops=crops),
                                                                          timeout=0.3)))
                        else:
                            def requests():
                                yield pb.DiagnoseCaseStreamRequest(start=pb.CaseInfo(
                                    case_id="storm", specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE))
                                for crop in crops:
                                    yield pb.DiagnoseCaseStreamRequest(crop=crop)
                                    time.sleep(0.05)
                            calls.append((False, stub.DiagnoseCaseStream(requests(), timeout=60)))
                    time.sleep(0.3)
                    for _, call in calls:
                        call.cancel()
                    for unary, call in calls:
                        try:
                            call.result() if unary else list(call)
                            codes["OK"] += 1
                        except grpc.RpcError as exc:
                            codes[exc.code().name] += 1
                        except grpc.FutureCancelledError:
                            codes["CANCELLED"] += 1
            deadline = time.monotonic() + 30
            gauge = self.in_flight()
            while gauge != 0 and time.monotonic() < deadline:
                time.sleep(0.2)
                gauge = self.in_flight()
            with Client(self.address, timeout_s=30) as client:
                serving = len(client.classify([self.crops[0]]).cells) == 1
        finally:
            self.quiet.clear()
        return {"fault": f"cancellation storm: {waves} waves of {IN_FLIGHT_LIMIT} calls cancelled or timed out",
                "codes": dict(codes), "in_flight_after": gauge, "served_afterwards": serving}

    # -- end ------------------------------------------------------------------------------------------
    def verify(self) -> dict:
        """Every acknowledged report must be readable after everything that happened."""
        lost = []
        with Client(self.address, timeout_s=30) as client:
            health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            for report_id in list(self.tally.acknowledged.values()):
                try:
                    if client.report(report_id=report_id).report_id != report_id:
                        lost.append(report_id)
                except grpc.RpcError:
                    lost.append(report_id)
        return {"lost": len(lost), "lost_ids": lost[:10],
                "healthy_at_end": health.status == health_pb2.HealthCheckResponse.SERVING}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except Exception:
                self.proc.kill()


def run_faults(duration_s: float, state_dir: Path, model_repository: Path) -> dict:
    run = FaultRun(state_dir, model_repository)
    started = time.monotonic()
    pool = ThreadPoolExecutor(run.workers)
    futures = [pool.submit(run._worker, i) for i in range(run.workers)]
    steps = [("kill_triton", 0.15), ("overload", 0.3), ("bad_input", 0.42), ("cancellation_storm", 0.52),
             ("kill_service", 0.65)]
    try:
        for name, at in steps:
            time.sleep(max(0.0, started + at * duration_s - time.monotonic()))
            print(f"[{time.monotonic() - started:6.1f}s] {name}", file=sys.stderr, flush=True)
            run.events.append(getattr(run, name)())
        time.sleep(max(0.0, started + duration_s - time.monotonic()))
    finally:
        run.stop.set()
        for f in futures:
            f.result()
        pool.shutdown()
    try:
        end = run.verify()
    finally:
        run.close()
    t = run.tally
    return {"duration_s": round(time.monotonic() - started, 1), "workers": run.workers,
            "crops_per_case": run.crops_per_case, "requests_sent": t.sent,
            "acknowledged": len(t.acknowledged), "retried": t.retried, **end,
            "errors_by_code": dict(t.errors), "faults": run.events,
            "note": "Research use only. Loopback; UNAVAILABLE/RESOURCE_EXHAUSTED answers were retried with the "
                    "same request id."}


def print_result(result: dict) -> None:
    print(f"requests sent {result['requests_sent']}, acknowledged {result['acknowledged']}, "
          f"retried {result['retried']}, LOST {result['lost']}, healthy at end {result['healthy_at_end']}")
    print("errors by code: " + (", ".join(f"{k} {v}" for k, v in sorted(result["errors_by_code"].items())) or "none"))
    for event in result["faults"]:
        extra = {k: v for k, v in event.items() if k != "fault"}
        print(f"  {event['fault']}: {json.dumps(extra)}")


def main_faults(duration_s: float, json_path: str | None, settings: Settings, state_dir: Path | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="marrowdx-faults-") as tmp:
        result = run_faults(duration_s, state_dir or Path(tmp), Path(settings.model_repository))
    command = "marrowdx faults --duration " + str(duration_s) + (f" --json {shlex.quote(json_path)}" if json_path else "")
    result["command"] = command
    print_result(result)
    print(f"reproduce: {command}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    # Every fault must also leave the service serving, and the storm must leave no call in flight.
    ok = (result["lost"] == 0 and result["healthy_at_end"]
          and all(e.get("served_afterwards", True) and e.get("in_flight_after", 0) == 0 for e in result["faults"]))
    return 0 if ok else 1
