"""Run the bundled tritonserver on its own, for a Triton pod of the CPU
deployment (deploy/k8s/overlays/cpu): the same server, backend folder and
environment as the managed child of ``marrowdx serve`` (inference/launcher.py),
but listening on every address of the pod, with HTTP for the kubelet's
readiness probe and Prometheus metrics, and in the foreground: this process
becomes tritonserver (exec), so it gets the pod's signals itself.

    python -m marrowdx.inference.standalone --model-repository /app/model_repository --state-dir /var/lib/marrowdx
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from marrowdx.inference.launcher import MODELS, _pytriton_root, child_environment, prepare_backend_dir


def command(model_repository: Path, state_dir: Path, address: str, grpc_port: int, http_port: int,
            metrics_port: int) -> list[str]:
    return [
        str(_pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
        f"--model-repository={model_repository.resolve()}",
        f"--backend-directory={prepare_backend_dir(state_dir.resolve())}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in MODELS],
        "--strict-readiness=true",
        f"--grpc-address={address}", f"--grpc-port={grpc_port}",
        f"--http-address={address}", f"--http-port={http_port}",
        f"--metrics-address={address}", f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        "--exit-on-error=true",
        "--log-verbose=0",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True, help="writable: the backend folder goes here")
    parser.add_argument("--address", default="0.0.0.0", help="inside a pod; NetworkPolicy says who may connect")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    args = parser.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    cmd = command(args.model_repository, args.state_dir, args.address, args.grpc_port, args.http_port,
                  args.metrics_port)
    os.execve(cmd[0], cmd, child_environment())


if __name__ == "__main__":
    main()
