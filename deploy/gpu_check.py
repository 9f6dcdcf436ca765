"""GPU check: the committed models in process on an NVIDIA GPU (issue #5, item 4).

Loads the TorchScript files that the GPU Triton variant serves
(``model_repository/variants/gpu-libtorch``), and the same weights in eager
PyTorch (``training/models.py``) for fp16 autocast; runs them on real sample
inputs (the three sample fields, letterboxed; the 400 demo-case crops) and
prints, with the device name: throughput and latency per batch size, fp32
TorchScript vs eager fp32 vs eager fp16, agreement with the CPU outputs, and
whether TensorRT is installed. Needs only torch, numpy and pillow.

    python deploy/gpu_check.py [--json OUT] [--seconds 2]

Research use only.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from training.models import CellClassifier, CellDetector, ClassifierEnsemble, DihedralAverage  # noqa: E402

DETECTOR_INPUT = 320


def classifier_param(key: str) -> str | None:
    """A parameter of the exported classifier's config.pbtxt."""
    text = (ROOT / "model_repository" / "classifier" / "config.pbtxt").read_text()
    found = re.search(rf'key: "{key}" value {{ string_value: "([^"]*)"', text)
    return found.group(1) if found else None


CROP = int(classifier_param("crop_size"))  # the classifier's input side, as exported


def letterbox(path: Path) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    scale = DETECTOR_INPUT / max(image.size)
    resized = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (DETECTOR_INPUT, DETECTOR_INPUT), (255, 255, 255))
    canvas.paste(resized, (0, 0))
    return np.asarray(canvas)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    fields = [letterbox(p) for p in sorted((ROOT / "samples" / "fields" / "images").glob("*.jpg"))]
    crops = [np.asarray(Image.open(p).convert("RGB").resize((CROP, CROP), Image.BILINEAR))
             for p in sorted((ROOT / "samples" / "demo-case" / "crops").glob("*.jpg"))]
    return torch.from_numpy(np.stack(fields)), torch.from_numpy(np.stack(crops))


def member_of(state: dict[str, torch.Tensor], prefix: str) -> CellClassifier:
    """A classifier of the width and class count its traced weights have."""
    return CellClassifier(state[f"{prefix}head.weight"].shape[0], width=state[f"{prefix}features.0.0.weight"].shape[0])


def eager_from(scripted: torch.jit.ScriptModule, kind: str) -> torch.nn.Module:
    state = scripted.state_dict()
    if kind == "detector":
        model = CellDetector(state["heatmap.1.weight"].shape[0])
    elif any(k.startswith("members.") for k in state):
        sizes = [int(v) for v in classifier_param("ensemble_crop_sizes").split(",")]
        model = ClassifierEnsemble([member_of(state, f"members.{i}.classifier.") for i in range(len(sizes))], sizes)
    else:
        model = DihedralAverage(member_of(state, "classifier."))
    # A traced DihedralAverage also lists its temperature and class_bias properties at
    # the top level; graphs from before class_bias keep the model's zero bias.
    defaults = model.state_dict()
    model.load_state_dict({**defaults, **{k: v for k, v in state.items() if k in defaults}})
    return model.eval()


def batch_of(pool: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // len(pool))
    return pool.repeat(reps, 1, 1, 1)[:n].contiguous()


@torch.no_grad()
def timed(fn, x: torch.Tensor, seconds: float, device: torch.device) -> dict:
    for _ in range(3):
        fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    return {"batch": len(x), "median_ms": round(median * 1e3, 3), "items_per_s": round(len(x) / median, 1),
            "runs": len(times)}


def first_output(out):
    """What agreement is measured on: class probabilities, or the detector's scores sorted
    (boxes of near-equal peaks can swap places between runtimes without any real change)."""
    if isinstance(out, tuple):
        return torch.sort(out[1].float(), dim=1, descending=True).values
    return out


@torch.no_grad()
def agreement(fn, x_cpu: torch.Tensor, reference: torch.Tensor, device: torch.device) -> float:
    out = first_output(fn(x_cpu.to(device))).float().cpu()
    return float((out - reference).abs().max())


def eager_from_checkpoint(path: Path, kind: str) -> torch.nn.Module:
    state = torch.load(path, map_location="cpu")
    if kind == "detector":
        model = CellDetector(state["heatmap.1.weight"].shape[0])
    else:
        model = CellClassifier(state["head.weight"].shape[0])
    model.load_state_dict(state)
    return (model if kind == "detector" else DihedralAverage(model)).eval()


def run(seconds: float, checkpoints: Path | None = None) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fields, crops = inputs()
    result: dict = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
                    "torch": torch.__version__, "python": platform.python_version(),
                    "inputs": {"fields": len(fields), "crops": len(crops)}, "models": {}}
    try:
        import tensorrt  # noqa: F401

        result["tensorrt"] = f"installed ({tensorrt.__version__})"
    except ImportError:
        result["tensorrt"] = "not installed (its wheels are gigabytes; cannot be carried to this machine)"
    plans = {"detector": (fields, [1, 16, 64]), "classifier": (crops, [1, 64, 256, 1024])}
    if device.type == "cpu":  # a dry run of the script without a GPU: small batches only
        plans = {"detector": (fields, [1, 4]), "classifier": (crops[:32], [1, 16])}
    for kind, (pool, batches) in plans.items():
        path = ROOT / "model_repository" / "variants" / "gpu-libtorch" / kind / "1" / "model.pt"
        variants = {}
        try:
            scripted_cpu = torch.jit.load(str(path), map_location="cpu").eval()
            eager_cpu = eager_from(scripted_cpu, kind)
            variants["torchscript_fp32"] = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # a TorchScript file from a newer torch may not load in an older one
            result.setdefault("load_errors", {})[kind] = f"{type(exc).__name__}: {str(exc)[:200]}"
            if checkpoints is None:
                raise
            eager_cpu = eager_from_checkpoint(checkpoints / kind / "best.pt", kind)
        with torch.no_grad():
            reference = first_output(eager_cpu(pool)).float()
        eager = eager_cpu.to(device)

        def fp16(x, model=eager):
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                return model(x)

        variants.update({"eager_fp32": eager, "eager_fp16_autocast": fp16})
        entry: dict = {}
        for name, fn in variants.items():
            entry[name] = {"max_abs_diff_vs_cpu": agreement(fn, pool, reference, device),
                           "by_batch": [timed(fn, batch_of(pool, b).to(device), seconds, device) for b in batches]}
            best = max(entry[name]["by_batch"], key=lambda r: r["items_per_s"])
            print(f"{kind:10s} {name:20s} max|diff| vs CPU {entry[name]['max_abs_diff_vs_cpu']:.2e}; "
                  + ", ".join(f"b{r['batch']}: {r['items_per_s']:.0f}/s ({r['median_ms']:.2f} ms)" for r in entry[name]["by_batch"])
                  + f"; best {best['items_per_s']:.0f}/s", flush=True)
        result["models"][kind] = entry
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per point")
    parser.add_argument("--checkpoints", type=Path, help="DIR/{detector,classifier}/best.pt if TorchScript will not load")
    args = parser.parse_args()
    result = run(args.seconds, args.checkpoints)
    print(f"device: {result['device']}; torch {result['torch']}; TensorRT: {result['tensorrt']}")
    result["command"] = "python deploy/gpu_check.py" + (f" --json {args.json}" if args.json else "")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
