"""marrowdx command line: serve, analyze, diagnose, report, eval, demo.

Research use only: not a medical device; results need review by a qualified
haematologist.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
from google.protobuf import json_format

from marrowdx import logging as mlog
from marrowdx.settings import PROJECT_ROOT, Settings
from marrowdx.transport import add_client_security_flags

DEMO_CASE = PROJECT_ROOT / "samples" / "demo-case"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        host=getattr(args, "host", None), port=getattr(args, "port", None),
        triton_url=getattr(args, "triton_url", None), model_repository=getattr(args, "model_repository", None),
        state_dir=getattr(args, "state_dir", None), database=getattr(args, "database", None),
        metrics_port=getattr(args, "metrics_port", None), metrics_host=getattr(args, "metrics_host", None),
        tls_cert=getattr(args, "tls_cert", None), tls_key=getattr(args, "tls_key", None),
        tls_client_ca=getattr(args, "tls_client_ca", None), clients_file=getattr(args, "clients_file", None),
        allow_insecure=getattr(args, "allow_insecure", None) or None,
        triton_tls=getattr(args, "triton_tls", None) or None, triton_ca=getattr(args, "triton_ca", None),
        triton_cert=getattr(args, "triton_cert", None), triton_key=getattr(args, "triton_key", None),
    )


def _security(args: argparse.Namespace):
    """How to reach --server: TLS/mTLS files and a token file, or MARROWDX_CLIENT_* / MARROWDX_TOKEN.
    The embedded stack is plaintext on loopback and open to its local client."""
    from marrowdx.transport import PLAINTEXT, ClientSecurity

    if not getattr(args, "server", None):
        return PLAINTEXT
    return ClientSecurity.from_args(args)


def _client(args: argparse.Namespace, address: str):
    from marrowdx.client import Client

    return Client(address, security=_security(args))


@contextlib.contextmanager
def _service(args: argparse.Namespace) -> Iterator[str]:
    from marrowdx.embedded import given_or_embedded

    with given_or_embedded(args.server, _settings(args)) as address:
        yield address


def _print_json(message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


def cmd_serve(args: argparse.Namespace) -> int:
    from marrowdx.app import running_service

    settings = _settings(args)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with running_service(settings) as (_, port):
            print(f"marrowdx serving on {settings.host}:{port} (research use only)", file=sys.stderr, flush=True)
            await stop.wait()

    asyncio.run(main())
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from marrowdx.client import image_message, list_images

    paths = list_images(args.images)
    with _service(args) as address, _client(args, address) as client:
        for path in paths:
            response = client.analyze(image_message(path), top_k=args.top_k)
            if args.json:
                _print_json(response)
                continue
            print(f"{path.name}: {response.image_width}x{response.image_height}, {len(response.cells)} objects")
            print("  counted: " + (", ".join(f"{k} {v}" for k, v in sorted(response.class_counts.items())) or "none"))
            print("  excluded: " + (", ".join(f"{k} {v}" for k, v in sorted(response.excluded_counts.items())) or "none"))
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from marrowdx._proto.marrowdx.v1 import diagnosis_pb2 as pb
    from marrowdx.client import image_message, list_images
    from marrowdx.render import report_text

    paths = list_images(args.images)
    if not paths:
        print("no images found", file=sys.stderr)
        return 2
    specimen = pb.SPECIMEN_TYPE_PERIPHERAL_BLOOD if args.peripheral_blood else pb.SPECIMEN_TYPE_BONE_MARROW_ASPIRATE
    info = pb.CaseInfo(case_id=args.case, accession_id=args.accession or "", target_count=args.target,
                       specimen_type=specimen, request_id=args.request_id or "")
    with _service(args) as address, _client(args, address) as client:
        report = None
        bar = tqdm(total=len(paths), desc="images", unit="img", disable=args.json or not sys.stderr.isatty())
        messages = (image_message(p, f"{i:05d}{p.suffix}") for i, p in enumerate(paths))
        for response in client.diagnose_stream(info, messages, as_crops=args.crops, stop_at_target=not args.all):
            if response.HasField("progress"):
                bar.update(1)
                bar.set_postfix(counted=response.progress.cells_counted)
            else:
                report = response.report
        bar.close()
    if args.json:
        _print_json(report)
    else:
        print(report_text(report))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from marrowdx.render import report_text

    with _client(args, args.server) as client:
        report = client.report(report_id=args.report_id or "", accession_id=args.accession or "")
    _print_json(report) if args.json else print(report_text(report))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    with _service(args) as address, _client(args, address) as client:
        if args.kind == "crops":
            from marrowdx.evaluation.crops import evaluate_crops, plot_curves

            result, curves = evaluate_crops(client, Path(args.dir), args.labels, args.split, progress=sys.stderr.isatty())
            if args.pr_png:
                plot_curves(curves, Path(args.pr_png), f"{args.labels} ({result['split']}): PR per class")
        elif args.kind == "blobs":
            from marrowdx.evaluation.blobs import evaluate_blobs

            try:
                result = evaluate_blobs(client, Path(args.dir), Path(args.masks), args.cell_class, args.split,
                                        progress=sys.stderr.isatty(), pixel_spacing_um=args.pixel_spacing)
            except ValueError as exc:
                print(f"marrowdx eval blobs: {exc}", file=sys.stderr)
                return 1
        else:
            from marrowdx.evaluation.fields import evaluate_fields

            result = evaluate_fields(client, Path(args.dir), args.format, progress=sys.stderr.isatty())
        result["models"] = json_format.MessageToDict(client.model_info().models)
    result["note"] = "Research use only; metrics on the split named above."
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    summary = {k: result[k] for k in ("n", "n_images", "accuracy", "macro_f1", "coverage", "wbc", "blobs", "found",
                                      "counted", "called_of_counted") if k in result}
    print(json.dumps(summary, indent=2))
    return 0


def cmd_loadgen(args: argparse.Namespace) -> int:
    from marrowdx.client import list_images
    from marrowdx.loadgen import LoadConfig, load_images, run_load, table

    images = load_images(list_images(args.images))
    summaries = []
    with _service(args) as address:
        for concurrency in args.concurrency:
            config = LoadConfig(address=address, rpc=args.rpc, images=images, concurrency=concurrency, rate=args.rate,
                                duration_s=args.duration, requests=args.requests,
                                crops_per_request=args.crops_per_request, progress=sys.stderr.isatty(),
                                security=_security(args))
            summaries.append(asyncio.run(run_load(config)).summary())
    print(table(summaries))
    if args.json:
        Path(args.json).write_text(json.dumps(summaries, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from marrowdx.bench import main_bench

    return main_bench(args.images, args.quick, args.soak, args.json, _settings(args))


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the service says SERVING (container health checks; TLS from flags or MARROWDX_CLIENT_*)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from marrowdx.transport import open_channel

    with open_channel(args.server, _security(args)) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout).status
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(name)
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_token(args: argparse.Namespace) -> int:
    from marrowdx.security.access import Role, new_token

    roles = [Role(r).value for r in args.roles.split(",")]
    token, digest = new_token()
    entry = {"id": args.client, "org": args.org, "roles": roles, "token_sha256": digest}
    Path(args.out).write_text(token + "\n")
    Path(args.out).chmod(0o600)
    print(f"token written to {args.out} (mode 600); add this entry to the clients file:", file=sys.stderr)
    print(json.dumps(entry))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses

    from marrowdx.store.audit import AuditLog

    settings = _settings(args)
    if settings.database_is_postgres:
        from marrowdx.store.postgres import PostgresAuditLog

        audit = PostgresAuditLog(settings.database)
    elif not settings.audit_path.exists():
        print(f"no audit log at {settings.audit_path}", file=sys.stderr)
        return 1
    else:
        audit = AuditLog(settings.audit_path)
    for entry in audit.recent(args.limit):
        print(json.dumps(dataclasses.asdict(entry)) if args.json else
              f"{entry.at} {entry.client_id or '-'}@{entry.org or '-'} {entry.method} {entry.outcome} "
              f"{entry.report_id or ''} {entry.case_ref or ''}".rstrip())
    audit.close()
    return 0


def cmd_faults(args: argparse.Namespace) -> int:
    if args.distributed:
        from marrowdx.faults_distributed import main_distributed

        return main_distributed(args.duration, args.json, _settings(args), args.state_dir)
    from marrowdx.faults import main_faults

    return main_faults(args.duration, args.json, _settings(args), args.state_dir)


def cmd_demo(args: argparse.Namespace) -> int:
    args.images = [str(DEMO_CASE / "crops")]
    args.crops = True
    args.case = "DEMO-001"
    args.accession = "DEMO-ACC-001"
    args.target = 0
    args.request_id = ""
    args.peripheral_blood = False
    args.all = True
    return cmd_diagnose(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marrowdx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error")
    sub = parser.add_subparsers(dest="command", required=True)

    def stack_flags(p: argparse.ArgumentParser, server: bool = True) -> None:
        if server:
            p.add_argument("--server", help="HOST:PORT of a running service (default: start the embedded stack)")
            add_client_security_flags(p)
        p.add_argument("--triton-url", help="external Triton gRPC HOST:PORT (default: start the bundled tritonserver)")
        p.add_argument("--triton-tls", action="store_true", help="TLS to the external Triton (system CA roots)")
        p.add_argument("--triton-ca", type=Path, help="CA of the external Triton's certificate (turns TLS on)")
        p.add_argument("--triton-cert", type=Path, help="client certificate for mutual TLS to the external Triton")
        p.add_argument("--triton-key", type=Path, help="its key")
        p.add_argument("--model-repository", type=Path)
        p.add_argument("--state-dir", type=Path, help="Triton backend folder, logs and the default database")
        p.add_argument("--database", help="SQLite file for reports, or postgresql://USER@HOST:PORT/DB shared by "
                                          "replicas (password from PGPASSWORD)")

    p = sub.add_parser("serve", help="run Triton and the gRPC front service")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on METRICS_HOST:PORT")
    p.add_argument("--metrics-host", help="address of the metrics listener (default 127.0.0.1)")
    p.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    p.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    p.add_argument("--clients-file", type=Path, help="client registry: tokens/certificate names, organisations, roles")
    p.add_argument("--allow-insecure", action="store_true",
                   help="serve a non-loopback address without TLS or without a registry (not for production)")
    stack_flags(p, server=False)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("analyze", help="detect and classify the cells of field images")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    stack_flags(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("diagnose", help="count a case and apply the diagnosis rules")
    p.add_argument("images", nargs="+", help="images or folders")
    p.add_argument("--case", required=True, help="case id (stored, never logged)")
    p.add_argument("--accession")
    p.add_argument("--crops", action="store_true", help="the images are single-cell crops, not fields")
    p.add_argument("--target", type=int, default=0, help="cells to count (default from the rule set, 500)")
    p.add_argument("--all", action="store_true", help="send every image even after the target is reached")
    p.add_argument("--request-id", help="idempotency key")
    p.add_argument("--peripheral-blood", action="store_true")
    p.add_argument("--json", action="store_true")
    stack_flags(p)
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("report", help="fetch a stored report")
    p.add_argument("--server", required=True)
    add_client_security_flags(p)
    p.add_argument("--report-id")
    p.add_argument("--accession")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="evaluate the served models on labelled data")
    eval_sub = p.add_subparsers(dest="kind", required=True)
    e = eval_sub.add_parser("crops", help="folder of class sub-folders")
    e.add_argument("dir")
    e.add_argument("--labels", required=True, choices=["matek", "pbc", "folder"],
                   help="folder names: matek's or pbc's, or 'folder' for a lab's own class names (docs/any-lab.md)")
    e.add_argument("--split", choices=["train", "val", "test"], help="only files of this split (default: all)")
    e.add_argument("--json")
    e.add_argument("--pr-png")
    stack_flags(e)
    e.set_defaults(func=cmd_eval)
    e = eval_sub.add_parser("blobs", help="whole fields whose cells of one class are outlined (binary masks)")
    e.add_argument("dir", help="folder of field images")
    e.add_argument("--masks", required=True, help="folder of masks named like the images (.png, .bmp, .tif)")
    e.add_argument("--cell-class", default="plasma_cell", help="the class the outlined cells are (default plasma_cell)")
    e.add_argument("--split", choices=["train", "val", "test"], help="only fields of this split of the project's")
    e.add_argument("--pixel-spacing", type=float, default=0.0, help="micrometres per pixel (default: estimated)")
    e.add_argument("--json")
    stack_flags(e)
    e.set_defaults(func=cmd_eval)
    e = eval_sub.add_parser("fields", help="whole fields with boxes")
    e.add_argument("dir")
    e.add_argument("--format", required=True, choices=["yolo", "voc"])
    e.add_argument("--json")
    stack_flags(e)
    e.set_defaults(func=cmd_eval)

    p = sub.add_parser("loadgen", help="load-test a service (loopback or your own hosts only)")
    p.add_argument("images", nargs="+", help="images or folders to send (fields, or crops for --rpc classify)")
    p.add_argument("--rpc", choices=["analyze", "classify", "stream"], default="analyze")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8], help="one run per value (closed loop)")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: requests per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    p.add_argument("--requests", type=int, default=0, help="stop after this many requests per run")
    p.add_argument("--crops-per-request", type=int, default=32)
    p.add_argument("--json")
    stack_flags(p)
    p.set_defaults(func=cmd_loadgen)

    p = sub.add_parser("bench", help="models in process vs through Triton vs the whole service")
    p.add_argument("images", nargs="*", help="field images (default: samples/fields/images)")
    p.add_argument("--quick", action="store_true", help="about a minute: fewer points, shorter runs")
    p.add_argument("--soak", type=float, default=0.0, help="also run SECONDS of saturating load, sampling memory")
    p.add_argument("--json")
    stack_flags(p, server=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("health", help="exit 0 when a running service is SERVING")
    p.add_argument("--server", required=True)
    p.add_argument("--timeout", type=float, default=3.0)
    add_client_security_flags(p)
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("token", help="make a bearer token for a client and print its registry entry")
    p.add_argument("--client", required=True, help="client id, e.g. lis-north")
    p.add_argument("--org", required=True, help="organisation whose reports the client may read")
    p.add_argument("--roles", default="submit,read", help="comma-separated: submit, read, admin")
    p.add_argument("--out", required=True, help="file to write the token to (mode 600)")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("audit", help="print the audit log (who did what; no patient identifiers)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--database", help="SQLite file, or postgresql://... URL")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("faults", help="load with injected faults (kill Triton, kill -9 the service, bad input); "
                                      "counts acknowledged reports lost")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (bounded)")
    p.add_argument("--json")
    p.add_argument("--state-dir", type=Path, help="where the run keeps its database and logs (default: a temp dir)")
    p.add_argument("--distributed", action="store_true",
                   help="PostgreSQL, two tritonservers and two front replicas; kill -9 one of each (docs/reliability.md)")
    p.set_defaults(func=cmd_faults)

    p = sub.add_parser("demo", help="diagnose the bundled sample case end to end")
    p.add_argument("--json", action="store_true")
    stack_flags(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    mlog.configure(args.log_level or settings.log_level, json=settings.log_json)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError, TimeoutError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
