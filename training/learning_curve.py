"""Compare classifier runs at the same step from their per-epoch logs: a
learning curve (runs on shares of the train crops) or any set of runs stopped
at different points.

    python -m training.learning_curve docs/metrics/classifier-gpu4-*_experiment_log.jsonl \\
        docs/metrics/classifier-gpu3-w44-128-matek2-seed2_experiment_log.jsonl

Each run is read up to the last epoch every run reached (the smallest final
step), and scored as the mean of its last ``--epochs`` epochs there: one
epoch's val figure swings by about a point, and the best epoch flatters.
One view, on the val split the logs were written with; model selection only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FIGURES = ("val_matek_accuracy", "val_matek_macro_f1", "val_pbc_accuracy")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def at_common_step(logs: dict[str, list[dict]], epochs: int = 5) -> dict:
    """{"step": the common step, "runs": {name: {figure: mean of its last epochs up to that step}}}."""
    if not logs or any(not rows for rows in logs.values()):
        raise ValueError("every run needs at least one logged epoch")
    step = min(rows[-1]["step"] for rows in logs.values())
    runs = {}
    for name, rows in logs.items():
        window = [r for r in rows if r["step"] <= step][-epochs:]
        runs[name] = {"last_step": window[-1]["step"], "epochs_averaged": len(window),
                      **{f: sum(r[f] for r in window) / len(window) for f in FIGURES if f in window[-1]}}
    return {"step": step, "runs": runs}


def run_name(path: Path) -> str:
    return path.name.removesuffix(".jsonl").removesuffix("_experiment_log").removesuffix("_training_log")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("logs", type=Path, nargs="+", help="per-epoch metrics.jsonl logs of training runs")
    p.add_argument("--epochs", type=int, default=5, help="average this many last epochs of each run")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    report = at_common_step({run_name(log): read_log(log) for log in args.logs}, args.epochs)
    print(f"at step {report['step']}, mean of the last {args.epochs} epochs (one view, val):")
    for name, figures in report["runs"].items():
        print(f"  {name}: " + ", ".join(f"{f.removeprefix('val_')} {figures[f]:.3f}" for f in FIGURES if f in figures))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
