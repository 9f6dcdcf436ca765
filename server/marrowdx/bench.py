"""`marrowdx bench`: in one run, on the same images, side by side:

1. the models alone, in process (onnxruntime, the limit on this machine);
2. the models through Triton directly (tritonclient, same inputs and batching);
3. the whole service through gRPC (the load generator),

as fields/s and cells/s with the ratio to the limit, latency of one field at
concurrency 1 and the overhead over model time, throughput as concurrency
grows, peak RSS of the front service and of Triton, and where one field's
time goes (from the service's own timings). Prints the command that
reproduces it. Research use only; timings on shared machines are noisy, so
compare the ratios of one run, not figures across runs.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from marrowdx.client import Client, image_message, list_images
from marrowdx.domain.cells import Exclusion, Thresholds, geometric_exclusions, kept_detections
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.imaging.crops import square_crop
from marrowdx.imaging.decode import Limits, decode_rgb
from marrowdx.imaging.letterbox import letterbox
from marrowdx.loadgen import LoadConfig, run_load
from marrowdx.procinfo import children, descendants, peak_rss_mb, rss_mb, start_service_process
from marrowdx.settings import PROJECT_ROOT, Settings

DETECTOR_INPUT = 320


NUCLEATED = default_taxonomy().detector_categories.index("nucleated")


def cells_to_classify(rgb, frame, boxes: np.ndarray, scores: np.ndarray, categories: np.ndarray,
                      thresholds: Thresholds) -> np.ndarray:
    """Boxes (original pixels) of the countable nucleated cells: the service's own selection,
    so every path of the benchmark classifies the same cells."""
    keep = kept_detections(boxes, scores, thresholds)
    original = frame.to_original(boxes[keep])
    nucleated = categories[keep] == NUCLEATED
    exclusions = geometric_exclusions(original, nucleated, rgb.width, rgb.height, thresholds)
    return original[[i for i in range(len(original)) if nucleated[i] and exclusions[i] is Exclusion.NONE]]


class InProcessModels:
    """The exported ONNX graphs in this process, as the Python backend runs them."""

    def __init__(self, repo: Path, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.detector = ort.InferenceSession(str(repo / "detector/1/model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.classifier = ort.InferenceSession(str(repo / "classifier/1/model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.crop_size = int(self.classifier.get_inputs()[0].shape[1])
        self.thresholds = Thresholds()
        self.limits = Limits(10**9, 10**9, 1)

    def field(self, data: bytes) -> tuple[int, float]:
        """Full field pipeline in process; returns (nucleated cells classified, model seconds)."""
        rgb = decode_rgb(data, self.limits)
        framed, frame = letterbox(rgb, DETECTOR_INPUT)
        t = time.perf_counter()
        boxes, scores, cats = self.detector.run(["BOXES", "SCORES", "CATEGORIES"], {"IMAGE": framed[None]})
        model_s = time.perf_counter() - t
        chosen = cells_to_classify(rgb, frame, boxes[0], scores[0], cats[0], self.thresholds)
        if len(chosen):
            crops = np.stack([square_crop(rgb, b, self.crop_size) for b in chosen])
            t = time.perf_counter()
            self.classifier.run(["PROBS"], {"CROPS": crops})
            model_s += time.perf_counter() - t
        return len(chosen), model_s


_WORKER: InProcessModels | None = None


def _init_worker(repo: str) -> None:
    global _WORKER
    _WORKER = InProcessModels(Path(repo), threads=1)


def _worker_loop(args: tuple[list[bytes], int, float]) -> tuple[int, int, float]:
    images, offset, seconds = args
    n = cells = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        cells += _WORKER.field(images[(offset + n) % len(images)])[0]
        n += 1
    return n, cells, time.perf_counter() - start


def measure_in_process(repo: Path, images: list[bytes], workers: int, seconds: float) -> dict:
    """Fields/s with one single-threaded worker *process* per core (no GIL between them:
    the most this machine does without any serving), and model time per field at 1."""
    single = InProcessModels(repo, threads=1)
    model_ms = 1000 * float(np.median([single.field(d)[1] for d in images * 3]))
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(str(repo),)) as pool:
        list(pool.map(_worker_loop, [(images, k, 1.0) for k in range(workers)]))  # warm-up
        results = list(pool.map(_worker_loop, [(images, k, seconds) for k in range(workers)]))
    done = sum(r[0] for r in results)
    cells = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return {"fields_per_s": done / elapsed, "cells_per_s": cells / elapsed, "model_ms_per_field": model_ms,
            "workers": workers, "kind": "processes"}


def measure_triton_direct(url: str, images: list[bytes], concurrency: int, seconds: float) -> dict:
    """Same pre-processing in the client, models on Triton (tritonclient, concurrent requests)."""
    import tritonclient.grpc.aio as grpcclient

    prepared = []
    local = InProcessModels.__new__(InProcessModels)
    local.limits, local.thresholds = Limits(10**9, 10**9, 1), Thresholds()
    for data in images:
        rgb = decode_rgb(data, local.limits)
        prepared.append((rgb, *letterbox(rgb, DETECTOR_INPUT)))

    async def run() -> dict:
        client = grpcclient.InferenceServerClient(url)
        crop_size = int((await client.get_model_metadata("classifier")).inputs[0].shape[1])
        done = cells = 0
        deadline = time.perf_counter() + seconds

        async def infer(model, name, array, outputs):
            tensor = grpcclient.InferInput(name, list(array.shape), "UINT8")
            tensor.set_data_from_numpy(array)
            result = await client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
            return [result.as_numpy(o) for o in outputs]

        async def worker(offset: int) -> None:
            nonlocal done, cells
            i = offset
            while time.perf_counter() < deadline:
                rgb, framed, frame = prepared[i % len(prepared)]
                boxes, scores, cats = await infer("detector", "IMAGE", framed[None], ["BOXES", "SCORES", "CATEGORIES"])
                chosen = cells_to_classify(rgb, frame, boxes[0], scores[0], cats[0], local.thresholds)
                if len(chosen):
                    crops = np.stack([square_crop(rgb, b, crop_size) for b in chosen])
                    await infer("classifier", "CROPS", crops, ["PROBS"])
                done += 1
                cells += len(chosen)
                i += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
        await client.close()
        return {"fields_per_s": done / elapsed, "cells_per_s": cells / elapsed, "concurrency": concurrency}

    return asyncio.run(run())


def run_bench(images_paths: list[Path], quick: bool, soak_s: float, settings: Settings) -> dict:
    images = [p.read_bytes() for p in images_paths]
    cores = os.cpu_count() or 1
    seconds = 5.0 if quick else 20.0
    sweep = [1, 4] if quick else [1, 2, 4, 8, 16, 32]
    repo = Path(settings.model_repository)
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": cores,
                                "python": platform.python_version()},
                    "images": len(images), "seconds_per_point": seconds}

    limit = measure_in_process(repo, images, workers=cores, seconds=seconds)
    result["in_process"] = limit
    state = Path(settings.state_dir) / "bench"
    proc, address = start_service_process(state, settings.model_repository)
    try:
        triton_pids = children(proc.pid)
        # The managed Triton's gRPC port is in its command line.
        url = next((arg.split("=", 1)[1] for pid in triton_pids
                    for arg in Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                    if arg.startswith("--grpc-port=")), None)
        if url:
            result["triton_direct"] = measure_triton_direct(f"127.0.0.1:{url}", images, concurrency=cores * 2,
                                                            seconds=seconds)
        points = []
        for c in sweep:
            load = asyncio.run(run_load(LoadConfig(address, "analyze", images, concurrency=c, duration_s=seconds,
                                                   progress=False))).summary()
            points.append({"concurrency": c, "fields_per_s": load["items_per_s"], "cells_per_s": load["cells_per_s"],
                           "p50_ms": load["latency_ms"]["p50"], "p99_ms": load["latency_ms"]["p99"],
                           "errors": load["errors"]})
        result["service_sweep"] = points
        with Client(address) as client:
            timings = [client.analyze(image_message(p)).timings
                       for p in images_paths[: min(len(images_paths), 10)]]
        result["field_time_ms"] = {k: float(np.mean([getattr(t, k) for t in timings]))
                                   for k in ("decode_ms", "detect_ms", "classify_ms", "total_ms")}
        if soak_s > 0:
            result["soak"] = soak(address, images, proc.pid, soak_s, concurrency=cores * 4)
        result["front_rss_mb"] = peak_rss_mb(proc.pid)
        # tritonserver plus its Python-backend stub processes (one per model instance).
        result["triton_rss_mb"] = sum(peak_rss_mb(p) for p in descendants(triton_pids))
    finally:
        proc.terminate()
        proc.wait(30)
    best = max(points, key=lambda p: p["fields_per_s"])
    c1 = next(p for p in points if p["concurrency"] == 1)
    result.update({
        "limit_fields_per_s": limit["fields_per_s"],
        "service_fields_per_s": best["fields_per_s"],
        "ratio": best["fields_per_s"] / limit["fields_per_s"] if limit["fields_per_s"] else 0.0,
        "overhead_ms_c1": c1["p50_ms"] - limit["model_ms_per_field"],
    })
    if "triton_direct" in result:
        result["triton_direct"]["ratio"] = result["triton_direct"]["fields_per_s"] / limit["fields_per_s"]
    return result


def soak(address: str, images: list[bytes], pid: int, seconds: float, concurrency: int) -> dict:
    """Saturating load for ``seconds`` while sampling the front service's RSS."""
    samples: list[tuple[float, float]] = []

    async def run() -> dict:
        task = asyncio.create_task(run_load(LoadConfig(address, "analyze", images, concurrency=concurrency,
                                                       duration_s=seconds, progress=False)))
        start = time.perf_counter()
        while not task.done():
            samples.append((time.perf_counter() - start, rss_mb(pid)))
            await asyncio.sleep(5)
        return (await task).summary()

    load = asyncio.run(run())
    t = np.array([s[0] for s in samples])
    r = np.array([s[1] for s in samples])
    half = len(r) // 2
    slope = float(np.polyfit(t[half:], r[half:], 1)[0] * 60) if half >= 2 else 0.0
    return {"seconds": seconds, "concurrency": concurrency, "fields_per_s": load["items_per_s"],
            "errors": load["errors"], "rss_mb_first": float(r[0]), "rss_mb_last": float(r[-1]),
            "rss_mb_max": float(r.max()), "rss_mb_per_min_second_half": slope,
            "rss_samples": [[round(a, 1), round(b, 1)] for a, b in samples]}


def print_report(result: dict, command: str) -> None:
    lim = result["in_process"]
    print(f"machine: {result['machine']}")
    print(f"in process (limit): {lim['fields_per_s']:.2f} fields/s, {lim['cells_per_s']:.1f} cells/s "
          f"({lim['workers']} worker processes); model time {lim['model_ms_per_field']:.1f} ms/field (median)")
    if "triton_direct" in result:
        td = result["triton_direct"]
        print(f"Triton direct:      {td['fields_per_s']:.2f} fields/s ({td['ratio']:.2f}x limit)")
    print(f"{'service c':>10}{'fields/s':>10}{'cells/s':>10}{'x limit':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for p in result["service_sweep"]:
        print(f"{p['concurrency']:>10}{p['fields_per_s']:>10.2f}{p['cells_per_s']:>10.1f}"
              f"{p['fields_per_s'] / lim['fields_per_s']:>9.2f}{p['p50_ms']:>9.1f}{p['p99_ms']:>9.1f}"
              + (f"  errors {p['errors']}" if p["errors"] else ""))
    ft = result["field_time_ms"]
    print(f"one field (service timings, ms): decode+crop {ft['decode_ms']:.1f}, detector {ft['detect_ms']:.1f}, "
          f"classifier {ft['classify_ms']:.1f}, total in service {ft['total_ms']:.1f}")
    print(f"ratio {result['ratio']:.2f}, overhead at c=1 {result['overhead_ms_c1']:.1f} ms, "
          f"front RSS peak {result['front_rss_mb']:.0f} MB, Triton RSS peak {result['triton_rss_mb']:.0f} MB")
    if "soak" in result:
        s = result["soak"]
        print(f"soak {s['seconds']:.0f}s at c={s['concurrency']}: {s['fields_per_s']:.2f} fields/s, front RSS "
              f"{s['rss_mb_first']:.0f} -> {s['rss_mb_last']:.0f} MB (max {s['rss_mb_max']:.0f}), "
              f"{s['rss_mb_per_min_second_half']:+.2f} MB/min over the second half")
    print(f"reproduce: {command}")


def main_bench(images: list[str], quick: bool, soak_s: float, json_out: str | None, settings: Settings) -> int:
    paths = list_images(images or [PROJECT_ROOT / "samples" / "fields" / "images"])
    result = run_bench(paths, quick, soak_s, settings)
    command = "marrowdx " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result["command"] = command
    print_report(result, command)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    return 0
