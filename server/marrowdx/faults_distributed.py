"""`marrowdx faults --distributed`: the scaled-out setup under load, with a
front replica and a Triton server killed, on loopback, bounded in time.

It starts a real PostgreSQL server (store/pglocal.py), two tritonservers and
two front replicas (``marrowdx serve`` processes sharing that database, each
balancing over both Triton servers: inference/pool.py). Clients reach the
fronts through one channel with client-side round robin over both
(transport.py), sending small cases with unique request ids; a case answered
UNAVAILABLE/RESOURCE_EXHAUSTED/DEADLINE_EXCEEDED, or cut by a dying replica,
is resent with the same request id and so reaches the other replica.
Meanwhile it kills one front replica with SIGKILL (not restarted) and then one
tritonserver with SIGKILL (not restarted).

At the end, from the surviving replica alone: every acknowledged report is
read back (``lost`` must be 0); a sample of acknowledged requests is sent
again and each must be answered with its original report (``retry_mismatch``
0), including one first answered by the replica that was killed; and the
database is asked directly whether any request id was stored twice
(``duplicated`` 0) or stored under another report than the one acknowledged.
Recovery time is from a kill to the end of the first case that started after
it and succeeded (so it includes one whole case); the first answer is the
first success of any case after the kill (clients were answered again).
Research use only.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client, image_message, list_images
from marrowdx.faults import CROPS_DIR, RETRYABLE, Tally
from marrowdx.inference.launcher import ManagedTriton, start_triton
from marrowdx.procinfo import start_service_process
from marrowdx.settings import Settings
from marrowdx.store.pglocal import LocalPostgres

IN_FLIGHT_LIMIT = 16


class DistributedRun:
    def __init__(self, state_dir: Path, model_repository: Path, workers: int = 3, crops_per_case: int = 6) -> None:
        self.state_dir = state_dir
        self.crops = [image_message(p) for p in list_images([CROPS_DIR])[:64]]
        self.workers = workers
        self.crops_per_case = crops_per_case
        self.tally = Tally()
        self.cases: dict[str, tuple[pb.CaseInfo, list[pb.Image]]] = {}  # request id -> what was sent
        self.stop = threading.Event()
        self.events: list[dict] = []
        self.started_s: dict[str, float] = {}
        self.pg: LocalPostgres | None = None
        self.tritons: list[ManagedTriton] = []
        self.fronts: list = []
        self.addresses: list[str] = []
        try:
            self._start(model_repository)
        except BaseException:
            self.close()
            raise

    def _start(self, model_repository: Path) -> None:
        t = time.monotonic()
        self.pg = LocalPostgres().start()  # fsync on: durability is what is under test
        self.pg_root = self.pg.root
        self.database = self.pg.create_database("marrowdx")
        self.started_s["postgresql"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            starting = [pool.submit(start_triton, model_repository, self.state_dir / f"triton-{i}") for i in range(2)]
            for future in starting:
                try:
                    self.tritons.append(future.result())
                except BaseException:
                    for other in starting:  # stop the one that did start
                        if other is not future and other.exception() is None:
                            other.result().stop()
                    raise
        self.started_s["two_tritonservers"] = round(time.monotonic() - t, 2)
        env = {"MARROWDX_DATABASE": self.database, "MARROWDX_TRITON_URL": ",".join(t.url for t in self.tritons),
               "MARROWDX_MAX_IN_FLIGHT": str(IN_FLIGHT_LIMIT)}
        t = time.monotonic()
        for i in range(2):
            proc, address = start_service_process(self.state_dir / f"front-{i}", model_repository, env=env)
            self.fronts.append(proc)
            self.addresses.append(address)
        self.started_s["two_fronts"] = round(time.monotonic() - t, 2)
        self.balanced = ",".join(self.addresses)  # one channel, round robin over both replicas

    # -- load -------------------------------------------------------------------------------------
    def _case(self, worker: int, n: int) -> tuple[pb.CaseInfo, list[pb.Image]]:
        start = (worker * 7 + n * self.crops_per_case) % (len(self.crops) - self.crops_per_case)
        info = pb.CaseInfo(case_id=f"dist-{worker}-{n}", request_id=uuid.uuid4().hex,
                           specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE)
        return info, self.crops[start:start + self.crops_per_case]

    def _worker(self, worker: int) -> None:
        n = 0
        with Client(self.balanced, timeout_s=30) as client:
            while not self.stop.is_set():
                info, crops = self._case(worker, n)
                n += 1
                self._submit(client, info, crops)

    def _submit(self, client: Client, info: pb.CaseInfo, crops: list[pb.Image], retry: bool = False) -> None:
        attempt = int(retry)
        while not self.stop.is_set():
            with self.tally.lock:
                self.tally.sent += 1
                self.tally.retried += attempt > 0
            started = time.monotonic()
            try:
                report = client.diagnose(info, crops=crops)
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
                self.cases[info.request_id] = (info, crops)
                self.tally.successes.append((started, time.monotonic()))
            return

    def _wait_recovered(self, since: float, timeout_s: float = 120.0) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = self.tally.first_success_started_after(since)
            if done is not None:
                return round(done - since, 2)
            time.sleep(0.1)
        return None

    def _first_answer(self, since: float) -> float | None:
        """Seconds from ``since`` to the next successful answer of any case (one already in flight
        on the surviving parts included): how long clients went without an answer."""
        with self.tally.lock:
            ends = [end for _, end in self.tally.successes if end >= since]
        return round(min(ends) - since, 2) if ends else None

    # -- faults -----------------------------------------------------------------------------------
    def kill_front(self) -> dict:
        """A case answered by replica 0 just before it dies is the cross-replica retry probe."""
        info, crops = self._case(99, 0)
        with Client(self.addresses[0], timeout_s=30) as client:
            report = client.diagnose(info, crops=crops)
        with self.tally.lock:
            self.tally.sent += 1
            self.tally.acknowledged[info.request_id] = report.report_id
            self.cases[info.request_id] = (info, crops)
        self.probe = info.request_id
        # A case in flight on replica 0 when it dies: it fails, and its resend (same request id, same
        # balanced channel) can only reach replica 1.
        cut_info, _ = self._case(98, 0)
        cut_crops = self.crops[:12]  # small: on 2 CPU cores a big case would outlast the 30 s deadline
        cut: dict = {}

        def in_flight_case() -> None:
            with Client(self.addresses[0], timeout_s=60) as client:
                try:
                    client.diagnose(cut_info, crops=cut_crops)
                    cut["code"] = "OK"
                except grpc.RpcError as exc:
                    cut["code"] = exc.code().name

        sender = threading.Thread(target=in_flight_case)
        errors_before = sum(self.tally.errors.values())
        sender.start()
        time.sleep(0.5)
        t = time.monotonic()
        self.fronts[0].send_signal(signal.SIGKILL)
        self.fronts[0].wait()
        sender.join(60)
        with self.tally.lock:
            self.tally.sent += 1
            if cut["code"] != "OK":
                self.tally.errors[cut["code"]] += 1
        if cut["code"] != "OK":
            with Client(self.balanced, timeout_s=60) as client:
                self._submit(client, cut_info, cut_crops, retry=True)
        recovery = self._wait_recovered(t)
        return {"fault": "kill -9 front replica 0 (not restarted)", "recovery_s": recovery,
                "first_answer_s": self._first_answer(t),
                "case_in_flight_on_it": cut["code"],
                "its_resend_acknowledged": cut_info.request_id in self.tally.acknowledged,
                "errors_seen_by_clients": sum(self.tally.errors.values()) - errors_before}

    def kill_triton(self) -> dict:
        errors_before = sum(self.tally.errors.values())
        t = time.monotonic()
        os.killpg(self.tritons[0].process.pid, signal.SIGKILL)  # its own session: the backend stubs too
        self.tritons[0].process.wait()
        recovery = self._wait_recovered(t)
        return {"fault": "kill -9 tritonserver 0 (not restarted)", "recovery_s": recovery,
                "first_answer_s": self._first_answer(t),
                "errors_seen_by_clients": sum(self.tally.errors.values()) - errors_before}

    # -- end --------------------------------------------------------------------------------------
    def verify(self, resend: int = 20) -> dict:
        """From the surviving replica alone, and from the database itself."""
        import psycopg

        survivor = self.addresses[1]
        lost, mismatched = [], []
        with Client(survivor, timeout_s=30) as client:
            health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            for report_id in list(self.tally.acknowledged.values()):
                try:
                    if client.report(report_id=report_id).report_id != report_id:
                        lost.append(report_id)
                except grpc.RpcError:
                    lost.append(report_id)
            ids = list(self.cases)
            sample = [self.probe] + ids[:: max(1, len(ids) // resend)][:resend]
            for request_id in dict.fromkeys(sample):
                info, crops = self.cases[request_id]
                try:
                    again = client.diagnose(info, crops=crops).report_id
                except grpc.RpcError as exc:
                    again = exc.code().name
                if again != self.tally.acknowledged[request_id]:
                    mismatched.append(request_id)
        with psycopg.connect(self.database) as db:
            duplicated = db.execute("SELECT count(*) FROM (SELECT 1 FROM reports WHERE request_id IS NOT NULL "
                                    "GROUP BY owner, request_id HAVING count(*) > 1) d").fetchone()[0]
            stored = dict(db.execute("SELECT request_id, report_id FROM reports WHERE request_id IS NOT NULL"))
        other_report = [r for r, rid in self.tally.acknowledged.items() if stored.get(r) != rid]
        return {"lost": len(lost), "lost_ids": lost[:10], "duplicated": duplicated,
                "acknowledged_but_stored_otherwise": len(other_report), "stored_rows": len(stored),
                "resent": len(set(sample)), "retry_mismatch": len(mismatched),
                "cross_replica_probe_matched": self.probe not in mismatched,
                "healthy_at_end": health.status == health_pb2.HealthCheckResponse.SERVING}

    def close(self) -> None:
        for proc in self.fronts:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except Exception:
                    proc.kill()
                    proc.wait()
        for triton in self.tritons:
            triton.stop()
        if self.pg is not None:
            self.pg.stop()


def run_distributed(duration_s: float, state_dir: Path, model_repository: Path) -> dict:
    run = DistributedRun(state_dir, model_repository)
    started = time.monotonic()
    pool = ThreadPoolExecutor(run.workers)
    futures = [pool.submit(run._worker, i) for i in range(run.workers)]
    try:
        for name, at in (("kill_front", 0.3), ("kill_triton", 0.6)):
            time.sleep(max(0.0, started + at * duration_s - time.monotonic()))
            print(f"[{time.monotonic() - started:6.1f}s] {name}", file=sys.stderr, flush=True)
            run.events.append(getattr(run, name)())
        time.sleep(max(0.0, started + duration_s - time.monotonic()))
        run.stop.set()
        for f in futures:
            f.result()
        end = run.verify()
    finally:
        run.stop.set()
        pool.shutdown()
        run.close()
    t = run.tally
    took = sorted(end - start for start, end in t.successes)
    return {"duration_s": round(time.monotonic() - started, 1), "workers": run.workers,
            "case_seconds_p50": round(took[len(took) // 2], 2) if took else None,
            "crops_per_case": run.crops_per_case, "start_up_s": run.started_s, "postgres_dir": str(run.pg_root),
            "requests_sent": t.sent,
            "acknowledged": len(t.acknowledged), "retried": t.retried, **end, "errors_by_code": dict(t.errors),
            "faults": run.events,
            "note": "Research use only. Loopback: PostgreSQL, 2 tritonservers, 2 front replicas, clients round "
                    "robin over both; failed cases resent with the same request id."}


def main_distributed(duration_s: float, json_path: str | None, settings: Settings, state_dir: Path | None = None) -> int:
    with tempfile.TemporaryDirectory(prefix="marrowdx-dist-") as tmp:
        result = run_distributed(duration_s, state_dir or Path(tmp), Path(settings.model_repository))
    command = f"marrowdx faults --distributed --duration {duration_s}" + (
        f" --json {shlex.quote(json_path)}" if json_path else "")
    result["command"] = command
    print(f"requests sent {result['requests_sent']}, acknowledged {result['acknowledged']}, retried "
          f"{result['retried']}, LOST {result['lost']}, DUPLICATED {result['duplicated']}, retry mismatches "
          f"{result['retry_mismatch']} of {result['resent']}, healthy at end {result['healthy_at_end']}")
    print("errors by code: " + (", ".join(f"{k} {v}" for k, v in sorted(result["errors_by_code"].items())) or "none"))
    for event in result["faults"]:
        print(f"  {event['fault']}: " + json.dumps({k: v for k, v in event.items() if k != "fault"}))
    print(f"reproduce: {command}")
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2))
    ok = (result["lost"] == result["duplicated"] == result["retry_mismatch"] == 0
          and result["acknowledged_but_stored_otherwise"] == 0 and result["healthy_at_end"]
          and all(e["recovery_s"] is not None for e in result["faults"]))
    return 0 if ok else 1


__all__ = ["main_distributed", "run_distributed"]
