"""What one field and one report cost each part of a scaled-out deployment,
measured on this machine (docs/scaling.md):

    python -m marrowdx.capacity --cases 60 --concurrency 4 --json docs/metrics/capacity.json

It starts a local PostgreSQL server, one tritonserver and one front service
(``marrowdx serve`` with ``--database postgresql://...`` and ``--triton-url``,
as a replica runs), all on loopback, sends one-field cases (DiagnoseCase:
detector, classifier, rules, a report committed to PostgreSQL), and reads:

- front CPU per field: the front process's CPU seconds over the run (/proc);
- Triton CPU per field: the tritonserver process tree's (server and
  Python-backend stubs), and per model Triton's own statistics (compute time
  per request and per item: per field for the detector, per crop for the
  classifier);
- database per report: the PostgreSQL process tree's CPU over the run, and
  the store's own save and lookup latency (``store/postgres.py``, fsync on)
  against SQLite's for reports of the size the service wrote.

Research use only. Loopback only; bounded in count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
from marrowdx.client import Client, image_message, list_images
from marrowdx.inference.launcher import start_triton
from marrowdx.procinfo import descendants, start_service_process
from marrowdx.settings import PROJECT_ROOT, Settings
from marrowdx.store.pglocal import LocalPostgres

FIELDS_DIR = PROJECT_ROOT / "samples" / "fields" / "images"
CROPS_DIR = PROJECT_ROOT / "samples" / "demo-case" / "crops"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def triton_stats(url: str) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        stats = client.get_inference_statistics(as_json=True)
    out = {}
    for model in stats.get("model_stats", []):
        s = model["inference_stats"]
        out[model["name"]] = {
            "requests": int(s["success"].get("count", 0)),
            "items": int(model.get("inference_count", 0)),
            "executions": int(model.get("execution_count", 0)),
            "compute_ns": sum(int(s[k].get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output")),
            "queue_ns": int(s["queue"].get("ns", 0)),
        }
    return out


def store_latency(database: str, sqlite_path: Path, payload_bytes: int, n: int, server_pids=None) -> dict:
    """Save then look up ``n`` reports of the service's size through each backend's store."""
    from marrowdx.store import open_stores

    payload = os.urandom(payload_bytes)
    result = {}
    for name, where in (("postgresql", database), ("sqlite", sqlite_path)):
        store, audit = open_stores(where)
        saves, lookups = [], []
        server = server_pids() if server_pids and name == "postgresql" else []
        cpu_before = cpu_seconds(server)
        try:
            for i in range(n):
                request_id = uuid.uuid4().hex
                t = time.perf_counter()
                store.save(f"rpt_bench_{request_id}", f"ACC{i}", request_id, "2026-01-01T00:00:00Z", payload,
                           owner="bench", case_digest="0" * 64, image_digests=b"F" + b"\1" * 32)
                saves.append(time.perf_counter() - t)
                t = time.perf_counter()
                store.by_request_id(request_id, "bench")
                lookups.append(time.perf_counter() - t)
        finally:
            store.close()
            audit.close()
        result[name] = {"save_ms_p50": round(1000 * statistics.median(saves), 2),
                        **({"server_cpu_ms_per_save_and_lookup": round(1000 * (cpu_seconds(server) - cpu_before) / n, 2)}
                           if server else {}),
                        "save_ms_p90": round(1000 * statistics.quantiles(saves, n=10)[-1], 2),
                        "lookup_ms_p50": round(1000 * statistics.median(lookups), 2)}
    return result


def measure(cases: int, concurrency: int, state_dir: Path, model_repository: Path, crop_cases: int = 6,
            crops_per_case: int = 32) -> dict:
    fields = [image_message(p) for p in list_images([FIELDS_DIR])]
    crops = [image_message(p) for p in list_images([CROPS_DIR])]
    pg = LocalPostgres().start()
    triton = front = None
    try:
        database = pg.create_database("marrowdx")
        triton = start_triton(model_repository, state_dir / "triton")
        front, address = start_service_process(state_dir / "front", model_repository,
                                               env={"MARROWDX_DATABASE": database, "MARROWDX_TRITON_URL": triton.url})
        with Client(address, timeout_s=120) as client:

            def case(i: int, of_crops: bool) -> tuple[int, int]:
                info = pb.CaseInfo(case_id=f"cap-{i}", request_id=uuid.uuid4().hex,
                                   specimen_type=pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE)
                if of_crops:
                    chosen = [crops[(i * crops_per_case + k) % len(crops)] for k in range(crops_per_case)]
                    report = client.diagnose(info, crops=chosen)
                else:
                    report = client.diagnose(info, fields=[fields[i % len(fields)]])
                return report.cells_counted, len(report.evidence)

            def phase(n: int, of_crops: bool, concurrency: int) -> dict:
                tree = descendants([triton.process.pid])
                pids = {"front": [front.pid], "triton": tree, "postgresql": descendants([pg.process.pid]),
                        # The Python backend runs each model instance in a stub process of its own.
                        "detector": [p for p in tree if "/detector/" in _cmdline(p)],
                        "classifier": [p for p in tree if "/classifier/" in _cmdline(p)]}
                before = {k: cpu_seconds(v) for k, v in pids.items()}
                stats_before = triton_stats(triton.url)
                started = time.perf_counter()
                with ThreadPoolExecutor(concurrency) as pool:
                    counted = list(pool.map(lambda i: case(i, of_crops), range(n)))
                wall = time.perf_counter() - started
                pids["postgresql"] = descendants([pg.process.pid])  # backends started meanwhile
                after = {k: cpu_seconds(v) for k, v in pids.items()}
                stats_after = triton_stats(triton.url)
                per_model = {}
                for name in ("detector", "classifier"):
                    d = {k: stats_after[name][k] - stats_before[name][k] for k in stats_after[name]}
                    if not d["requests"]:
                        continue
                    per_model[name] = {
                        "requests": d["requests"], "items": d["items"],
                        "cpu_ms_per_item": round(1000 * (after[name] - before[name]) / d["items"], 2),
                        "compute_ms_per_item": round(d["compute_ns"] / d["items"] / 1e6, 2),
                        "queue_ms_per_request": round(d["queue_ns"] / d["requests"] / 1e6, 2)}
                cpu = {k: round(1000 * (after[k] - before[k]) / n, 2) for k in after}
                return {"cases": n, "wall_s": round(wall, 2), "cases_per_s": round(n / wall, 2),
                        "counted_cells_per_case": round(sum(c for c, _ in counted) / n, 2),
                        "cpu_ms_per_case": {k: cpu[k] for k in ("front", "triton", "postgresql")
                                            if k != "postgresql" or not of_crops},
                        "triton_per_model": per_model}

            for i in range(concurrency):  # warm up: first calls load lazily
                case(i, False)
            one_field = phase(cases, False, concurrency)
            # One at a time: a case's crops already go to Triton in concurrent requests, and more
            # would only queue them (past the model timeout on a busy 2-core machine).
            of_crops = phase(crop_cases, True, 1)
            of_crops["crops_per_case"] = crops_per_case
        import psycopg

        with psycopg.connect(database) as db:
            payload_bytes = int(db.execute("SELECT avg(length(payload)) FROM reports").fetchone()[0])
        return {
            "concurrency": concurrency,
            "one_field_cases": one_field,
            "crop_cases": of_crops,
            "report_payload_bytes_mean": payload_bytes,
            "store_latency": store_latency(pg.url_for("postgres"), state_dir / "bench.sqlite3", payload_bytes, 200,
                                           lambda: descendants([pg.process.pid])),
            "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        }
    finally:
        if front is not None and front.poll() is None:
            front.terminate()
            front.wait(60)
        if triton is not None:
            triton.stop()
        pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="cost per field and per report of each part (docs/scaling.md)")
    parser.add_argument("--cases", type=int, default=60, help="one-field cases to send (one report each)")
    parser.add_argument("--crop-cases", type=int, default=6, help="cases of single-cell crops (classifier cost)")
    parser.add_argument("--crops-per-case", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="marrowdx-capacity-") as tmp:
        result = measure(args.cases, args.concurrency, Path(tmp), Settings.from_env().model_repository, args.crop_cases,
                         args.crops_per_case)
    result["command"] = "python -m marrowdx.capacity " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
